//! Summary statistics of a set of measurements: the figures the benchmark page reports.

/// Minimum, maximum, mean, standard deviation and percentiles of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub count: usize,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation.
    pub stddev: f64,
    /// Median (50th percentile, nearest rank).
    pub median: f64,
    /// 90th percentile, nearest rank.
    pub p90: f64,
}

impl Summary {
    /// Summarises `values`; returns `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let count = sorted.len();
        let mean = sorted.iter().sum::<f64>() / count as f64;
        let variance = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64;
        Some(Self {
            count,
            min: sorted[0],
            max: sorted[count - 1],
            mean,
            stddev: variance.sqrt(),
            median: nearest_rank(&sorted, 50.0),
            p90: nearest_rank(&sorted, 90.0),
        })
    }
}

/// The value at `percentile` of an ascending, non-empty sample, by the nearest-rank method:
/// the smallest value with at least that share of the sample at or below it.
fn nearest_rank(sorted: &[f64], percentile: f64) -> f64 {
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_one_to_ten() {
        let values: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let summary = Summary::of(&values).unwrap();
        assert_eq!(summary.count, 10);
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.max, 10.0);
        assert_eq!(summary.mean, 5.5);
        assert_eq!(summary.median, 5.0);
        assert_eq!(summary.p90, 9.0);
        assert!((summary.stddev - 8.25f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn summary_of_equal_values_has_no_spread() {
        let summary = Summary::of(&[200.0; 5000]).unwrap();
        assert_eq!(summary.stddev, 0.0);
        assert_eq!(summary.p90, 200.0);
    }

    #[test]
    fn summary_of_nothing_is_none() {
        assert_eq!(Summary::of(&[]), None);
    }
}
