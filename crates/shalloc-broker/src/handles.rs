//! Handle values: small, never 0, below 2^31, and not reused for a long time — not even by the
//! next broker.
//!
//! Values step by 4 (as Windows handles do) through `[FIRST, LIMIT)`, wrapping around and skipping
//! values still in use. With 2^29 values, a value comes back only after half a billion
//! allocations, so a stale handle fails instead of reaching another block.
//!
//! A broker that dies takes its tables with it, but its clients may still hold handle values. So
//! that none of them can ever name a block of the next broker, values are handed out from
//! reservations recorded in a file in the runtime directory: before a broker uses a value beyond
//! its reservation it records a new one, and a new broker starts after the last recorded mark.
//! The first broker ever starts at a random point.

use std::path::PathBuf;

use shalloc_protocol::segment::{
    FIRST_HANDLE as FIRST, HANDLE_LIMIT as LIMIT, HANDLE_STEP as STEP,
};
/// Values reserved per write of the mark.
const RESERVATION: u32 = 1 << 16;

#[derive(Debug)]
pub(crate) struct HandleValues {
    next: u32,
    /// Values left in the current reservation.
    reserved: u32,
    /// Where the mark is kept; `None` keeps nothing (tests).
    store: Option<PathBuf>,
}

fn in_range(value: u32) -> bool {
    (FIRST..LIMIT).contains(&value) && value % STEP == 0
}

fn advance(value: u32, steps: u32) -> u32 {
    let span = (LIMIT - FIRST) / STEP;
    FIRST + ((value - FIRST) / STEP + steps % span) % span * STEP
}

impl HandleValues {
    /// Starts at a point chosen from `seed`, keeping no mark.
    pub fn new(seed: u32) -> Self {
        let span = (LIMIT - FIRST) / STEP;
        HandleValues {
            next: FIRST + (seed % span) * STEP,
            reserved: u32::MAX,
            store: None,
        }
    }

    /// Starts after the mark recorded in `store` (or at a point chosen from `seed` when there is
    /// none), and records a mark before every new reservation.
    pub fn resume(store: PathBuf, seed: u32) -> Self {
        let mark = std::fs::read_to_string(&store)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        let mut values = HandleValues::new(seed);
        if let Some(mark) = mark.filter(|m| in_range(*m)) {
            values.next = mark;
        }
        values.reserved = 0;
        values.store = Some(store);
        values
    }

    /// The next value for which `in_use` is false; `None` only when every value is in use, or the
    /// mark could not be recorded.
    pub fn take(&mut self, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        for _ in 0..(LIMIT - FIRST) / STEP {
            if self.reserved == 0 {
                self.reserve()?;
            }
            let value = self.next;
            self.next = advance(value, 1);
            self.reserved -= 1;
            if !in_use(value) {
                return Some(value);
            }
        }
        None
    }

    /// Up to `count` consecutive values (a lease for a process's own allocations), never wrapping
    /// inside one run: `(first value, how many)`. `None` only when the mark could not be recorded.
    pub fn take_run(&mut self, count: u32) -> Option<(u32, u32)> {
        if self.reserved == 0 {
            self.reserve()?;
        }
        let to_end = (LIMIT - self.next) / STEP;
        let n = count.min(self.reserved).min(to_end).max(1);
        let start = self.next;
        self.next = advance(start, n);
        self.reserved -= n;
        Some((start, n))
    }

    fn reserve(&mut self) -> Option<()> {
        if let Some(store) = &self.store {
            let mark = advance(self.next, RESERVATION);
            std::fs::write(store, format!("{mark}\n")).ok()?;
        }
        self.reserved = RESERVATION;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_in_range_aligned_and_wrap() {
        let mut v = HandleValues::new(u32::MAX);
        for _ in 0..10 {
            let h = v.take(|_| false).expect("value");
            assert!(in_range(h) && h != 0);
        }
        let mut end = HandleValues {
            next: LIMIT - STEP,
            reserved: u32::MAX,
            store: None,
        };
        assert_eq!(end.take(|_| false), Some(LIMIT - STEP));
        assert_eq!(end.take(|_| false), Some(FIRST));
    }

    #[test]
    fn runs_are_consecutive_and_stop_at_the_end() {
        let mut v = HandleValues {
            next: LIMIT - 3 * STEP,
            reserved: u32::MAX,
            store: None,
        };
        assert_eq!(v.take_run(64), Some((LIMIT - 3 * STEP, 3)));
        assert_eq!(v.take_run(2), Some((FIRST, 2)));
        assert_eq!(v.take(|_| false), Some(FIRST + 2 * STEP));
    }

    #[test]
    fn values_in_use_are_skipped() {
        let mut v = HandleValues {
            next: FIRST,
            reserved: u32::MAX,
            store: None,
        };
        assert_eq!(v.take(|h| h == FIRST || h == FIRST + 4), Some(FIRST + 8));
    }

    #[test]
    fn a_new_broker_starts_after_everything_the_last_one_handed_out() {
        let store = std::env::temp_dir().join(format!("shalloc-handles-{}", std::process::id()));
        let _ = std::fs::remove_file(&store);
        let mut first = HandleValues::resume(store.clone(), 12345);
        let used: Vec<u32> = (0..RESERVATION + 10)
            .map(|_| first.take(|_| false).expect("value"))
            .collect();
        let mut second = HandleValues::resume(store.clone(), 12345);
        let next = second.take(|_| false).expect("value");
        assert!(
            !used.contains(&next),
            "a value of the dead broker was handed out again"
        );
        let last = *used.last().expect("some");
        assert!(
            next > last,
            "the new broker starts past the old one's reservation"
        );
        let _ = std::fs::remove_file(&store);
    }
}
