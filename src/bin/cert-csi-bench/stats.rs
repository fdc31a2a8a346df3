//! Pure numbers: percentiles and per-second histograms.

use serde::Serialize;

/// Nearest-rank percentile (`p` in 0..=100) of ascending `sorted` values;
/// 0 for no values. Nearest rank reports a value that was measured, never an
/// interpolation between two.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(samples_ms: &[f64]) -> Summary {
        let mut sorted = samples_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            n: sorted.len(),
            min_ms: sorted.first().copied().unwrap_or(0.0),
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// Counts of `times` (seconds from a common origin) in one-second bins
/// starting at 0; the last bin is the one holding the latest time.
/// Negative times are not counted.
pub fn per_second(times: &[f64]) -> Vec<u32> {
    let last = times
        .iter()
        .copied()
        .filter(|t| *t >= 0.0)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
    let Some(last) = last else {
        return Vec::new();
    };
    let mut bins = vec![0u32; last.floor() as usize + 1];
    for t in times.iter().filter(|t| **t >= 0.0) {
        bins[t.floor() as usize] += 1;
    }
    bins
}

/// The largest count in any one-second window that starts at an event (a
/// sliding window, stricter than fixed bins, which can split a burst).
pub fn max_in_any_second(times: &[f64]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        // A window is half-open [t, t + 1 s).
        while sorted[hi] - sorted[lo] >= 1.0 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The share of the interval `[start, end)` (seconds) covered by the
/// one-second bins of `bins` that hold at least one event; 0 for an empty
/// interval.
pub fn coverage(bins: &[u32], start: f64, end: f64) -> f64 {
    let first = start.max(0.0).floor() as usize;
    let last = end.ceil().max(0.0) as usize;
    if last <= first {
        return 0.0;
    }
    let busy = (first..last)
        .filter(|i| bins.get(*i).is_some_and(|c| *c > 0))
        .count();
    busy as f64 / (last - first) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        // Three values: p50 is the second, p99 the third.
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 99.0), 3.0);
    }

    #[test]
    fn summary_sorts_its_input() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.n, s.min_ms, s.p50_ms, s.max_ms), (5, 1.0, 3.0, 5.0));
    }

    #[test]
    fn per_second_bins() {
        assert_eq!(per_second(&[0.1, 0.9, 1.0, 3.5, -1.0]), vec![2, 1, 0, 1]);
        assert!(per_second(&[]).is_empty());
    }

    #[test]
    fn sliding_window_catches_a_burst_across_a_bin_edge() {
        // Fixed bins see 2 and 2; one second from 0.6 holds all four.
        let times = [0.6, 0.9, 1.1, 1.5];
        assert_eq!(per_second(&times), vec![2, 2]);
        assert_eq!(max_in_any_second(&times), 4);
        assert_eq!(max_in_any_second(&[0.0, 1.0, 2.0]), 1);
        assert_eq!(max_in_any_second(&[]), 0);
    }

    #[test]
    fn coverage_of_a_window() {
        let bins = [0, 1, 1, 0, 2];
        assert_eq!(coverage(&bins, 1.0, 5.0), 0.75);
        assert_eq!(coverage(&bins, 0.0, 2.0), 0.5);
        assert_eq!(coverage(&bins, 3.0, 3.0), 0.0);
        // Bins past the end of the data are empty.
        assert_eq!(coverage(&bins, 4.0, 6.0), 0.5);
    }
}
