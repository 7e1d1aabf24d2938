//! Where the two processes of a hand-off run.
//!
//! Left to the scheduler, each peer lands either on A's CPU (a wake-up is a plain context switch)
//! or on the other one (a wake-up is an interrupt to another CPU, which on a virtual machine costs
//! a trip through the host), and each peer tends to stay where it landed. On this 2-CPU VM that
//! lottery moved small hand-offs of one system by 0.65x-2.95x between runs of the same code, and
//! apart from the other systems in the same run. So by default A runs on one CPU and every peer
//! on another: every system pays the same cross-CPU wake-ups, as two busy processes on a real
//! machine would. `--no-pin` leaves placement to the scheduler.

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use crate::common::Result;

/// The CPUs A and the peers run on, when pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The benchmark process (A).
    pub a: usize,
    /// Every peer (B).
    pub b: usize,
}

/// Two CPUs this process may run on, if it may run on at least two.
pub fn choose() -> Result<Option<Placement>> {
    let allowed = sched_getaffinity(None)?;
    let mut usable = (0..CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu));
    Ok(match (usable.next(), usable.next()) {
        (Some(a), Some(b)) => Some(Placement { a, b }),
        _ => None,
    })
}

/// Runs the calling thread (and threads it starts later) on `cpu` only.
pub fn pin_to(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)?;
    Ok(())
}
