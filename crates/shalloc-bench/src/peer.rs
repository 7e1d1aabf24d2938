//! The `handoff` scenario: process A (the benchmark) and process B (the benchmark binary again,
//! started as `shalloc-bench --peer SYSTEM`), connected by a Unix stream socket on B's stdin that
//! carries the control frames, the acknowledgements, and for some systems the block itself.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipc_channel::IpcError;
use ipc_channel::ipc::{self, IpcOneShotServer, IpcSender, IpcSharedMemory};
use shared_memory::ShmemConf;

use crate::common::{
    Header, Kind, Result, Spawned, checksum, read_name, recv_ack, recv_header, send_ack,
};
use crate::floor;
use crate::systems::System;

/// The command-line flag that starts a peer.
pub const PEER_FLAG: &str = "--peer";

/// A's end of a running peer B.
pub struct Peer {
    system: System,
    child: Spawned,
    ctl: UnixStream,
    pid: shalloc::Pid,
    ipc_tx: Option<IpcSender<IpcSharedMemory>>,
}

impl Peer {
    /// Starts `exe --peer SYSTEM` (on `cpu` only, when given) and waits until it is ready.
    pub fn spawn(system: System, exe: &Path, cpu: Option<usize>) -> Result<Peer> {
        let (ctl, theirs) = UnixStream::pair()?;
        let mut command = Command::new(exe);
        command.arg(PEER_FLAG).arg(system.name());
        if let Some(cpu) = cpu {
            command.arg("--peer-cpu").arg(cpu.to_string());
        }
        let child = command
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = shalloc::Pid::from_raw(child.id());
        let mut peer = Peer {
            system,
            child: Spawned::new(child),
            ctl,
            pid,
            ipc_tx: None,
        };
        if system == System::IpcChannel {
            let (server, name) = IpcOneShotServer::<IpcSender<IpcSharedMemory>>::new()?;
            let name_len = u32::try_from(name.len())?;
            let header = Header {
                size: 0,
                arg: name_len,
                kind: Kind::Setup,
            };
            floor::write_two(peer.ctl.as_fd(), &header.encode(), name.as_bytes())?;
            // accept() has no timeout: wait for it on a thread, so a peer that died early makes an
            // error rather than a hang.
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(server.accept().map(|(_receiver, tx)| tx));
            });
            let tx = result
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| "the ipc-channel peer did not connect within 10 s")??;
            peer.ipc_tx = Some(tx);
        }
        recv_ack(&peer.ctl)?;
        Ok(peer)
    }

    /// Hands `data` to the peer and waits for its acknowledgement, which must be `expected` (the
    /// checksum of `data`).
    pub fn handoff(&mut self, data: &[u8], expected: u64) -> Result<()> {
        // Kept until the peer acknowledges, then dropped (unlinked and unmapped): part of the cost.
        let mut keep = None;
        match self.system {
            System::Floor => {
                let fd = floor::sealed_memfd(data)?;
                let header = Header::work(data.len(), 0).encode();
                floor::send_with_fd(self.ctl.as_fd(), &header, fd.as_fd())?;
            }
            System::Shalloc | System::ShallocFresh => {
                let handle = self
                    .system
                    .with_recycling(|| shalloc::alloc(data, self.pid))?;
                let header = Header::work(data.len(), handle.as_raw()).encode();
                floor::write_all(self.ctl.as_fd(), &header)?;
            }
            System::Pipe => {
                let header = Header::work(data.len(), 0).encode();
                floor::write_two(self.ctl.as_fd(), &header, data)?;
            }
            System::IpcChannel => {
                let tx = self.ipc_tx.as_ref().ok_or("ipc-channel peer not set up")?;
                tx.send(IpcSharedMemory::from_bytes(data))?;
            }
            System::ShallocFill => return Err("shalloc alloc_with has no hand-off".into()),
            System::SharedMemory => {
                let shm = ShmemConf::new().size(data.len()).create()?;
                // SAFETY: the new mapping has room for data.len() bytes; nobody else knows it yet.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), shm.as_ptr(), data.len()) };
                let name = shm.get_os_id().as_bytes();
                let header = Header::work(data.len(), u32::try_from(name.len())?).encode();
                floor::write_two(self.ctl.as_fd(), &header, name)?;
                keep = Some(shm);
            }
        }
        let ack = recv_ack(&self.ctl).map_err(|e| {
            format!(
                "{}: no acknowledgement from the peer: {e}",
                self.system.name()
            )
        })?;
        drop(keep);
        if ack != expected {
            return Err(format!(
                "{}: the peer read checksum {ack:#x}, expected {expected:#x}",
                self.system.name()
            )
            .into());
        }
        Ok(())
    }

    /// Asks the peer to exit and waits for it (killing it, by its pid, after a second).
    pub fn shutdown(&mut self) -> Result<()> {
        if self.child.exited() {
            return Ok(());
        }
        let quit = Header {
            size: 0,
            arg: 0,
            kind: Kind::Quit,
        };
        let _ = floor::write_all(self.ctl.as_fd(), &quit.encode());
        // The ipc-channel peer waits on its channel: dropping the sender disconnects it.
        self.ipc_tx = None;
        let what = format!("the {} peer", self.system.name());
        self.child.finish(&what, Duration::from_secs(1))
    }
}

/// B's side: serves hand-offs of `system` on stdin until told to quit or stdin closes, on `cpu`
/// only when given.
pub fn run_peer(system: System, cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        // First, so that threads the peer starts (ipc-channel's) run there too.
        crate::pinning::pin_to(cpu)?;
    }
    let ctl = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    match system {
        System::IpcChannel => return run_ipc_peer(&ctl),
        // Connect to the broker before saying ready, as a long-lived process would be.
        System::Shalloc => drop(shalloc::broker_pid()?),
        System::ShallocFresh => {
            // This peer's own setting, for good: it runs for this system only.
            shalloc::pool::set_limit(Some(0));
            shalloc::broker_pid()?;
        }
        _ => {}
    }
    send_ack(&ctl, 0)?;
    let me = shalloc::Pid::current();
    let mut buf = Vec::new();
    while let Some((header, fd)) = recv_header(&ctl)? {
        match header.kind {
            Kind::Quit => break,
            Kind::Setup => return Err("unexpected setup frame".into()),
            Kind::Work => {}
        }
        let len = header.len()?;
        let sum = match system {
            System::Floor => {
                let fd = fd.ok_or("a floor frame without a descriptor")?;
                let map = floor::Mapping::new(fd.as_fd(), len)?;
                // SAFETY: A closed its descriptor after sending; nobody writes the memfd.
                let sum = checksum(unsafe { map.as_slice() });
                drop(map);
                drop(fd);
                sum
            }
            System::Shalloc | System::ShallocFresh => {
                let handle = shalloc::Handle::from_raw(header.arg).ok_or("handle 0")?;
                let view = shalloc::lock(handle, me)?;
                // SAFETY: A keeps no view of the block; nobody writes it while we read.
                let sum = checksum(unsafe { view.as_slice() });
                drop(view);
                shalloc::free(handle, me)?;
                sum
            }
            System::Pipe => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                std::io::Read::read_exact(&mut &ctl, &mut buf[..len])?;
                checksum(&buf[..len])
            }
            System::SharedMemory => {
                let name = read_name(&ctl, header.arg)?;
                let shm = ShmemConf::new().os_id(&name).open()?;
                if shm.len() < len {
                    return Err(format!("{name} is shorter than {len} bytes").into());
                }
                // SAFETY: the mapping covers at least len bytes while shm lives, and A does not
                // write it once it sent the name.
                let sum = checksum(unsafe { std::slice::from_raw_parts(shm.as_ptr(), len) });
                drop(shm);
                sum
            }
            System::IpcChannel => return Err("unreachable: ipc-channel peer".into()),
            System::ShallocFill => return Err("shalloc alloc_with has no hand-off".into()),
        };
        send_ack(&ctl, sum)?;
    }
    Ok(())
}

/// B's side for ipc-channel: connects to A's one-shot server, gives it a sender, then receives
/// shared memory on the channel until A drops the sender.
fn run_ipc_peer(ctl: &UnixStream) -> Result<()> {
    let Some((header, _)) = recv_header(ctl)? else {
        return Ok(());
    };
    if header.kind != Kind::Setup {
        return Err("the ipc-channel peer expected a setup frame".into());
    }
    let name = read_name(ctl, header.arg)?;
    let (tx, rx) = ipc::channel::<IpcSharedMemory>()?;
    IpcSender::<IpcSender<IpcSharedMemory>>::connect(name)?.send(tx)?;
    send_ack(ctl, 0)?;
    loop {
        match rx.recv() {
            Ok(shm) => {
                let sum = checksum(&shm);
                drop(shm);
                send_ack(ctl, sum)?;
            }
            Err(IpcError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}
