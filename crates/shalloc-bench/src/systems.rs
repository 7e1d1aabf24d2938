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
    /// shalloc: a sealed memfd registered with the broker.
    Shalloc,
    /// The bytes themselves over a Unix stream socket.
    Pipe,
    /// ipc-channel's `IpcSharedMemory` sent over an `IpcSender`.
    IpcChannel,
    /// The shared_memory crate's named mapping; its name is sent.
    SharedMemory,
}

impl System {
    /// Every system, the floor first.
    pub const ALL: [System; 5] = [
        System::Floor,
        System::Shalloc,
        System::Pipe,
        System::IpcChannel,
        System::SharedMemory,
    ];

    /// The name in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Shalloc => "shalloc",
            System::Pipe => "pipe",
            System::IpcChannel => "ipc-channel",
            System::SharedMemory => "shared_memory",
        }
    }

    /// The system with this name.
    pub fn from_name(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// One process: allocate, lock, touch every page, unlock, free.
    Cycle,
    /// A hands a block to B, B reads every byte, frees and acknowledges.
    Handoff,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 2] = [Scenario::Cycle, Scenario::Handoff];

    /// The name in tables, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Cycle => "cycle",
            Scenario::Handoff => "handoff",
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
        }
    }
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
            System::Pipe => self.pipe_cycle(data),
            System::IpcChannel => {
                let shm = IpcSharedMemory::from_bytes(data);
                // SAFETY: the shared memory is mapped for shm.len() bytes while shm lives.
                Ok(unsafe { touch_pages(shm.as_ptr(), shm.len()) })
            }
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
