//! Values of other processes' tables leased to this process: how a block goes into another
//! process's table with no round trip (see [`shalloc_protocol::channel`]).
//!
//! The first block for a process costs one `LeaseInto` round trip, which brings a run of handle
//! values of its table and the channel to it; the next ones are one `sendmsg` each, until the run
//! is used up (runs grow from 8 to 64 values). Before each use the target's pidfd, opened before
//! the lease was asked for, must show it alive: a lease never outlives its process, and a pid the
//! kernel gave to a new process gets a new lease (or the broker's refusal). Whenever no lease can be
//! had — the target never attached its table, may not be written by us, is gone, or its channel is
//! full — the caller allocates through the broker instead, which gives the same answers.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};
use shalloc_protocol::channel::{self, Back};
use shalloc_protocol::wire::{Delivery, Reply, Request, TAG_WANTS_RETURN, lease_values};

use super::Failed;
use super::connection::{CallError, Connection};
use crate::block::{Block, pool};

/// After a refused lease, allocations into that process go through the broker this many times
/// before the next ask (doubling on each refusal up to [`MAX_REFUSED_SKIP`]), so a target that
/// never attaches costs no extra round trips to speak of.
const FIRST_REFUSED_SKIP: u32 = 4;
const MAX_REFUSED_SKIP: u32 = 1024;

/// The most targets this process keeps a lease for (two descriptors each: the target's pidfd and
/// the channel); leases of targets that exited are dropped whenever a new lease is taken.
const MAX_LEASES: usize = 64;
/// The most leases of exited targets kept until the broker's word on their blocks comes (each
/// holds the target's pidfd, the channel, and the blocks still lent).
const MAX_DYING: usize = 8;
/// The most refusals remembered (a few bytes each).
const MAX_REFUSED: usize = 4096;
/// The most blocks lent to one target that we keep for their return (one descriptor each); older
/// ones are let go, not recycled.
const MAX_LENT: usize = 8;
/// The most returns read per block sent (the rest wait for the next one).
const MAX_RETURNS_PER_SEND: usize = 64;

/// One lease: the target, pinned, its channel, the values left, and the blocks we sent it that
/// may come back (by handle, oldest first).
#[derive(Debug)]
struct Lease {
    pidfd: OwnedFd,
    channel: OwnedFd,
    values: Vec<u32>,
    /// The blocks lent, by handle and delivery tag.
    lent: Vec<(u32, u32, Arc<Block>)>,
}

impl Lease {
    /// Takes back the blocks the target returned, and once it exited, those the broker found
    /// clean in its table (orphans): each goes to the pool as its last reference drops — a return
    /// for this target only, an orphan for our own table. A return of a block we did not lend it
    /// is ignored, as is an orphan before the target's exit (only the target could have sent it).
    /// With nothing lent, nothing is read (no system call): what waits can only be ignored anyway.
    /// Whether the channel is finished: nothing can come back any more.
    fn take_returns(&mut self) -> bool {
        for _ in 0..MAX_RETURNS_PER_SEND {
            if self.lent.is_empty() {
                return false;
            }
            match channel::take_back(self.channel.as_fd()) {
                Back::Returned(back) => {
                    let lent =
                        |(h, t, _): &(u32, u32, Arc<Block>)| (*h, *t) == (back.handle, back.tag);
                    if let Some(at) = self.lent.iter().position(lent) {
                        self.lent.remove(at);
                    }
                }
                Back::Orphaned(handle) => {
                    // The newest delivery under that value is the one its slot held.
                    let at = self.lent.iter().rposition(|(h, _, _)| *h == handle);
                    if let Some(at) = at.filter(|_| exited(self.pidfd.as_fd())) {
                        let (_, _, block) = self.lent.remove(at);
                        block.orphan();
                    }
                }
                Back::Other => continue,
                Back::Empty => return false,
                Back::Finished => return true,
            }
        }
        false
    }

    /// Keeps `block`, just sent under `handle` with `tag`, until the target returns it (with
    /// recycling on: else it is let go at once).
    fn keep_lent(&mut self, handle: u32, tag: u32, block: &Arc<Block>) {
        if !pool::enabled() {
            block.mark_exported();
            return;
        }
        if self.lent.len() >= MAX_LENT {
            let (_, _, oldest) = self.lent.remove(0);
            oldest.mark_exported();
        }
        self.lent.push((handle, tag, Arc::clone(block)));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The target is gone, or we stop listening: what it still has never comes back.
        for (_, _, block) in self.lent.drain(..) {
            block.mark_exported();
        }
    }
}

/// A refusal: allocations left to send through the broker, and the next skip.
#[derive(Debug, Clone, Copy)]
struct Refused {
    skip: u32,
    next: u32,
}

/// Every lease of this connection, by target pid.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    by_pid: HashMap<u32, Lease>,
    refused: HashMap<u32, Refused>,
    /// Leases of targets that exited while holding blocks we lent them, until their channel is
    /// finished: the broker's word on which blocks were clean comes over it (oldest first).
    dying: Vec<Lease>,
}

impl Leases {
    /// Moves the lease of `pid`, whose target exited, to the dying ones if it lent anything
    /// (dropping it otherwise).
    fn move_to_dying(&mut self, pid: u32) {
        if let Some(lease) = self.by_pid.remove(&pid) {
            if !lease.lent.is_empty() {
                if self.dying.len() >= MAX_DYING {
                    self.dying.remove(0);
                }
                self.dying.push(lease);
            }
        }
    }

    /// Reads what the dying leases' channels have; drops those with nothing left to come.
    fn drain_dying(&mut self) {
        self.dying.retain_mut(|lease| {
            let finished = lease.take_returns();
            !(finished || lease.lent.is_empty())
        });
    }

    /// The lease of `pid`, whose target exited, goes (see [`Lease::take_returns`]).
    fn bury(&mut self, pid: u32) {
        self.move_to_dying(pid);
        self.drain_dying();
    }

    /// Every lease whose target exited goes — with `lending_only`, only those that lent
    /// something — and what the broker found clean comes back. One `poll` per lease looked at.
    fn bury_exited(&mut self, lending_only: bool) {
        let gone: Vec<u32> = self
            .by_pid
            .iter()
            .filter(|(_, l)| (!lending_only || !l.lent.is_empty()) && exited(l.pidfd.as_fd()))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            self.move_to_dying(pid);
        }
        self.drain_dying();
    }

    /// Looks for targets that exited with blocks we lent them, and takes back what the broker
    /// found clean (see [`Lease::take_returns`]).
    pub fn reap(&mut self) {
        self.bury_exited(true);
    }
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable once it has).
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(0))
}

fn pidfd_of(pid: u32) -> Option<OwnedFd> {
    let pid = Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()
}

impl Connection {
    /// Takes back, from targets that exited, the blocks the broker found clean in their tables
    /// (see [`Leases::reap`]).
    pub fn reap_leases(&mut self) {
        self.leases.reap();
    }

    /// Sends `block` into `pid`'s table over a leased channel: `Ok(Some(handle))` once it is on
    /// its way (lent: it may come back), `Ok(None)` when no lease can be had (allocate through the
    /// broker then).
    pub fn send_leased(
        &mut self,
        pid: u32,
        block: &Arc<Block>,
        deadline: Instant,
    ) -> Result<Option<u32>, Failed> {
        if let Some(refused) = self.leases.refused.get_mut(&pid) {
            if refused.skip > 0 {
                refused.skip -= 1;
                return Ok(None);
            }
        }
        if self
            .leases
            .by_pid
            .get(&pid)
            .is_none_or(|l| l.values.is_empty())
            && !self.lease(pid, deadline)?
        {
            return Ok(None);
        }
        let Some(lease) = self.leases.by_pid.get_mut(&pid) else {
            return Ok(None);
        };
        let Some(handle) = lease.values.pop() else {
            return Ok(None);
        };
        if exited(lease.pidfd.as_fd()) {
            // Gone, or its pid given to another process: the broker answers for that pid.
            self.leases.bury(pid);
            return Ok(None);
        }
        lease.take_returns();
        // Before it goes: from the moment it is on the channel, the target may return it.
        block.lend_to(pid);
        // Named by the block's own tag (the same each time it is lent again, so that a receiver
        // that kept its mapping finds it), marked for return when the block may be recycled.
        let wanted = if pool::enabled() { TAG_WANTS_RETURN } else { 0 };
        let tag = block.lend_tag() | wanted;
        let delivery = Delivery {
            handle,
            tag,
            size: block.size(),
        };
        match channel::send(lease.channel.as_fd(), delivery, block.fd()) {
            Ok(()) => {
                lease.keep_lent(handle, tag, block);
                Ok(Some(handle))
            }
            Err(Errno::AGAIN | Errno::NOBUFS | Errno::NOMEM | Errno::MFILE | Errno::NFILE) => {
                // The channel is full (the target does not take its blocks): keep the value.
                lease.values.push(handle);
                Ok(None)
            }
            Err(_) => {
                self.leases.by_pid.remove(&pid);
                Ok(None)
            }
        }
    }

    /// Asks for a run of values of `pid`'s table: whether some were granted.
    fn lease(&mut self, pid: u32, deadline: Instant) -> Result<bool, Failed> {
        // Pinned before asking, so that the answer can be checked to be about this process.
        let (pidfd, old) = match self.leases.by_pid.remove(&pid) {
            Some(old) => (None, Some(old)),
            None => match pidfd_of(pid) {
                Some(pidfd) => (Some(pidfd), None),
                None => return Ok(false),
            },
        };
        let answer = self.call(&Request::LeaseInto { target: pid }, None, deadline);
        let (start, mask, sent) = match answer {
            Ok((Reply::Granted { start, mask, .. }, Some(fd))) => (start, mask, fd),
            Ok((Reply::Failed { .. }, _)) => {
                if self.leases.refused.len() >= MAX_REFUSED {
                    self.leases.refused.clear();
                }
                let refused = self.leases.refused.entry(pid).or_insert(Refused {
                    skip: 0,
                    next: FIRST_REFUSED_SKIP,
                });
                refused.skip = refused.next;
                refused.next = (refused.next * 2).min(MAX_REFUSED_SKIP);
                return Ok(false);
            }
            Ok((other, _)) => {
                return Err(Failed::Call(CallError::Protocol(format!(
                    "unexpected answer {other:?} to LeaseInto"
                ))));
            }
            Err(e) => return Err(Failed::Call(e)),
        };
        self.leases.refused.remove(&pid);
        // The lease is for the process the broker found under `pid`; it is ours only if the one
        // we pinned before asking is still alive (then the pid was not reused in between).
        let pinned = match (&old, &pidfd) {
            (Some(old), _) => old.pidfd.as_fd(),
            (None, Some(pidfd)) => pidfd.as_fd(),
            (None, None) => return Ok(false),
        };
        if exited(pinned) {
            return Ok(false);
        }
        // Leases of processes that exited go now, so that their descriptors do not pile up; past
        // the cap, an arbitrary one goes too.
        self.leases.bury_exited(false);
        if self.leases.by_pid.len() >= MAX_LEASES {
            if let Some(&victim) = self.leases.by_pid.keys().next() {
                self.leases.by_pid.remove(&victim);
            }
        }
        let mut values: Vec<u32> = lease_values(start, mask).collect();
        values.reverse(); // popped from the end: lowest value first
        let lease = match (old, pidfd) {
            (Some(mut old), _) => {
                old.values = values;
                old
            }
            (None, Some(pidfd)) => Lease {
                pidfd,
                channel: sent,
                values,
                lent: Vec::new(),
            },
            (None, None) => return Ok(false),
        };
        self.leases.by_pid.insert(pid, lease);
        Ok(true)
    }
}
