//! Percentiles and summaries of latency samples (microseconds).

use std::fmt;

use serde_json::{Value, json};

/// The `p`-th percentile (0 < p ≤ 100) of ascending `sorted` samples by the nearest-rank
/// method: the smallest sample with at least `p`% of the samples at or below it. `None` when
/// there are no samples.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // ceil(p/100 · n) as a rank in 1..=n; the float is bounded by n, so the cast is exact.
    let rank = ((p / 100.0) * n as f64).ceil().clamp(1.0, n as f64) as usize;
    Some(sorted[rank - 1])
}

/// A summary of latency samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample, µs.
    pub min_us: u64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest sample, µs.
    pub max_us: u64,
    /// Arithmetic mean, µs.
    pub mean_us: f64,
}

impl Summary {
    /// Summarises `samples` (any order); `None` when empty.
    pub fn of(mut samples: Vec<u64>) -> Option<Self> {
        samples.sort_unstable();
        let pct = |p| percentile(&samples, p);
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Some(Self {
            count: samples.len(),
            min_us: *samples.first()?,
            p50_us: pct(50.0)?,
            p90_us: pct(90.0)?,
            p99_us: pct(99.0)?,
            max_us: *samples.last()?,
            mean_us: sum as f64 / samples.len() as f64,
        })
    }

    /// The summary in milliseconds, as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "min_ms": ms(self.min_us),
            "p50_ms": ms(self.p50_us),
            "p90_ms": ms(self.p90_us),
            "p99_ms": ms(self.p99_us),
            "max_ms": ms(self.max_us),
            "mean_ms": self.mean_us / 1000.0,
        })
    }
}

/// Microseconds as fractional milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `summary` as JSON, or `null`.
pub fn opt_json(summary: Option<&Summary>) -> Value {
    summary.map_or(Value::Null, Summary::to_json)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms mean={:.2}ms",
            self.count,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.mean_us / 1000.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.1), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        // 10 samples: p99 is the largest, p50 the fifth.
        let v: Vec<u64> = (10..20).collect();
        assert_eq!(percentile(&v, 99.0), Some(19));
        assert_eq!(percentile(&v, 50.0), Some(14));
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let s = Summary::of(vec![5, 1, 3, 2, 4]).expect("samples");
        assert_eq!((s.count, s.min_us, s.p50_us, s.p99_us, s.max_us), (5, 1, 3, 5, 5));
        assert!((s.mean_us - 3.0).abs() < f64::EPSILON);
        assert_eq!(Summary::of(Vec::new()), None);
        assert_eq!(s.to_json()["p50_ms"], 0.003);
    }
}
