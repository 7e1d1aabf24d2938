//! Everything the broker does once, before it serves: claim the namespace, give up
//! `CAP_SYS_PTRACE`, raise the descriptor limit, catch SIGTERM/SIGINT, bind the socket.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::process::{Resource, Rlimit};
use rustix::thread::CapabilitySet;

use shalloc_protocol::rendezvous::{self, Rendezvous};

use crate::Error;

/// Takes the broker lock of `rendezvous` for the life of the process and writes our pid into it.
/// Fails with [`Error::AlreadyRunning`] when another broker holds it.
pub(crate) fn claim(rendezvous: &Rendezvous, wait: std::time::Duration) -> Result<File, Error> {
    let path = rendezvous.broker_lock();
    let mut file = rendezvous::open_lock_file(&path)
        .map_err(|e| Error::Setup(format!("cannot open {}", path.display()), e))?;
    // A broker that is exiting (idle, or stopped) may hold it a moment longer.
    let locked = rendezvous::lock_exclusive(&file, std::time::Instant::now() + wait);
    match locked {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(Error::AlreadyRunning {
                pid: text.trim().parse().ok(),
                dir: rendezvous.dir().to_path_buf(),
            });
        }
        Err(e) => {
            return Err(Error::Setup(
                format!("cannot lock {}", path.display()),
                e.into(),
            ));
        }
    }
    let write_pid = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
    };
    write_pid(&mut file)
        .map_err(|e| Error::Setup(format!("cannot write {}", path.display()), e))?;
    Ok(file)
}

/// Takes `CAP_SYS_PTRACE` out of the effective set, so that the kernel's ptrace access check (which
/// the access rule relies on) treats non-dumpable processes as closed even when the broker runs as
/// root. It stays in the permitted set: the capability module also requires a target's permitted
/// capabilities to be a subset of the checker's, and a root target has CAP_SYS_PTRACE permitted.
pub(crate) fn drop_ptrace_capability() -> Result<(), Error> {
    let caps =
        rustix::thread::capabilities(None).map_err(|e| Error::Setup("capget".into(), e.into()))?;
    if !caps.effective.contains(CapabilitySet::SYS_PTRACE) {
        return Ok(());
    }
    let mut fewer = caps;
    fewer.effective.remove(CapabilitySet::SYS_PTRACE);
    rustix::thread::set_capabilities(None, fewer)
        .map_err(|e| Error::Setup("capset".into(), e.into()))?;
    let now =
        rustix::thread::capabilities(None).map_err(|e| Error::Setup("capget".into(), e.into()))?;
    if now.effective.contains(CapabilitySet::SYS_PTRACE) {
        return Err(Error::Setup(
            "CAP_SYS_PTRACE could not be dropped".into(),
            std::io::Error::other("capset"),
        ));
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (every live block costs the broker one
/// descriptor) and returns the limit now in force.
pub(crate) fn raise_nofile() -> u64 {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let _ = rustix::process::setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    rustix::process::getrlimit(Resource::Nofile)
        .current
        .unwrap_or(u64::from(u32::MAX))
}

/// Blocks SIGTERM and SIGINT and returns a signalfd that becomes readable when one arrives.
///
/// The broker is single-threaded, so blocking them here blocks them for the whole process.
pub(crate) fn signal_fd() -> Result<OwnedFd, Error> {
    // SAFETY: `set` is a plain sigset_t that sigemptyset initialises before any other use; every
    // call below only reads or writes it and the process signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(Error::Setup(
                "cannot block SIGTERM".into(),
                std::io::Error::last_os_error(),
            ));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(Error::Setup(
                "signalfd".into(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Binds and listens on the rendezvous socket. The caller holds the broker lock, so a socket file
/// already there belongs to a broker that died: it is replaced.
pub(crate) fn listen(rendezvous: &Rendezvous) -> Result<OwnedFd, Error> {
    let path = rendezvous.socket();
    let setup = |what: &str, e: Errno| Error::Setup(format!("{what} {}", path.display()), e.into());
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| setup("cannot create a socket for", e))?;
    let addr = SocketAddrUnix::new(&path).map_err(|e| setup("socket path too long:", e))?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Setup(
                format!("cannot remove stale {}", path.display()),
                e,
            ));
        }
    }
    rustix::net::bind(&sock, &addr).map_err(|e| setup("cannot bind", e))?;
    rustix::net::listen(&sock, 1024).map_err(|e| setup("cannot listen on", e))?;
    Ok(sock)
}

/// Tells whoever started us that the socket is listening: one byte on the ready pipe, then close.
pub(crate) fn notify_ready(ready: Option<OwnedFd>) {
    if let Some(fd) = ready {
        // Nobody may be listening any more (the starter timed out); that is not our failure.
        let _ = rustix::io::write(&fd, b"R");
    }
}

/// Takes over a listening socket a service manager passed (socket activation), after checking that
/// it is a listening `SOCK_SEQPACKET` Unix socket.
pub(crate) fn adopt_listener(fd: OwnedFd) -> Result<OwnedFd, Error> {
    let kind = rustix::net::sockopt::socket_type(&fd)
        .map_err(|e| Error::Setup("the inherited descriptor is not a socket".into(), e.into()))?;
    let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
    if kind != SocketType::SEQPACKET || !listening {
        return Err(Error::Setup(
            "the inherited socket is not a listening SOCK_SEQPACKET socket (use ListenSequentialPacket=)".into(),
            std::io::Error::other("wrong socket"),
        ));
    }
    rustix::io::ioctl_fionbio(&fd, true)
        .map_err(|e| Error::Setup("O_NONBLOCK".into(), e.into()))?;
    let flags =
        rustix::io::fcntl_getfd(&fd).map_err(|e| Error::Setup("F_GETFD".into(), e.into()))?;
    rustix::io::fcntl_setfd(&fd, flags | rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| Error::Setup("F_SETFD".into(), e.into()))?;
    Ok(fd)
}

/// Tells systemd the broker is ready, when it runs as a `Type=notify` service (`$NOTIFY_SOCKET`).
pub(crate) fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name),
        None => SocketAddrUnix::new(bytes.as_slice()),
    };
    let Ok(addr) = addr else { return };
    let Ok(sock) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    // Nothing to do if systemd does not listen: it will notice the missing notification itself.
    let _ = rustix::net::sendto(
        &sock,
        message.as_bytes(),
        rustix::net::SendFlags::NOSIGNAL,
        &addr,
    );
}
