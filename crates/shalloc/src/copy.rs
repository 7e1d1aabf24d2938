//! Copies into and out of memory that other processes may write at the same time.
//!
//! Another process writing a byte while we read it is, in Rust's model, a data race unless both
//! sides use atomics; plain `copy_nonoverlapping` would let the compiler assume the bytes cannot
//! change under it. These copies use relaxed atomic loads and stores (8 bytes at a time where
//! aligned), which compile to plain moves on x86-64 and aarch64 but keep the program defined: a
//! racing copy sees some mix of old and new bytes, never undefined behaviour.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Copies `dst.len()` bytes from shared memory at `src` into `dst`.
///
/// # Safety
/// `src .. src + dst.len()` must be mapped and readable for the whole call.
pub(crate) unsafe fn from_shared(dst: &mut [u8], src: *const u8) {
    let len = dst.len();
    let head = src.align_offset(8).min(len);
    let words = (len - head) / 8;
    for (i, d) in dst[..head].iter_mut().enumerate() {
        // SAFETY: src + i is within the readable range; AtomicU8 has alignment 1.
        *d = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
    for w in 0..words {
        let at = head + w * 8;
        // SAFETY: src + at is 8-aligned (head aligned it) and at + 8 <= len, so within the range.
        let v = unsafe { AtomicU64::from_ptr(src.add(at).cast_mut().cast::<u64>()) }
            .load(Ordering::Relaxed);
        dst[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
    let tail = head + words * 8;
    for (i, d) in dst.iter_mut().enumerate().skip(tail) {
        // SAFETY: as for the head.
        *d = unsafe { AtomicU8::from_ptr(src.add(i).cast_mut()) }.load(Ordering::Relaxed);
    }
}

/// Copies `src` into shared memory at `dst`.
///
/// # Safety
/// `dst .. dst + src.len()` must be mapped and writable for the whole call.
pub(crate) unsafe fn to_shared(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    let head = dst.align_offset(8).min(len);
    let words = (len - head) / 8;
    for (i, s) in src[..head].iter().enumerate() {
        // SAFETY: dst + i is within the writable range; AtomicU8 has alignment 1.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(*s, Ordering::Relaxed);
    }
    for w in 0..words {
        let at = head + w * 8;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&src[at..at + 8]);
        // SAFETY: dst + at is 8-aligned and at + 8 <= len, so within the range.
        unsafe { AtomicU64::from_ptr(dst.add(at).cast::<u64>()) }
            .store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
    }
    for (i, s) in src.iter().enumerate().skip(head + words * 8) {
        // SAFETY: as for the head.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(*s, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_exact_at_every_alignment_and_length() {
        let source: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 191 - offset] {
                let mut out = vec![0u8; len];
                // SAFETY: offset + len <= 200, inside `source`.
                unsafe { from_shared(&mut out, source.as_ptr().add(offset)) };
                assert_eq!(out, &source[offset..offset + len]);
                let mut target = vec![0u8; 200];
                // SAFETY: offset + len <= 200, inside `target`.
                unsafe { to_shared(target.as_mut_ptr().add(offset), &source[..len]) };
                assert_eq!(&target[offset..offset + len], &source[..len]);
                assert!(
                    target[..offset]
                        .iter()
                        .chain(&target[offset + len..])
                        .all(|b| *b == 0)
                );
            }
        }
    }
}
