//! Hostile input on the broker's socket: every offender is dropped (or refused with a reason), the
//! broker keeps serving everyone else, and it keeps no descriptor the offender sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{TestEnv, wait_until};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketType,
};
use shalloc::Pid;
use shalloc_protocol::wire::{MAX_FRAME, Reply, Request, VERSION};

fn connect(env: &TestEnv) -> OwnedFd {
    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    rustix::net::connect(
        &sock,
        &SocketAddrUnix::new(env.rendezvous().socket()).unwrap(),
    )
    .unwrap();
    let timeout = Some(Duration::from_secs(5));
    rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, timeout)
        .unwrap();
    sock
}

fn send_raw(sock: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> rustix::io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
}

/// The next reply, or None when the broker closed the connection.
fn recv_reply(sock: &OwnedFd) -> Option<Reply> {
    let mut buf = [0u8; MAX_FRAME + 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("the broker answers or closes within the timeout");
    if msg.bytes == 0 {
        return None;
    }
    Some(Reply::decode(&buf[..msg.bytes]).unwrap().1)
}

fn greeted(env: &TestEnv) -> OwnedFd {
    let sock = connect(env);
    send_raw(
        &sock,
        Request::Hello { version: VERSION }.encode(1).as_bytes(),
        &[],
    )
    .unwrap();
    assert!(matches!(recv_reply(&sock), Some(Reply::Hello { .. })));
    sock
}

fn broker_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The broker still serves a well-behaved client.
fn still_serving() {
    let me = Pid::current();
    let h = shalloc::alloc(b"still here", me).unwrap();
    assert_eq!(shalloc::lock(h, me).unwrap().to_vec(), b"still here");
    shalloc::free(h, me).unwrap();
}

fn sealed_memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

#[test]
fn malformed_frames_drop_only_the_offender() {
    let env = TestEnv::new();
    let broker = shalloc::broker_pid().unwrap().as_raw();
    still_serving();
    let baseline = broker_fds(broker);
    let attacks: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "garbage",
            b"\xde\xad\xbe\xef garbage that is no frame".to_vec(),
            true,
        ),
        ("oversized", vec![1u8; MAX_FRAME + 100], true),
        ("truncated header", vec![1, 0, 0], true),
        (
            "unknown kind",
            {
                let mut f = Request::Stop.encode(2).as_bytes().to_vec();
                f[0] = 0x77;
                f
            },
            true,
        ),
        (
            "request before hello",
            Request::Free {
                handle: 4,
                owner: 1,
            }
            .encode(2)
            .as_bytes()
            .to_vec(),
            false,
        ),
        (
            "wrong version",
            Request::Hello { version: 999 }
                .encode(1)
                .as_bytes()
                .to_vec(),
            false,
        ),
    ];
    for (name, frame, greet_first) in attacks {
        let sock = if greet_first {
            greeted(&env)
        } else {
            connect(&env)
        };
        send_raw(&sock, &frame, &[]).unwrap();
        // A wrong version gets a reason before the close; everything else is just closed.
        let mut closed = false;
        for _ in 0..2 {
            match recv_reply(&sock) {
                None => {
                    closed = true;
                    break;
                }
                Some(Reply::Failed { .. }) => continue,
                Some(other) => panic!("{name}: unexpected {other:?}"),
            }
        }
        assert!(closed, "{name}: the offender is dropped");
        still_serving();
    }
    wait_until(Duration::from_secs(5), || broker_fds(broker) <= baseline);
}

#[test]
fn descriptors_that_are_not_sealed_memfds_are_refused_and_closed() {
    let env = TestEnv::new();
    let broker = shalloc::broker_pid().unwrap().as_raw();
    still_serving();
    let baseline = broker_fds(broker);
    let me = std::process::id();
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let unsealed = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, 16).unwrap();
    let sealed = sealed_memfd(16, SEALS);
    let read_only = std::fs::File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&sealed)
    ))
    .unwrap();
    let cases: Vec<(&str, BorrowedFd<'_>, u64)> = vec![
        ("a pipe", pipe_r.as_fd(), 16),
        ("a device", devnull.as_fd(), 16),
        ("an unsealed memfd", unsealed.as_fd(), 16),
        ("a read-only memfd", read_only.as_fd(), 16),
        ("a size that disagrees", sealed.as_fd(), 17),
    ];
    let sock = greeted(&env);
    for (i, (name, fd, size)) in cases.into_iter().enumerate() {
        let frame = Request::Alloc { target: me, size }.encode(i as u32 + 2);
        send_raw(&sock, frame.as_bytes(), &[fd]).unwrap();
        match recv_reply(&sock) {
            Some(Reply::Failed { code, reason }) => assert_eq!(code, 87, "{name}: {reason}"),
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    // Too many descriptors, and a descriptor with a request that takes none: dropped.
    for fds in [
        vec![sealed.as_fd(), sealed.as_fd(), sealed.as_fd()],
        vec![sealed.as_fd()],
    ] {
        let sock = greeted(&env);
        let request = if fds.len() > 1 {
            Request::Alloc {
                target: me,
                size: 16,
            }
        } else {
            Request::Stop
        };
        send_raw(&sock, request.encode(2).as_bytes(), &fds).unwrap();
        assert!(
            recv_reply(&sock).is_none(),
            "dropped for {} descriptors with {request:?}",
            fds.len()
        );
    }
    drop(sock);
    still_serving();
    wait_until(Duration::from_secs(5), || broker_fds(broker) <= baseline);
}

#[test]
fn a_client_that_never_reads_is_dropped() {
    let env = TestEnv::new();
    still_serving();
    let sock = greeted(&env);
    let frame = Request::Free {
        handle: 4,
        owner: std::process::id(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 2;
    // Requests whose replies we never read: the broker must drop us rather than block on us.
    let dropped = loop {
        assert!(
            Instant::now() < deadline,
            "the broker never dropped a client that does not read"
        );
        match rustix::net::send(
            &sock,
            frame.encode(id).as_bytes(),
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(_) => id += 1,
            Err(rustix::io::Errno::PIPE) | Err(rustix::io::Errno::CONNRESET) => break true,
            Err(rustix::io::Errno::AGAIN) => {
                // Our send buffer is full: either the broker stopped reading us (dropped) or is busy.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("send: {e}"),
        }
    };
    assert!(dropped);
    still_serving();
}

#[test]
fn a_thousand_connections_at_once() {
    let env = TestEnv::new();
    still_serving();
    let socks: Vec<OwnedFd> = (0..1000).map(|_| connect(&env)).collect();
    for (i, sock) in socks.iter().enumerate() {
        send_raw(
            sock,
            Request::Hello { version: VERSION }
                .encode(i as u32 + 1)
                .as_bytes(),
            &[],
        )
        .unwrap();
    }
    for sock in &socks {
        assert!(matches!(recv_reply(sock), Some(Reply::Hello { .. })));
    }
    still_serving();
    let listed = shalloc::admin::listing(false).unwrap().unwrap();
    assert!(listed.broker.connections >= 1001, "{:?}", listed.broker);
    drop(socks);
    wait_until(Duration::from_secs(5), || {
        shalloc::admin::listing(false)
            .unwrap()
            .unwrap()
            .broker
            .connections
            <= 2
    });
}

#[test]
fn a_symlinked_socket_path_is_not_followed() {
    let env = TestEnv::new();
    let elsewhere = env.dir.join("decoy.sock");
    let _decoy = std::os::unix::net::UnixListener::bind(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, env.rendezvous().socket()).unwrap();
    match shalloc::alloc(b"x", Pid::current()) {
        Err(e @ shalloc::Error::BrokerUnavailable { .. }) => {
            assert!(e.to_string().contains("symlink"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        env.running_broker().is_none(),
        "no broker was started behind the symlink"
    );
}

/// The start of this process's own table segment, from /proc/self/maps.
fn own_segment() -> *const std::sync::atomic::AtomicU64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("memfd:shalloc-table"))
        .expect("our table is mapped");
    let start = line.split('-').next().unwrap();
    usize::from_str_radix(start, 16).unwrap() as *const std::sync::atomic::AtomicU64
}

/// A process that scribbles over its own table segment — slots naming a regular file, a FIFO, a
/// pipe, an unsealed memfd, a descriptor it does not have, and bit patterns neither side writes —
/// hurts only itself: another process locking those handles gets a clean "invalid handle" at once
/// (no hang on the FIFO, no device opened), and the broker serves everyone, that process included.
#[test]
fn a_table_its_owner_scribbled_on_hurts_only_its_owner() {
    use shalloc_protocol::segment::{self, State};
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let env = TestEnv::new();
    shalloc::broker_pid().unwrap();
    let fifo = env.dir.join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (mut from_child, mut to_parent) = common::pipe();
    let (mut release_r, release_w) = common::pipe();
    let release_w_fd = std::os::fd::AsRawFd::as_raw_fd(&release_w);
    let child = common::fork(move || {
        // SAFETY: closes this child's copy of the parent's write end, which it never uses.
        unsafe { libc::close(release_w_fd) };
        let me = Pid::current();
        let good = shalloc::alloc(b"the owner's real block", me).unwrap();
        let base = own_segment();
        // SAFETY: the header's first word is the capacity, written by the broker.
        let capacity = unsafe { (*base).load(Ordering::Acquire) } as usize;
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fifo = rustix::fs::open(
            &fifo,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
        let unsealed = rustix::fs::memfd_create("unsealed", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        use std::os::fd::AsRawFd;
        let fds = [
            file.as_raw_fd() as u32,
            fifo.as_raw_fd() as u32,
            pipe_r.as_raw_fd() as u32,
            unsealed.as_raw_fd() as u32,
            999_999,
        ];
        let mut forged = Vec::new();
        let mut value = good.as_raw() + 4 * 1000;
        let mut write = |state: &dyn Fn(u32) -> State| {
            value += 4;
            let slot = segment::slot_of(value, capacity).unwrap();
            let word = (segment::SLOTS_AT + slot * segment::SLOT_BYTES) / 8;
            // SAFETY: `slot` is below the capacity, so the word is inside our segment mapping.
            unsafe { (*base.add(word)).store(state(value).encode(), Ordering::Release) };
            forged.push(value);
        };
        for fd in fds {
            write(&|handle| State::Live { handle, fd });
        }
        write(&|handle| State::Pending { handle });
        write(&|handle| State::Garbage((u64::from(handle) << 32) | 3));
        for v in forged.iter().copied().chain([good.as_raw()]) {
            to_parent.write_all(&v.to_le_bytes()).unwrap();
        }
        to_parent.write_all(&0u32.to_le_bytes()).unwrap();
        let mut wait = [0u8; 1];
        let _ = release_r.read(&mut wait);
        // Our own calls still work, on the forged slots too (they are ours to break).
        assert_eq!(
            shalloc::lock(good, me).unwrap().to_vec(),
            b"the owner's real block"
        );
        let again = shalloc::alloc(b"again", me).unwrap();
        shalloc::free(again, me).unwrap();
        drop((file, fifo, unsealed));
        0
    });
    let mut values = Vec::new();
    loop {
        let mut v = [0u8; 4];
        from_child.read_exact(&mut v).unwrap();
        match u32::from_le_bytes(v) {
            0 => break,
            v => values.push(v),
        }
    }
    let good = values.pop().unwrap();
    let owner = Pid::from_raw(child as u32);
    for v in values {
        let h = shalloc::Handle::from_raw(v).unwrap();
        let started = Instant::now();
        match shalloc::lock(h, owner) {
            Err(shalloc::Error::InvalidHandle { .. }) => {}
            other => panic!(
                "forged handle {v:#x}: {:?}",
                other.map(|view| view.to_vec())
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{v:#x} took {:?}",
            started.elapsed()
        );
        assert!(matches!(
            shalloc::map_handle(h, owner, Pid::current()),
            Err(shalloc::Error::InvalidHandle { .. })
        ));
    }
    let good = shalloc::Handle::from_raw(good).unwrap();
    assert_eq!(
        shalloc::lock(good, owner).unwrap().to_vec(),
        b"the owner's real block"
    );
    still_serving();
    drop(release_w);
    assert_eq!(common::wait_exit(child, Duration::from_secs(10)), 0);
}
