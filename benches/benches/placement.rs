//! Decision time of every placement policy at 10, 100, 1,000 and 5,000 nodes.
//!
//! The `placement/POLICY/N` cases use varied tables from [`node_table`]; the
//! `placement-uniform/POLICY/1000` cases use identical nodes from [`uniform_node_table`].
//!
//! Each iteration is one `Policy::place` call, which checks every node and scores every
//! feasible one (except `roundrobin`, which takes the next feasible node), followed by
//! recording the placement in a [`SteadyTable`]. That table releases the oldest of its live
//! placements, so it never fills up. Varied tables use a fixed seed, so every policy gets
//! the same nodes. Criterion reports
//! the time per decision and, from the throughput of one element per iteration, placements
//! per second.
//!
//! Run with `cargo bench -p cube-benches --bench placement`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use cube_benches::{SteadyTable, bench_request, node_table, uniform_node_table};
use cube_core::scheduler::{NodeSnapshot, POLICY_NAMES, policy_by_name};

/// Node counts measured for every policy.
const NODE_COUNTS: [usize; 4] = [10, 100, 1_000, 5_000];

/// Seed of the generated node tables.
const TABLE_SEED: u64 = 0x00c0_ffee;

/// Live benchmark placements per node before the oldest is released.
const LIVE_TASKS_PER_NODE: usize = 2;

/// Node count of the uniform-table case.
const UNIFORM_NODE_COUNT: usize = 1_000;

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
}

/// Measures one decision of policy `name` followed by recording it in a steady table built
/// from `nodes`.
fn bench_policy(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, nodes: &[NodeSnapshot]) {
    let request = bench_request();
    let count = nodes.len();
    group.bench_with_input(BenchmarkId::from_parameter(count), nodes, |b, nodes| {
        let mut policy = policy_by_name(name).expect("listed policy exists");
        let mut table = SteadyTable::new(nodes.to_vec(), count * LIVE_TASKS_PER_NODE);
        b.iter(|| {
            let placement = policy
                .place(black_box(&request), table.nodes())
                .unwrap_or_else(|unplaced| {
                    panic!("policy {name} placed nothing on {count} nodes: {unplaced}")
                });
            table.record(placement.index, &request);
            black_box(placement.score)
        });
    });
}

/// Measures every policy on varied tables of each size in [`NODE_COUNTS`].
fn placement(c: &mut Criterion) {
    let tables: Vec<Vec<NodeSnapshot>> = NODE_COUNTS
        .iter()
        .map(|&count| node_table(count, TABLE_SEED))
        .collect();
    for name in POLICY_NAMES {
        let mut group = c.benchmark_group(format!("placement/{name}"));
        configure(&mut group);
        for nodes in &tables {
            bench_policy(&mut group, name, nodes);
        }
        group.finish();
    }
}

/// Measures every policy on identical nodes, where pruning by a cost bound helps `epvm`
/// least.
fn placement_uniform(c: &mut Criterion) {
    let nodes = uniform_node_table(UNIFORM_NODE_COUNT);
    for name in POLICY_NAMES {
        let mut group = c.benchmark_group(format!("placement-uniform/{name}"));
        configure(&mut group);
        bench_policy(&mut group, name, &nodes);
        group.finish();
    }
}

criterion_group!(benches, placement, placement_uniform);
criterion_main!(benches);
