//! Handle values: small, never 0, below 2^31, and not reused for a long time.
//!
//! Values step by 4 (as Windows handles do) through `[FIRST, LIMIT)` from a random start, wrapping
//! around and skipping values still in use. With 2^29 values, a value comes back only after half a
//! billion allocations, so a stale handle fails instead of reaching another block; the random
//! start makes a handle from a previous broker unlikely to name a block of this one.

/// The smallest handle value.
pub(crate) const FIRST: u32 = 0x100;
/// One past the largest handle value: values survive truncation to 32 bits and sign extension.
pub(crate) const LIMIT: u32 = 1 << 31;
const STEP: u32 = 4;

#[derive(Debug)]
pub(crate) struct HandleValues {
    next: u32,
}

impl HandleValues {
    /// Starts at a point chosen from `seed`.
    pub fn new(seed: u32) -> Self {
        let span = (LIMIT - FIRST) / STEP;
        HandleValues {
            next: FIRST + (seed % span) * STEP,
        }
    }

    /// The next value for which `in_use` is false; `None` only when every value is in use.
    pub fn take(&mut self, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        for _ in 0..(LIMIT - FIRST) / STEP {
            let value = self.next;
            self.next = if value + STEP >= LIMIT {
                FIRST
            } else {
                value + STEP
            };
            if !in_use(value) {
                return Some(value);
            }
        }
        None
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
            assert!((FIRST..LIMIT).contains(&h) && h % 4 == 0 && h != 0);
        }
        let mut end = HandleValues { next: LIMIT - STEP };
        assert_eq!(end.take(|_| false), Some(LIMIT - STEP));
        assert_eq!(end.take(|_| false), Some(FIRST));
    }

    #[test]
    fn values_in_use_are_skipped() {
        let mut v = HandleValues { next: FIRST };
        assert_eq!(v.take(|h| h == FIRST || h == FIRST + 4), Some(FIRST + 8));
    }
}
