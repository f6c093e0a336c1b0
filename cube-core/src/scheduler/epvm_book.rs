//! The book's E-PVM formula, reproduced exactly for comparison with [`Epvm`](super::Epvm).
//!
//! The book's Cube scheduler scores each node with
//!
//! ```text
//! cpuLoad   = cpuUsage / 2^0.8
//! memAlloc  = MemUsedKb + MemoryAllocated                         (kB)
//! memPct    = memAlloc / Memory
//! newMemPct = (memAlloc + float(taskMemory / 1000)) / Memory      (integer division first)
//! memCost   = L^newMemPct + L^((tc + 1) / maxJobs) - L^memPct - L^(tc / maxJobs)
//! cpuCost   = L^cpuLoad   + L^((tc + 1) / maxJobs) - L^cpuLoad - L^(tc / maxJobs)
//! score     = memCost + cpuCost
//! ```
//!
//! with `L` = [`LIEB`] and `maxJobs` = [`MAX_JOBS`]; the lowest score wins and ties go to the
//! first node in snapshot order. `cpuLoad` cancels out of `cpuCost`, so CPU never affects the
//! score, and task memory in bytes divided by 1000 is added to kibibytes. Both faults are
//! kept on purpose; [`Epvm`](super::Epvm) is the corrected policy.
//!
//! The book's inputs are taken from a [`NodeSnapshot`] as follows:
//!
//! - `Memory` (the book's `MemTotal` from `/proc/meminfo`, whose "kB" are KiB) is the node's
//!   memory capacity in bytes divided by 1024.
//! - `MemUsedKb` is the measured memory in use (total minus available) in bytes divided by
//!   1024, or 0 when the node has sent no metrics.
//! - `MemoryAllocated` is the node's allocated memory in bytes divided by 1024. The book
//!   never updated it, so it was always 0 there.
//! - `taskMemory` is the request's memory in bytes.
//! - `tc` is [`NodeSnapshot::task_count`].
//! - `cpuUsage` is the measured `cpu_usage` (0 to 1), or 0 when the node has sent no metrics.
//!
//! Feasibility is [`check_node`](super::check_node), not the book's disk-only filter. A node
//! with no memory capacity scores its memory percentages as 0, where the book divided by 0.

use super::{
    LIEB, NodeSnapshot, Placement, PlacementRequest, Policy, Preference, Unplaced, fraction,
    place_best,
};

/// The book's `maxJobs`, a guess at how many tasks a Raspberry Pi runs at once.
pub const MAX_JOBS: f64 = 4.0;

/// The book's divisor of CPU usage, 2^0.8, from a guessed maximum load of 80 %.
const CPU_DIVISOR: f64 = 1.741_101_126_592_248_2;

/// Bytes per "kB" of `/proc/meminfo`, the unit of the book's node memory figures.
const MEMINFO_KB: u64 = 1024;

/// The book's E-PVM scoring, CPU term and unit mix-up included.
#[derive(Debug, Default, Clone, Copy)]
pub struct EpvmBook;

impl Policy for EpvmBook {
    fn name(&self) -> &'static str {
        "epvm-book"
    }

    /// Chooses the feasible node with the lowest [`book_score`] and reports that value as the
    /// placement's score.
    fn place(
        &mut self,
        request: &PlacementRequest,
        nodes: &[NodeSnapshot],
    ) -> Result<Placement, Unplaced> {
        place_best(request, nodes, Preference::Lowest, |node, _| {
            book_score(request, node)
        })
    }
}

/// Computes the book's E-PVM score of `node` for `request`; lower is better.
pub fn book_score(request: &PlacementRequest, node: &NodeSnapshot) -> f64 {
    let memory_kb = (node.capacity.memory.bytes() / MEMINFO_KB) as f64;
    let mem_used_kb = node.metrics.as_ref().map_or(0, |metrics| {
        metrics
            .memory_total
            .bytes()
            .saturating_sub(metrics.memory_available.bytes())
            / MEMINFO_KB
    });
    let memory_allocated_kb = node.allocated.memory.bytes() / MEMINFO_KB;
    // The book's unit mix-up: bytes divided by 1000, added to KiB.
    let task_memory = (request.resources.memory.bytes() / 1000) as f64;
    let cpu_usage = node
        .metrics
        .as_ref()
        .map_or(0.0, |metrics| metrics.cpu_usage);
    let task_count = f64::from(node.task_count);

    let cpu_load = cpu_usage / CPU_DIVISOR;
    let memory_allocated = mem_used_kb as f64 + memory_allocated_kb as f64;
    let memory_percent = fraction(memory_allocated, memory_kb);
    let new_memory_percent = fraction(memory_allocated + task_memory, memory_kb);
    let jobs_after = LIEB.powf((task_count + 1.0) / MAX_JOBS);
    let jobs_before = LIEB.powf(task_count / MAX_JOBS);

    let memory_cost =
        LIEB.powf(new_memory_percent) + jobs_after - LIEB.powf(memory_percent) - jobs_before;
    // NOTE: cpu_load cancels out here, exactly as in the book.
    let cpu_cost = LIEB.powf(cpu_load) + jobs_after - LIEB.powf(cpu_load) - jobs_before;
    memory_cost + cpu_cost
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ByteSize;
    use crate::scheduler::fixtures::{metrics, node, request};

    /// A node of 32,000,000 KiB with 8,000,000 KiB in use, the book's worked example.
    fn worked_node(task_count: u32) -> NodeSnapshot {
        let mut worked = node("worked", 4.0, 0);
        worked.capacity.memory = ByteSize(32_000_000 * 1024);
        worked.metrics = Some(metrics(
            0.0,
            ByteSize(8_000_000 * 1024),
            ByteSize(32_000_000 * 1024),
        ));
        worked.task_count = task_count;
        worked
    }

    fn assert_book_value(actual: f64, expected: f64, what: &str) {
        // The worked values are given to six decimals.
        assert!(
            (actual - expected).abs() < 5e-7,
            "{what}: score {actual}, expected {expected}"
        );
    }

    #[test]
    fn cpu_divisor_is_two_to_the_point_eight() {
        assert!((CPU_DIVISOR - 2f64.powf(0.8)).abs() < 1e-15);
    }

    #[test]
    fn epvm_book_matches_worked_values() {
        let empty_task = request(0.0, 0);
        assert_book_value(book_score(&empty_task, &worked_node(0)), 0.227_830, "tc 0");
        assert_book_value(book_score(&empty_task, &worked_node(1)), 0.253_783, "tc 1");
        let mut task = request(0.0, 0);
        task.resources.memory = ByteSize(536_870_912);
        assert_book_value(
            book_score(&task, &worked_node(0)),
            0.235_924,
            "512 MiB task",
        );
    }

    #[test]
    fn epvm_book_adds_allocated_memory() {
        let mut allocated = worked_node(0);
        allocated.metrics = None;
        allocated.allocated.memory = ByteSize(8_000_000 * 1024);
        assert_book_value(
            book_score(&request(0.0, 0), &allocated),
            0.227_830,
            "allocated",
        );
    }

    #[test]
    fn epvm_book_cpu_usage_cancels_out() {
        let task = request(1.0, 512);
        let idle = worked_node(0);
        let mut busy = worked_node(0);
        busy.metrics.as_mut().unwrap().cpu_usage = 0.9;
        let difference = (book_score(&task, &idle) - book_score(&task, &busy)).abs();
        assert!(
            difference < 1e-12,
            "cpu usage changed the score by {difference}"
        );
    }

    #[test]
    fn epvm_book_prefers_fewer_tasks() {
        let nodes = [worked_node(2), worked_node(1), worked_node(1)];
        let placement = EpvmBook.place(&request(0.0, 0), &nodes).unwrap();
        assert_eq!(placement.index, 1);
        assert_book_value(placement.score, 0.253_783, "placement score");
    }
}
