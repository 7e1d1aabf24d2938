//! The systems compared, the scenarios, and the `cycle` scenario of each system (one process).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use ipc_channel::ipc::IpcSharedMemory;
use shared_memory::ShmemConf;

use crate::common::{Result, touch_pages};
use crate::floor;

/// A way to hand a block of bytes to another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum System {
    /// Plain system calls, no broker: the floor every other system is divided by.
    Floor,
    /// shalloc: a sealed memfd registered with the broker (recycled when it can be).
    Shalloc,
    /// shalloc with recycling off (`pool::without_recycling` in A, `pool::set_limit(Some(0))` in
    /// its peer): a fresh memfd for every block.
    ShallocFresh,
    /// The bytes themselves over a Unix stream socket.
    Pipe,
    /// ipc-channel's `IpcSharedMemory` sent over an `IpcSender`.
    IpcChannel,
    /// The shared_memory crate's named mapping; its name is sent.
    SharedMemory,
    /// shalloc's in-place fill (`alloc_with`): only in the `fill` scenario, where `shalloc` is
    /// `alloc` of a prepared buffer.
    ShallocFill,
}

impl System {
    /// Every system, the floor first.
    pub const ALL: [System; 6] = [
        System::Floor,
        System::Shalloc,
        System::ShallocFresh,
        System::Pipe,
        System::IpcChannel,
        System::SharedMemory,
    ];

    /// The name in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Shalloc => "shalloc",
            System::ShallocFresh => "shalloc-fresh",
            System::Pipe => "pipe",
            System::IpcChannel => "ipc-channel",
            System::SharedMemory => "shared_memory",
            System::ShallocFill => "shalloc alloc_with",
        }
    }

    /// The system with this name.
    pub fn from_name(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Runs `f` with this system's recycling setting: off for [`System::ShallocFresh`] (without
    /// emptying the pool that `shalloc`'s next turn finds), the default for every other.
    pub fn with_recycling<T>(self, f: impl FnOnce() -> T) -> T {
        if self == System::ShallocFresh {
            shalloc::pool::without_recycling(f)
        } else {
            f()
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// One process: allocate, lock, touch every page, unlock, free.
    Cycle,
    /// A hands a block to B, B reads every byte, frees and acknowledges.
    Handoff,
    /// As `cycle`, each iteration with the next of [`mixed_sizes`] (up to the row's size).
    CycleMixed,
    /// As `handoff`, each iteration with the next of [`mixed_sizes`] (up to the row's size).
    HandoffMixed,
    /// Produce a block's contents: into a buffer and then `alloc` it, or in place with
    /// `alloc_with`. Runs with `cycle`, at 1 MiB and 16 MiB; not a filter choice of its own.
    Fill,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 4] = [
        Scenario::Cycle,
        Scenario::Handoff,
        Scenario::CycleMixed,
        Scenario::HandoffMixed,
    ];

    /// The name in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Cycle => "cycle",
            Scenario::Handoff => "handoff",
            Scenario::CycleMixed => "cycle-mixed",
            Scenario::HandoffMixed => "handoff-mixed",
            Scenario::Fill => "fill",
        }
    }

    /// The scenario with this name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What one iteration does, for the report.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::Cycle => {
                "one process: alloc into its own table, lock, touch every page, unlock, free"
            }
            Scenario::Handoff => {
                "A allocates into B's table and sends the handle; B locks, checksums every byte, \
                 unlocks, frees and acks; latency per hand-off"
            }
            Scenario::CycleMixed => {
                "as cycle, but each iteration takes the next of 8 sizes between an eighth of the \
                 row's size and the row's size, in a fixed shuffled order (none a whole number of \
                 pages, each of another size class); median per iteration"
            }
            Scenario::HandoffMixed => {
                "as handoff, but each hand-off takes the next of the same 8 mixed sizes as \
                 cycle-mixed; median per hand-off"
            }
            Scenario::Fill => {
                "produce the block's bytes (a pattern, standing in for serialization) and put them \
                 in a sealed block in our own table: floor = into a buffer, then memfd + pwrite + \
                 seals; shalloc = into a buffer, then alloc; alloc_with = in place; then free"
            }
        }
    }
}

/// The sizes the mixed scenarios take in turn for a row of `size` bytes: eight, from about an
/// eighth of it to it, shuffled, and off page boundaries (so each is of another size class, and a
/// block of one is never reused for the next). At least one byte each.
pub fn mixed_sizes(size: usize) -> Vec<usize> {
    const EIGHTHS: [usize; 8] = [8, 3, 6, 1, 7, 4, 2, 5];
    EIGHTHS
        .iter()
        .map(|&k| (size / 8 * k).saturating_sub(k * 100).max(1))
        .collect()
}

/// What the `cycle` scenario keeps between iterations: the pipe system's connected socket pair and
/// its receive buffer.
#[derive(Default)]
pub struct CycleState {
    pipe: Option<(UnixStream, UnixStream)>,
    sink: Vec<u8>,
}

impl CycleState {
    /// One `cycle` of `system` on `data`. Returns a value computed from the touched pages.
    pub fn cycle(&mut self, system: System, data: &[u8]) -> Result<u64> {
        match system {
            System::Floor => floor::cycle(data),
            System::Shalloc => shalloc_cycle(data),
            System::ShallocFresh => system.with_recycling(|| shalloc_cycle(data)),
            System::Pipe => self.pipe_cycle(data),
            System::IpcChannel => {
                let shm = IpcSharedMemory::from_bytes(data);
                // SAFETY: the shared memory is mapped for shm.len() bytes while shm lives.
                Ok(unsafe { touch_pages(shm.as_ptr(), shm.len()) })
            }
            System::ShallocFill => Err("shalloc alloc_with runs only in the fill scenario".into()),
            System::SharedMemory => {
                let owner = ShmemConf::new().size(data.len()).create()?;
                // SAFETY: the new mapping has room for data.len() bytes, and nobody else knows it.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), owner.as_ptr(), data.len()) };
                let view = ShmemConf::new().os_id(owner.get_os_id()).open()?;
                // SAFETY: the second mapping is as long as the first, valid while `view` lives.
                let sum = unsafe { touch_pages(view.as_ptr(), view.len().min(data.len())) };
                drop(view);
                drop(owner);
                Ok(sum)
            }
        }
    }

    /// The bytes through a Unix socket within one process: write what the socket takes, read what
    /// it has, until all came back, then touch every page of the copy.
    fn pipe_cycle(&mut self, data: &[u8]) -> Result<u64> {
        if self.pipe.is_none() {
            let (tx, rx) = UnixStream::pair()?;
            tx.set_nonblocking(true)?;
            rx.set_nonblocking(true)?;
            self.pipe = Some((tx, rx));
        }
        let Some((tx, rx)) = self.pipe.as_mut() else {
            return Err("no socket pair".into());
        };
        if self.sink.len() < data.len() {
            self.sink.resize(data.len(), 0);
        }
        let sink = &mut self.sink[..data.len()];
        let (mut sent, mut got) = (0, 0);
        while got < data.len() {
            if sent < data.len() {
                match tx.write(&data[sent..]) {
                    Ok(n) => sent += n,
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match rx.read(&mut sink[got..]) {
                Ok(0) => return Err("the socket pair closed".into()),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // SAFETY: sink holds data.len() initialised bytes.
        Ok(unsafe { touch_pages(sink.as_ptr(), sink.len()) })
    }
}

fn shalloc_cycle(data: &[u8]) -> Result<u64> {
    let me = shalloc::Pid::current();
    let handle = shalloc::alloc(data, me)?;
    let view = shalloc::lock(handle, me)?;
    // SAFETY: the view is mapped for view.len() bytes while it lives.
    let sum = unsafe { touch_pages(view.as_ptr(), view.len()) };
    drop(view);
    shalloc::free(handle, me)?;
    Ok(sum)
}

/// The systems of the `fill` scenario.
pub const FILL_SYSTEMS: [System; 3] = [System::Floor, System::Shalloc, System::ShallocFill];

/// The sizes of the `fill` scenario.
pub const FILL_SIZES: [usize; 2] = [1 << 20, 16 << 20];

/// Writes the block's contents: what a serializer would do, one pass over the bytes.
fn produce(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ (i >> 12) as u8;
    }
}

/// One `fill` of `size` bytes by `system`; `scratch` is the prepared buffer the first two reuse.
pub fn fill(system: System, size: usize, scratch: &mut Vec<u8>) -> Result<u64> {
    let me = shalloc::Pid::current();
    scratch.resize(size, 0);
    match system {
        System::Floor => {
            produce(scratch);
            drop(floor::sealed_memfd(scratch)?);
        }
        System::Shalloc => {
            produce(scratch);
            shalloc::free(shalloc::alloc(scratch, me)?, me)?;
        }
        System::ShallocFill => shalloc::free(shalloc::alloc_with(size, me, produce)?, me)?,
        other => return Err(format!("{} has no fill", other.name()).into()),
    }
    Ok(size as u64)
}
