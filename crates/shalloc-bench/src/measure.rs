//! Timing: warm-up, then interleaved slices of iterations per system until each has enough.

use std::time::{Duration, Instant};

use crate::common::Result;
use crate::systems::System;

/// How long to measure each cell (one scenario, size and system).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Warm-up: at least this many iterations…
    pub warmup_iters: usize,
    /// …and at least this long (whichever ends later).
    pub warmup_time: Duration,
    /// Measurement: at least this many iterations…
    pub min_iters: usize,
    /// …and at least this long in total.
    pub min_time: Duration,
    /// Stop anyway after this many iterations.
    pub max_iters: usize,
    /// Systems take turns in slices of about this long, so that drift hits all of them alike.
    pub slice: Duration,
}

impl Budget {
    /// `--quick`: the whole run within a minute.
    pub const QUICK: Budget = Budget {
        warmup_iters: 2,
        warmup_time: Duration::from_millis(30),
        min_iters: 5,
        min_time: Duration::from_millis(300),
        max_iters: 100_000,
        slice: Duration::from_millis(10),
    };

    /// The full run.
    pub const FULL: Budget = Budget {
        warmup_iters: 3,
        warmup_time: Duration::from_millis(200),
        min_iters: 25,
        min_time: Duration::from_millis(1500),
        max_iters: 1_000_000,
        slice: Duration::from_millis(20),
    };
}

/// The statistics of one cell, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// The median.
    pub median_ns: f64,
    /// The 99th percentile (nearest rank).
    pub p99_ns: f64,
    /// The fastest iteration.
    pub min_ns: f64,
    /// The mean.
    pub mean_ns: f64,
    /// How many iterations were timed.
    pub iterations: usize,
}

impl Stats {
    /// The statistics of `samples` (nanoseconds; reordered).
    pub fn of(samples: &mut [u64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        let median_ns = if n % 2 == 1 {
            samples[n / 2] as f64
        } else {
            (samples[n / 2 - 1] as f64 + samples[n / 2] as f64) / 2.0
        };
        let rank = (n * 99).div_ceil(100).clamp(1, n);
        let total: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Some(Stats {
            median_ns,
            p99_ns: samples[rank - 1] as f64,
            min_ns: samples[0] as f64,
            mean_ns: total as f64 / n as f64,
            iterations: n,
        })
    }
}

/// Warms up and then times `run` for each of `systems`, the systems taking turns in slices.
/// Returns each system's samples in nanoseconds.
pub fn measure_interleaved(
    systems: &[System],
    budget: &Budget,
    mut run: impl FnMut(System) -> Result<()>,
) -> Result<Vec<(System, Vec<u64>)>> {
    for &system in systems {
        let start = Instant::now();
        let mut done = 0;
        while done < budget.warmup_iters || start.elapsed() < budget.warmup_time {
            run(system)?;
            done += 1;
        }
    }
    let mut cells: Vec<(System, Vec<u64>, Duration)> = systems
        .iter()
        .map(|&s| (s, Vec::new(), Duration::ZERO))
        .collect();
    let enough = |samples: &Vec<u64>, spent: Duration| {
        samples.len() >= budget.max_iters
            || (samples.len() >= budget.min_iters && spent >= budget.min_time)
    };
    while cells
        .iter()
        .any(|(_, samples, spent)| !enough(samples, *spent))
    {
        for (system, samples, spent) in cells.iter_mut() {
            if enough(samples, *spent) {
                continue;
            }
            let slice_start = Instant::now();
            loop {
                let t0 = Instant::now();
                run(*system)?;
                let ns = t0.elapsed().as_nanos();
                samples.push(u64::try_from(ns).unwrap_or(u64::MAX));
                if slice_start.elapsed() >= budget.slice || samples.len() >= budget.max_iters {
                    break;
                }
            }
            *spent += slice_start.elapsed();
        }
    }
    Ok(cells
        .into_iter()
        .map(|(s, samples, _)| (s, samples))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let stats = Stats::of(&mut samples).expect("samples");
        assert_eq!(stats.median_ns, 50.5);
        assert_eq!(stats.p99_ns, 99.0);
        assert_eq!(stats.min_ns, 1.0);
        assert_eq!(stats.iterations, 100);
        assert!(Stats::of(&mut []).is_none());
    }
}
