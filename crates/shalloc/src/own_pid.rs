//! This process's id without a system call on every use.
//!
//! Every call asks "is this my own table?", and a forked child must never take its parent's id for
//! its own. `getpid` answers both but costs a system call each time, which a hand-off of a small
//! block feels. So the id is kept in a page mapped `MADV_WIPEONFORK`: the kernel hands every child
//! of a `fork` (or of a `clone` without `CLONE_VM`, `pthread_atfork` handlers or not) that page
//! zeroed, and a zero means "ask the kernel again". Where the page cannot be had (a kernel before
//! 4.14), every call asks the kernel.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::mm::{Advice, MapFlags, ProtFlags};

/// The word in the wiped-on-fork page, or `None` when there is no such page.
fn cache() -> Option<&'static AtomicU32> {
    static PAGE: OnceLock<Option<&'static AtomicU32>> = OnceLock::new();
    *PAGE.get_or_init(|| {
        let len = rustix::param::page_size();
        // SAFETY: a fresh private anonymous mapping: it aliases nothing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .ok()?;
        // SAFETY: [base, base + len) is the mapping just made.
        if unsafe { rustix::mm::madvise(base, len, Advice::LinuxWipeOnFork) }.is_err() {
            // SAFETY: the same mapping, which nothing refers to yet.
            let _ = unsafe { rustix::mm::munmap(base, len) };
            return None;
        }
        // SAFETY: the page is mapped read/write and never unmapped (a fork gives the child a
        // zeroed copy, not a hole), page-aligned, zero-filled (a valid AtomicU32), and only ever
        // accessed through this atomic.
        Some(unsafe { &*base.cast::<AtomicU32>() })
    })
}

/// The id of the calling process.
pub(crate) fn get() -> u32 {
    let Some(word) = cache() else {
        return std::process::id();
    };
    match word.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            word.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_the_kernels_answer_here_and_in_a_forked_child() {
        assert_eq!(super::get(), std::process::id());
        // SAFETY: the child only reads its pid, compares and exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let same = super::get() == std::process::id();
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if same { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(super::get(), std::process::id());
    }
}
