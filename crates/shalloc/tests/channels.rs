//! Channels: a process that allocates into the table of another process (one that attached its
//! table) leases a run of that table's handle values from the broker once, then sends each block
//! straight to the table's owner over a socket pair, without a round trip. Real processes, forked
//! and synchronised over pipes; whether a block went over a channel is checked by the broker's own
//! request counts (no `alloc` request reaches it).
//!
//! - A hostile leaser speaking the raw protocol fills only values leased to it, and only with real
//!   blocks: a pipe, a regular file, an unsealed or read-only memfd, a memfd of another size than
//!   claimed, a frame with no descriptor, with two or five, with a request id, garbage and oversized
//!   frames are all dropped, whether the owner or the broker takes them off the channel. A valid
//!   block for a value it was not leased (another leaser's, the owner's own live handle, a value
//!   nobody leased) or for a value it already filled changes nothing, and the real leaser still
//!   fills its values. No descriptor is left behind in the owner or the broker, which keeps serving.
//! - Blocks in flight when their sender dies (SIGKILL, or a plain exit) are all there, with their
//!   bytes, whether the broker took them when the sender's connection closed or the owner did.
//! - A dead leaser's unused reservations are given back: the owner then fills its table to exactly
//!   its limit.
//! - A third process locks a block sent over a channel as soon as it learns the handle, while the
//!   table's owner makes no call at all (500 rounds); nothing is left after the frees.
//! - Allocating into a leased process that exited fails exactly as into one that was never leased:
//!   before the broker noticed the exit (it is stopped, so only the leaser's own check of the
//!   target's pidfd keeps the block out of the dead process's channel), as a zombie, and reaped.
//! - A forked child of a leaser gets a lease of its own: child and parent both fill the table, with
//!   distinct values and the right bytes.
//! - The broker's listing shows a block sent over a channel before its owner made any call.
//! - A leaser keeps no descriptor for targets that exited: its count after leasing into 70
//!   short-lived processes in turn is what it was after the first.
//! - An owner stopped (ptrace) between taking a block off a channel and putting it in its slot
//!   neither loses the block nor makes others' answers wrong: a third process's lock waits for it
//!   and succeeds once it resumes, and a leaser that exits meanwhile does not take the block's
//!   slot away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/procs.rs"]
mod procs;

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestEnv;
use procs::{Child, End, LIMIT, fork_with_channel};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType,
};
use shalloc::{Error, Handle, Pid};
use shalloc_protocol::codes;
use shalloc_protocol::rendezvous::Rendezvous;
use shalloc_protocol::segment::{self, State};
use shalloc_protocol::transport::{self, RecvBuf};
use shalloc_protocol::wire::{Delivery, MAX_FRAME, Reply, Request, VERSION, lease_values};

fn handle(raw: u32) -> Handle {
    Handle::from_raw(raw).expect("a handle is never 0")
}

/// Makes sure this process attached its own table (any call on it does), so that others lease.
fn attach_own_table() {
    let me = Pid::current();
    shalloc::free(shalloc::alloc(b"attach", me).unwrap(), me).unwrap();
}

/// How many requests of `kind` the broker has served (every process's).
fn served(kind: &str) -> u64 {
    shalloc::admin::listing(false)
        .unwrap()
        .expect("a broker runs")
        .requests
        .iter()
        .find(|r| r.kind == kind)
        .map_or(0, |r| r.count)
}

/// The handles the broker lists in `pid`'s table (none when it lists no table for it).
fn listed_handles(pid: Pid) -> u64 {
    procs::table_handles(pid).unwrap_or(0)
}

/// Polls `cond` until it holds; after [`LIMIT`], fails the test with `what()`.
fn wait_for(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(Instant::now() < deadline, "after {LIMIT:?}: {}", what());
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn broker_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Locks `h` in `owner`'s table and returns its bytes, failing the test on an error.
fn bytes_of(h: u32, owner: Pid, what: &str) -> Vec<u8> {
    shalloc::lock(handle(h), owner)
        .unwrap_or_else(|e| panic!("{what} ({h:#x} in {owner}): {e:?}"))
        .to_vec()
}

/// Fails the test unless locking `h` in `owner`'s table is refused as an invalid handle.
fn expect_invalid(h: u32, owner: Pid, what: &str) {
    match shalloc::lock(handle(h), owner) {
        Err(Error::InvalidHandle { .. }) => {}
        other => panic!(
            "{what} ({h:#x} in {owner}): expected InvalidHandle, got {:?}",
            other.map(|view| view.to_vec())
        ),
    }
}

fn send_vec(end: &mut End, values: &[u32]) {
    end.send(values.len() as u32);
    for &v in values {
        end.send(v);
    }
}

fn recv_vec(end: &mut End) -> Vec<u32> {
    let n = end.recv();
    (0..n).map(|_| end.recv()).collect()
}

/// Every slot of this process's own table, read straight from the segment it maps.
fn own_table_states() -> Vec<State> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("memfd:shalloc-table"))
        .expect("our table is mapped");
    let start = usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
    let base = start as *const AtomicU64;
    // SAFETY: the header's first word is the capacity, written by the broker before it sent us
    // the segment; the mapping stays as long as our table, which this test never drops.
    let capacity = unsafe { (*base).load(Ordering::Acquire) } as usize;
    (0..capacity)
        .map(|slot| {
            let word = (segment::SLOTS_AT + slot * segment::SLOT_BYTES) / 8;
            // SAFETY: `slot` is below the capacity, so the word is inside the mapping.
            State::decode(unsafe { (*base.add(word)).load(Ordering::Acquire) })
        })
        .collect()
}

/// The values of our own table reserved for a channel: (value, channel).
fn reserved_in_own_table() -> Vec<(u32, u32)> {
    own_table_states()
        .into_iter()
        .filter_map(|s| match s {
            State::Reserved { handle, channel } => Some((handle, channel)),
            _ => None,
        })
        .collect()
}

/// What the slot of `value` in our own table holds.
fn own_slot(value: u32) -> State {
    let states = own_table_states();
    states[segment::slot_of(value, states.len()).expect("a handle value")]
}

/// A process that never called shalloc locks `h` in `owner`'s table through the broker and finds
/// `expected`: the broker serves.
fn broker_serves(h: u32, owner: Pid, expected: &'static [u8]) {
    let mut child = Child::fork(move || {
        let view = shalloc::lock_read_only(handle(h), owner).unwrap();
        assert_eq!(view.to_vec(), expected);
        0
    });
    child.expect_success();
}

// ---- The raw protocol, for the hostile leaser ----

const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A connection to the broker of this test, greeted, with nothing of the shalloc client.
fn raw_connect() -> OwnedFd {
    let rendezvous = Rendezvous::for_this_process().unwrap();
    let sock = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    rustix::net::connect(&sock, &SocketAddrUnix::new(rendezvous.socket()).unwrap()).unwrap();
    let timeout = Some(Duration::from_secs(10));
    rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, timeout)
        .unwrap();
    match raw_call(&sock, &Request::Hello { version: VERSION }, 1) {
        (Reply::Hello { .. }, None) => sock,
        other => panic!("unexpected greeting {other:?}"),
    }
}

/// Sends `request` with id `id` and returns its answer (skipping what the broker sends unasked).
fn raw_call(sock: &OwnedFd, request: &Request, id: u32) -> (Reply, Option<OwnedFd>) {
    transport::send(sock.as_fd(), &request.encode(id), None, false).unwrap();
    loop {
        let mut buf: RecvBuf = [0; MAX_FRAME + 1];
        let mut got = transport::recv(sock.as_fd(), &mut buf, false)
            .unwrap_or_else(|e| panic!("no answer to {request:?}: {e}"));
        let (answered, reply) = Reply::decode(&buf[..got.len]).unwrap();
        if answered == id {
            return (reply, got.fds.pop());
        }
    }
}

/// Sends `bytes` as one record with `fds` attached, whatever they are.
fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    let sent = rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags).unwrap();
    assert_eq!(sent, bytes.len());
}

/// A memfd holding `bytes`, with `seals` (none: not sealed at all).
fn memfd_with(bytes: &[u8], seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("channels", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    let mut done = 0;
    while done < bytes.len() {
        done += rustix::io::pwrite(&fd, &bytes[done..], done as u64).unwrap();
    }
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn read_fd(fd: &OwnedFd, size: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size as usize];
    let mut done = 0;
    while done < bytes.len() {
        let n = rustix::io::pread(fd, &mut bytes[done..], done as u64).unwrap();
        assert!(n > 0, "block shorter than its size");
        done += n;
    }
    bytes
}

/// Asks for values of `target`'s table until at least `at_least` new ones were granted: the
/// channel's sending end and the values, lowest first.
fn lease_raw(sock: &OwnedFd, id: &mut u32, target: u32, at_least: usize) -> (OwnedFd, Vec<u32>) {
    let mut channel = None;
    let mut values = Vec::new();
    while values.len() < at_least {
        *id += 1;
        match raw_call(sock, &Request::LeaseInto { target }, *id) {
            (Reply::Granted { start, mask, .. }, Some(fd)) => {
                values.extend(lease_values(start, mask));
                channel.get_or_insert(fd);
            }
            other => panic!("LeaseInto refused: {other:?}"),
        }
    }
    values.sort_unstable();
    (channel.expect("granted"), values)
}

/// Locks `h` in `owner`'s table over the raw connection: its bytes, or the failure's code.
fn lock_raw(sock: &OwnedFd, id: &mut u32, h: u32, owner: u32) -> Result<Vec<u8>, u32> {
    *id += 1;
    let request = Request::Lock {
        handle: h,
        owner,
        write: false,
    };
    match raw_call(sock, &request, *id) {
        (Reply::Block { size }, Some(fd)) => Ok(read_fd(&fd, size)),
        (Reply::Failed { code, .. }, None) => Err(code),
        other => panic!("unexpected answer to {request:?}: {other:?}"),
    }
}

const OWN_BYTES: &[u8] = b"the owner's own block";
const VALID_1: &[u8] = b"a valid block the owner takes off the channel";
const VALID_2: &[u8] = b"a valid block the broker takes off the channel";
const STOLEN: &[u8] = b"a valid block for a value not leased to its sender";
const OVERWRITE: &[u8] = b"a second block for a value already filled";
/// Sixteen bytes: the size every refused frame claims.
const SIXTEEN: &[u8] = b"sixteen bytes!!!";

fn a2_bytes(i: u32) -> Vec<u8> {
    format!("block {i} of the well-behaved leaser").into_bytes()
}

/// Sends, over `channel`, one frame for each way of getting a block wrong, naming `values[0..7]`
/// (leased to the sender), a valid block `valid` for `values[7]` (then another for the same
/// value), and a valid block for each of `foreign` (values not leased to the sender).
fn send_hostile_frames(
    channel: BorrowedFd<'_>,
    values: &[u32],
    foreign: &[u32],
    valid: &[u8],
    dir: &Path,
) {
    assert!(values.len() >= 8, "{values:?}");
    let delivery = |handle: u32, size: usize| {
        Delivery {
            handle,
            tag: 0,
            size: size as u64,
        }
        .encode()
    };
    // A block that would be accepted, were it not for the frame it comes with.
    let sealed = memfd_with(SIXTEEN, SEALS);
    let other_sealed = memfd_with(SIXTEEN, SEALS);
    // (a) a pipe.
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    send_raw(
        channel,
        delivery(values[0], 16).as_bytes(),
        &[pipe_r.as_fd()],
    );
    // (b) a regular file, open for reading and writing.
    let path = dir.join(format!("regular-{:x}", values[1]));
    std::fs::write(&path, SIXTEEN).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    send_raw(channel, delivery(values[1], 16).as_bytes(), &[file.as_fd()]);
    // (c) an unsealed memfd.
    let unsealed = memfd_with(SIXTEEN, SealFlags::empty());
    send_raw(
        channel,
        delivery(values[2], 16).as_bytes(),
        &[unsealed.as_fd()],
    );
    // (c') a sealed memfd, open read-only.
    let read_only = std::fs::File::open(format!("/proc/self/fd/{}", sealed.as_raw_fd())).unwrap();
    send_raw(
        channel,
        delivery(values[3], 16).as_bytes(),
        &[read_only.as_fd()],
    );
    // Garbage, without and with a descriptor.
    send_raw(channel, b"\xde\xad\xbe\xef not a frame at all", &[]);
    send_raw(channel, b"garbage with a good memfd", &[sealed.as_fd()]);
    // (h) the one valid block, then a second one for the same value.
    let good = memfd_with(valid, SEALS);
    send_raw(
        channel,
        delivery(values[7], valid.len()).as_bytes(),
        &[good.as_fd()],
    );
    let again = memfd_with(OVERWRITE, SEALS);
    send_raw(
        channel,
        delivery(values[7], OVERWRITE.len()).as_bytes(),
        &[again.as_fd()],
    );
    // (d) a sealed memfd of another size than claimed, larger and smaller.
    send_raw(
        channel,
        delivery(values[4], 17).as_bytes(),
        &[sealed.as_fd()],
    );
    send_raw(
        channel,
        delivery(values[4], 15).as_bytes(),
        &[sealed.as_fd()],
    );
    // (f) a delivery without a descriptor, and one with a request id.
    send_raw(channel, delivery(values[5], 16).as_bytes(), &[]);
    let mut with_id = delivery(values[5], 16).as_bytes().to_vec();
    with_id[4] = 9;
    send_raw(channel, &with_id, &[sealed.as_fd()]);
    // Two descriptors, five, and a frame longer than any frame.
    send_raw(
        channel,
        delivery(values[6], 16).as_bytes(),
        &[sealed.as_fd(), other_sealed.as_fd()],
    );
    send_raw(
        channel,
        delivery(values[6], 16).as_bytes(),
        &[sealed.as_fd(); 5],
    );
    let mut oversized = delivery(values[6], 16).as_bytes().to_vec();
    oversized.resize(MAX_FRAME + 100, 0);
    send_raw(channel, &oversized, &[sealed.as_fd()]);
    // (e) valid blocks for values not leased to us.
    for &value in foreign {
        let stolen = memfd_with(STOLEN, SEALS);
        send_raw(
            channel,
            delivery(value, STOLEN.len()).as_bytes(),
            &[stolen.as_fd()],
        );
    }
    std::fs::remove_file(&path).unwrap();
}

/// The hostile leaser: leases values of `b`'s table over the raw protocol and sends them every
/// kind of wrong frame, once for the owner to take off the channel, once for the broker (which it
/// makes take them by locking the values itself).
fn hostile_leaser(mut end: End, b: u32, dir: &Path) -> i32 {
    let sock = raw_connect();
    let mut id = 1;
    // Phase 1: the owner takes the frames off the channel.
    let (channel, first) = lease_raw(&sock, &mut id, b, 8);
    send_vec(&mut end, &first);
    let foreign = recv_vec(&mut end);
    send_hostile_frames(channel.as_fd(), &first, &foreign, VALID_1, dir);
    end.send(1);
    // Phase 2: the broker takes them, for our own locks.
    let foreign = recv_vec(&mut end);
    let (_, second) = lease_raw(&sock, &mut id, b, 8);
    assert!(
        second.iter().all(|v| !first.contains(v)),
        "a new lease gave values again"
    );
    send_hostile_frames(channel.as_fd(), &second, &foreign, VALID_2, dir);
    for (i, &value) in second[..8].iter().enumerate() {
        let got = lock_raw(&sock, &mut id, value, b);
        if i == 7 {
            assert_eq!(
                got,
                Ok(VALID_2.to_vec()),
                "the valid block, through the broker"
            );
        } else {
            assert_eq!(
                got,
                Err(codes::ERROR_INVALID_HANDLE),
                "case {i} ({value:#x}), through the broker"
            );
        }
    }
    for &value in &foreign {
        match lock_raw(&sock, &mut id, value, b) {
            Ok(bytes) => assert_ne!(bytes, STOLEN, "{value:#x} was stolen"),
            Err(code) => assert_eq!(code, codes::ERROR_INVALID_HANDLE, "{value:#x}"),
        }
    }
    send_vec(&mut end, &second);
    0
}

/// A hostile leaser — a process that leases values of our table over the raw protocol and sends
/// everything but a block over the channel — fills only the one value it sends a valid block for.
/// Neither its garbage nor its valid blocks for values not leased to it change anything, the
/// well-behaved leaser whose values it named still fills them, no descriptor is left behind in the
/// owner or the broker, and the broker serves throughout.
#[test]
fn a_hostile_leaser_fills_only_its_own_values_and_only_with_blocks() {
    let env = TestEnv::new();
    let me = Pid::current();
    let own = shalloc::alloc(OWN_BYTES, me).unwrap().as_raw();
    let broker = shalloc::broker_pid().unwrap().as_raw();
    let allocs_before = served("alloc");
    let fds_before = procs::open_fds();
    let broker_fds_before = broker_fds(broker);

    // A well-behaved leaser: one block now (so it holds unused values of our table), then as
    // many as we ask for, each time the hostile leaser has tried to take its unused values.
    let (mut a2, mut a2_end) = fork_with_channel(move |mut end| {
        let mut made = 0;
        let mut more = 1;
        while more > 0 {
            for _ in 0..more {
                end.send(shalloc::alloc(&a2_bytes(made), me).unwrap().as_raw());
                made += 1;
            }
            more = end.recv();
        }
        end.wait_closed();
        0
    });
    let mut a2_all = vec![a2_end.recv()];
    let a2_first = a2_all[0];
    let a2_channel = match own_slot(a2_first) {
        State::Reserved { channel, .. } => channel,
        other => panic!("the leaser's first block should still be on its channel: {other:?}"),
    };
    // The values still reserved for the well-behaved leaser's channel, but for `sent`.
    let a2_unused = |sent: u32| {
        let mut values: Vec<u32> = reserved_in_own_table()
            .into_iter()
            .filter(|&(value, channel)| channel == a2_channel && value != sent)
            .map(|(value, _)| value)
            .collect();
        values.sort_unstable();
        assert!(
            !values.is_empty(),
            "the well-behaved leaser holds unused values"
        );
        values
    };
    // It fills exactly the values it was leased, with its own bytes.
    let a2_fill = |a2_end: &mut End, a2_all: &mut Vec<u32>, values: &[u32]| {
        a2_end.send(values.len() as u32);
        let mut got: Vec<u32> = (0..values.len()).map(|_| a2_end.recv()).collect();
        a2_all.extend(&got);
        got.sort_unstable();
        assert_eq!(got, values, "the leaser got the values it was leased");
        for (i, &value) in a2_all.iter().enumerate() {
            assert_eq!(
                bytes_of(value, me, "the well-behaved leaser's block"),
                a2_bytes(i as u32)
            );
        }
    };
    let a2_unused_1 = a2_unused(a2_first);
    // A value nobody leased: far from every value handed out here.
    let far = 4 * 20_000;
    let unleased = if own + far < segment::HANDLE_LIMIT {
        own + far
    } else {
        own - far
    };
    assert_eq!(own_slot(unleased), State::Empty);

    let dir = env.dir.clone();
    let (mut hostile, mut h_end) =
        fork_with_channel(move |end| hostile_leaser(end, me.as_raw(), &dir));
    let leased = recv_vec(&mut h_end);
    assert!(leased.len() >= 8, "{leased:?}");
    for &value in &leased {
        assert!(
            matches!(own_slot(value), State::Reserved { handle, .. } if handle == value),
            "{value:#x} is reserved in our table: {:?}",
            own_slot(value)
        );
    }
    let foreign: Vec<u32> = a2_unused_1.iter().copied().chain([own, unleased]).collect();
    send_vec(&mut h_end, &foreign);
    assert_eq!(h_end.recv(), 1);

    // Phase 1: we take the frames off the channel ourselves.
    assert_eq!(bytes_of(leased[7], me, "the valid block"), VALID_1);
    for (i, &value) in leased[..7].iter().enumerate() {
        expect_invalid(value, me, &format!("phase 1 case {i}"));
    }
    for &value in &a2_unused_1 {
        expect_invalid(value, me, "a value leased to another process");
    }
    expect_invalid(unleased, me, "a value nobody leased");
    assert_eq!(bytes_of(own, me, "our own block"), OWN_BYTES);
    assert_eq!(
        a2_unused(a2_first),
        a2_unused_1,
        "still reserved for their leaser"
    );
    a2_fill(&mut a2_end, &mut a2_all, &a2_unused_1);

    // Phase 2: the broker takes the frames off the channel, for the hostile leaser's own locks;
    // the well-behaved leaser holds a new run of values meanwhile.
    a2_end.send(1);
    let a2_next = a2_end.recv();
    a2_all.push(a2_next);
    let a2_unused_2 = a2_unused(a2_next);
    let foreign: Vec<u32> = [own, a2_first, unleased, leased[7]]
        .into_iter()
        .chain(a2_unused_2.iter().copied())
        .collect();
    send_vec(&mut h_end, &foreign);
    let second = recv_vec(&mut h_end);
    hostile.expect_success();
    assert_eq!(bytes_of(second[7], me, "the valid block"), VALID_2);
    for (i, &value) in second[..7].iter().enumerate() {
        expect_invalid(value, me, &format!("phase 2 case {i}"));
    }
    assert_eq!(bytes_of(own, me, "our own block"), OWN_BYTES);
    assert_eq!(bytes_of(a2_first, me, "a leaser's block"), a2_bytes(0));
    assert_eq!(bytes_of(leased[7], me, "the first valid block"), VALID_1);
    expect_invalid(unleased, me, "a value nobody leased");
    for &value in &a2_unused_2 {
        expect_invalid(value, me, "a value leased to another process");
    }
    a2_fill(&mut a2_end, &mut a2_all, &a2_unused_2);

    // Every block went over a channel; nothing reached the broker as an Alloc.
    assert_eq!(served("alloc"), allocs_before);

    // Clean up, then count descriptors: ours and the broker's are back where they were.
    for value in a2_all.into_iter().chain([leased[7], second[7]]) {
        shalloc::free(handle(value), me).unwrap();
    }
    a2_end.send(0);
    a2_end.close();
    a2.expect_success();
    drop((a2_end, h_end));
    broker_serves(own, me, OWN_BYTES);
    wait_for(
        || {
            format!(
                "we hold {} descriptors, {fds_before} before",
                procs::open_fds()
            )
        },
        || {
            // A call on our own table takes what the broker sent (the channels' ends).
            assert_eq!(bytes_of(own, me, "our own block"), OWN_BYTES);
            procs::open_fds() <= fds_before
        },
    );
    assert_eq!(procs::open_fds(), fds_before, "no descriptor left behind");
    wait_for(
        || {
            let now = broker_fds(broker);
            format!("the broker holds {now} descriptors, {broker_fds_before} before")
        },
        || broker_fds(broker) <= broker_fds_before,
    );
    assert_eq!(listed_handles(me), 1, "only our own block is left");
    assert!(
        reserved_in_own_table().is_empty(),
        "no value of our table stays reserved once its leasers are gone: {:?}",
        reserved_in_own_table()
    );
    shalloc::free(handle(own), me).unwrap();
}

fn flight_bytes(round: u32, i: u32) -> Vec<u8> {
    format!("round {round}, block {i}, sent before its sender died").into_bytes()
}

/// A leaser that puts blocks into our table and dies before we touch any of them: every block is
/// there with its bytes — taken by the broker when the leaser's connection closed (SIGKILL, and we
/// wait for that), or by whoever comes first (a plain exit, and we lock at once).
#[test]
fn blocks_in_flight_when_their_sender_dies_are_all_there() {
    const N: u32 = 20;
    let _env = TestEnv::new();
    let me = Pid::current();
    attach_own_table();
    let allocs_before = served("alloc");
    let fds_before = procs::open_fds();
    for (round, kill) in [(0u32, true), (1, false)] {
        let (mut leaser, mut end) = fork_with_channel(move |mut end| {
            let handles: Vec<u32> = (0..N)
                .map(|i| {
                    shalloc::alloc(&flight_bytes(round, i), me)
                        .unwrap()
                        .as_raw()
                })
                .collect();
            send_vec(&mut end, &handles);
            end.wait_closed();
            0
        });
        let handles = recv_vec(&mut end);
        let reserved = reserved_in_own_table();
        assert!(
            handles
                .iter()
                .all(|h| reserved.iter().any(|(value, _)| value == h)),
            "round {round}: every block is still in flight: {handles:x?} / {reserved:x?}"
        );
        if kill {
            // SAFETY: kill takes plain integers; the pid is our unreaped child's.
            unsafe { libc::kill(leaser.raw(), libc::SIGKILL) };
            assert_eq!(leaser.wait(), 128 + libc::SIGKILL);
            // The broker takes what is on the channel and empties the unused values when the
            // connection closes: once nothing of our table is reserved, it has.
            wait_for(
                || format!("still reserved: {:x?}", reserved_in_own_table()),
                || reserved_in_own_table().is_empty(),
            );
        } else {
            end.close();
            leaser.expect_success();
        }
        for (i, &h) in handles.iter().enumerate() {
            assert_eq!(
                bytes_of(h, me, &format!("round {round}")),
                flight_bytes(round, i as u32)
            );
        }
        for &h in &handles {
            shalloc::free(handle(h), me).unwrap();
        }
    }
    assert_eq!(
        served("alloc"),
        allocs_before,
        "every block went over a channel"
    );
    wait_for(
        || {
            format!(
                "we hold {} descriptors, {fds_before} before",
                procs::open_fds()
            )
        },
        || {
            attach_own_table(); // a call on our table takes what the broker sent
            procs::open_fds() <= fds_before
        },
    );
    assert_eq!(procs::open_fds(), fds_before);
    assert_eq!(listed_handles(me), 0);
    assert!(reserved_in_own_table().is_empty());
}

/// A leaser that used one value of its run and exited: the broker empties the other reserved
/// slots, so we fill our table (limit 32) to exactly its limit, and not one handle more.
#[test]
fn a_dead_leasers_unused_values_are_given_back() {
    const TABLE_LIMIT: u64 = 32;
    let _env = TestEnv::new();
    // SAFETY: nextest runs this test alone in its process and no thread has started yet.
    unsafe { std::env::set_var("SHALLOC_MAX_HANDLES_PER_TABLE", TABLE_LIMIT.to_string()) };
    let me = Pid::current();
    attach_own_table();
    assert_eq!(own_table_states().len() as u64, TABLE_LIMIT);
    let allocs_before = served("alloc");
    let (mut leaser, mut end) = fork_with_channel(move |mut end| {
        end.send(shalloc::alloc(b"one leased block", me).unwrap().as_raw());
        end.wait_closed();
        0
    });
    let h = end.recv();
    let reserved = reserved_in_own_table();
    assert!(
        reserved.len() > 1 && reserved.iter().any(|&(value, _)| value == h),
        "the leaser holds unused values of our table: {reserved:x?}"
    );
    end.close();
    leaser.expect_success();
    wait_for(
        || format!("still reserved: {:x?}", reserved_in_own_table()),
        || reserved_in_own_table().is_empty(),
    );
    assert_eq!(
        served("alloc"),
        allocs_before,
        "the block went over a channel"
    );
    let open = listed_handles(me);
    assert_eq!(open, 1, "the leaser's block is in our table");
    let mut ours = Vec::new();
    for i in 0..TABLE_LIMIT - open {
        match shalloc::alloc(&i.to_le_bytes(), me) {
            Ok(h) => ours.push(h),
            Err(e) => panic!(
                "handle {i} of {} failed: {e:?}; table: {:x?}",
                TABLE_LIMIT - open,
                own_table_states()
            ),
        }
    }
    match shalloc::alloc(b"one too many", me) {
        Err(Error::TooManyHandles { .. }) => {}
        other => panic!("expected TooManyHandles, got {other:?}"),
    }
    assert_eq!(bytes_of(h, me, "the leaser's block"), b"one leased block");
    for (i, h) in ours.into_iter().enumerate() {
        assert_eq!(
            shalloc::lock(h, me).unwrap().to_vec(),
            (i as u64).to_le_bytes()
        );
        shalloc::free(h, me).unwrap();
    }
    shalloc::free(handle(h), me).unwrap();
}

fn round_bytes(round: u32) -> Vec<u8> {
    let mut bytes = round.to_le_bytes().to_vec();
    bytes.resize(4 + (round as usize * 37) % 3000, (round % 251) as u8);
    bytes
}

/// A third process locks a block the allocator sent over its channel into an idle owner's table as
/// soon as it learns the handle, through the broker, 500 times over; the owner makes no call at
/// all. Nothing is left once the third process freed them all.
///
/// The broker tells the idle owner of every block it takes off the channel (an `Adopt` frame with
/// the block's descriptor) and of every new lease, and a lease it cannot tell the owner of is
/// refused. So once the owner's socket is full (about 300 frames with the default socket buffer),
/// the allocator falls back to allocating through the broker, which gives the same answers. Only
/// the first [`ALL_OVER_THE_CHANNEL`] rounds are required to go over the channel.
#[test]
fn a_third_process_locks_a_block_sent_over_a_channel_at_once() {
    const ROUNDS: u32 = 500;
    const ALL_OVER_THE_CHANNEL: u32 = 200;
    let _env = TestEnv::new();
    let (mut owner, mut owner_end) = fork_with_channel(|mut end| {
        attach_own_table();
        end.send(1);
        end.wait_closed();
        0
    });
    assert_eq!(owner_end.recv(), 1);
    let b = owner.pid();
    let allocs_before = served("alloc");
    let leases_before = served("lease-into");
    let (mut allocator, mut a_end) = fork_with_channel(move |mut end| {
        for round in 0..ROUNDS {
            end.send(shalloc::alloc(&round_bytes(round), b).unwrap().as_raw());
            assert_eq!(end.recv(), round);
        }
        0
    });
    let started = Instant::now();
    for round in 0..ROUNDS {
        let h = handle(a_end.recv());
        let view = shalloc::lock_read_only(h, b)
            .unwrap_or_else(|e| panic!("round {round}: {h} in {b}: {e:?}"));
        assert_eq!(view.to_vec(), round_bytes(round), "round {round}");
        drop(view);
        shalloc::free(h, b).unwrap();
        if round + 1 == ALL_OVER_THE_CHANNEL {
            assert_eq!(
                served("alloc"),
                allocs_before,
                "the first {ALL_OVER_THE_CHANNEL} blocks all went over the channel"
            );
        }
        a_end.send(round);
    }
    let elapsed = started.elapsed();
    allocator.expect_success();
    let (allocs, leases) = (
        served("alloc") - allocs_before,
        served("lease-into") - leases_before,
    );
    eprintln!(
        "{ROUNDS} rounds in {elapsed:?}: {leases} leases asked for, {} blocks over the channel, \
         {allocs} through the broker",
        ROUNDS as u64 - allocs
    );
    let listing = shalloc::admin::listing(false).unwrap().unwrap();
    assert_eq!(listing.broker.handles, 0, "{listing:?}");
    assert_eq!(listed_handles(b), 0);
    owner_end.close();
    owner.expect_success();
}

/// The broker, stopped (SIGSTOP) until this is dropped.
struct StoppedBroker(libc::pid_t);

impl StoppedBroker {
    fn stop() -> StoppedBroker {
        let pid = shalloc::broker_pid().unwrap().as_raw() as libc::pid_t;
        // SAFETY: kill takes plain integers; the pid is this test's own broker.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let stopped = StoppedBroker(pid);
        common::wait_until(LIMIT, || procs::state(pid) == Some('T'));
        stopped
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A process that holds a lease into another process's table (unused values, an open channel)
/// and allocates into it after it exited gets the same error as for a process it never leased
/// from: while the broker cannot have noticed the exit yet (it is stopped: the leaser must not
/// send into the dead process's channel, which the broker still holds open), then while both are
/// zombies, then once both are reaped.
#[test]
fn allocating_into_a_leased_process_that_exited_fails_as_without_a_lease() {
    let _env = TestEnv::new();
    let (mut target, mut t_end) = fork_with_channel(|mut end| {
        attach_own_table();
        end.send(1);
        end.wait_closed();
        0
    });
    assert_eq!(t_end.recv(), 1);
    let (mut never, mut n_end) = fork_with_channel(|mut end| {
        end.send(1);
        end.wait_closed();
        0
    });
    assert_eq!(n_end.recv(), 1);
    let allocs_before = served("alloc");
    shalloc::alloc(b"leased", target.pid()).unwrap();
    let (t, n) = (target.pid(), never.pid());
    let inherited = [&t_end, &n_end].map(|end| end.w.as_ref().unwrap().as_raw_fd());
    let (mut leaser, mut l_end) = fork_with_channel(move |mut end| {
        // Only the test may close these, so that the target and the other process exit.
        inherited.into_iter().for_each(procs::close_in_child);
        shalloc::alloc(b"leased by the child", t).unwrap();
        end.send(1);
        assert_eq!(end.recv(), 2);
        // The broker is stopped now: a call that reaches it gives up after this long.
        // SAFETY: this forked child runs one thread.
        unsafe { std::env::set_var("SHALLOC_TIMEOUT_MS", "300") };
        let code = |r: shalloc::Result<Handle>| r.map_or_else(|e| e.code(), |_| 0);
        end.send(code(shalloc::alloc(b"into a process that exited", t)));
        end.send(code(shalloc::alloc(b"into a process that exited", n)));
        end.wait_closed();
        0
    });
    assert_eq!(l_end.recv(), 1);
    assert_eq!(
        served("alloc"),
        allocs_before,
        "the blocks went over a channel"
    );
    let stopped = StoppedBroker::stop();
    t_end.close();
    n_end.close();
    target.wait_until_zombie();
    never.wait_until_zombie();
    l_end.send(2);
    let (leased, plain) = (l_end.recv(), l_end.recv());
    drop(stopped);
    l_end.close();
    leaser.expect_success();
    assert_ne!(
        leased, 0,
        "a block was sent into the channel of a process that had exited"
    );
    assert_eq!(
        leased, plain,
        "with a lease, and without (the broker is stopped)"
    );
    let same = |leased: Error, plain: Error, when: &str| {
        assert_eq!(
            std::mem::discriminant(&leased),
            std::mem::discriminant(&plain),
            "{when}: with a lease {leased:?}, without {plain:?}"
        );
        assert_eq!(leased.code(), plain.code(), "{when}");
        leased
    };
    let zombie = same(
        shalloc::alloc(b"into a zombie", target.pid()).unwrap_err(),
        shalloc::alloc(b"into a zombie", never.pid()).unwrap_err(),
        "zombies",
    );
    assert!(matches!(zombie, Error::AccessDenied { .. }), "{zombie:?}");
    assert_eq!(target.wait(), 0);
    assert_eq!(never.wait(), 0);
    let gone = same(
        shalloc::alloc(b"into nobody", target.pid()).unwrap_err(),
        shalloc::alloc(b"into nobody", never.pid()).unwrap_err(),
        "reaped",
    );
    assert!(matches!(gone, Error::NoSuchProcess { .. }), "{gone:?}");
}

fn tagged(tag: u32) -> Vec<u8> {
    format!("block tagged {tag}").into_bytes()
}

/// A leaser forks: the child (which inherited the lease's values and channel) allocates into the
/// same table through its own connection and lease, and the parent goes on with its own. Every
/// block is there with its bytes under a distinct handle.
#[test]
fn a_forked_leaser_and_its_child_both_fill_the_table() {
    const EACH: u32 = 5;
    let _env = TestEnv::new();
    let (mut owner, mut owner_end) = fork_with_channel(|mut end| {
        attach_own_table();
        end.send(1);
        let me = Pid::current();
        let mut checked = 0;
        loop {
            let h = end.recv();
            if h == 0 {
                break;
            }
            let tag = end.recv();
            assert_eq!(bytes_of(h, me, &format!("tag {tag}")), tagged(tag));
            shalloc::free(handle(h), me).unwrap();
            checked += 1;
        }
        end.send(checked);
        end.wait_closed();
        0
    });
    assert_eq!(owner_end.recv(), 1);
    let b = owner.pid();
    let allocs_before = served("alloc");
    let leases_before = served("lease-into");
    let mut blocks = vec![(shalloc::alloc(&tagged(0), b).unwrap().as_raw(), 0)];
    let (mut child, mut c_end) = fork_with_channel(move |mut end| {
        for i in 0..EACH {
            end.send(shalloc::alloc(&tagged(100 + i), b).unwrap().as_raw());
        }
        end.wait_closed();
        0
    });
    for i in 1..=EACH {
        blocks.push((shalloc::alloc(&tagged(i), b).unwrap().as_raw(), i));
    }
    for i in 0..EACH {
        blocks.push((c_end.recv(), 100 + i));
    }
    c_end.close();
    child.expect_success();
    let mut values: Vec<u32> = blocks.iter().map(|&(h, _)| h).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), blocks.len(), "distinct handles: {blocks:x?}");
    assert_eq!(
        served("alloc"),
        allocs_before,
        "every block went over a channel"
    );
    assert!(
        served("lease-into") >= leases_before + 2,
        "the child leased for itself"
    );
    for &(h, tag) in &blocks {
        owner_end.send(h);
        owner_end.send(tag);
    }
    owner_end.send(0);
    assert_eq!(owner_end.recv(), blocks.len() as u32);
    owner_end.close();
    owner.expect_success();
}

/// The listing shows a block sent over a channel in its owner's table before the owner made any
/// call (the broker takes it off the channel to list it); the owner then finds it too.
#[test]
fn the_listing_shows_a_block_sent_over_a_channel_before_its_owner_looks() {
    const BYTES: &[u8] = b"listed before its owner looked";
    let _env = TestEnv::new();
    let (mut owner, mut owner_end) = fork_with_channel(|mut end| {
        attach_own_table();
        end.send(1);
        let h = end.recv();
        let me = Pid::current();
        assert_eq!(bytes_of(h, me, "the block"), BYTES);
        shalloc::free(handle(h), me).unwrap();
        end.send(1);
        end.wait_closed();
        0
    });
    assert_eq!(owner_end.recv(), 1);
    let b = owner.pid();
    let allocs_before = served("alloc");
    let h = shalloc::alloc(BYTES, b).unwrap().as_raw();
    let listing = shalloc::admin::listing(true).unwrap().unwrap();
    let table = listing
        .tables
        .iter()
        .find(|t| t.pid == b.as_raw())
        .unwrap_or_else(|| panic!("no table of {b} listed: {listing:?}"));
    assert_eq!(table.handles, 1, "{table:?}");
    assert_eq!(table.bytes, BYTES.len() as u64, "{table:?}");
    assert!(
        table
            .entries
            .iter()
            .any(|e| e.handle == h && e.size == BYTES.len() as u64),
        "{h:#x} is listed: {table:?}"
    );
    assert_eq!(listing.broker.handles, 1, "{:?}", listing.broker);
    assert_eq!(
        served("alloc"),
        allocs_before,
        "the block went over a channel"
    );
    owner_end.send(h);
    assert_eq!(owner_end.recv(), 1);
    assert_eq!(listed_handles(b), 0);
    owner_end.close();
    owner.expect_success();
}

/// `PTRACE_GET_SYSCALL_INFO`.
const GET_SYSCALL_INFO: libc::c_uint = 0x420e;
/// `F_GET_SEALS`: the owner calls it on a block it took off a channel, before the slot swap.
const F_GET_SEALS: u64 = 1034;

/// Seizes `pid`, runs `before_resuming`, and lets it run until it enters `fcntl(_, F_GET_SEALS)`:
/// it then holds a block it took off a channel and has not put in its slot yet. It stays stopped
/// until [`detach`].
fn stop_at_get_seals(pid: libc::pid_t, before_resuming: impl FnOnce()) {
    // SAFETY: ptrace and waitpid on our own child, with buffers sized for what they write.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, pid, 0, libc::PTRACE_O_TRACESYSGOOD),
            0
        );
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
        assert_eq!(libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, 0), 0);
        before_resuming();
        loop {
            assert_eq!(libc::waitpid(pid, &mut status, libc::__WALL), pid);
            assert!(libc::WIFSTOPPED(status), "{status:#x}");
            let sig = libc::WSTOPSIG(status);
            if sig == libc::SIGTRAP | 0x80 {
                let mut info = [0u64; 16];
                let size = std::mem::size_of_val(&info);
                let n = libc::ptrace(GET_SYSCALL_INFO, pid, size, info.as_mut_ptr());
                assert!(n > 0);
                // op 1 = syscall entry; then arch, ip, sp, nr, args.
                let entry = info[0] & 0xff == 1;
                if entry && info[3] == libc::SYS_fcntl as u64 && info[5] == F_GET_SEALS {
                    return;
                }
                assert_eq!(libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, 0), 0);
            } else {
                // A group stop or a signal: pass signals on.
                let deliver = if (status >> 16) != 0 { 0 } else { sig };
                assert_eq!(libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, deliver), 0);
            }
        }
    }
}

fn detach(pid: libc::pid_t) {
    // SAFETY: detaching a tracee we seized.
    unsafe { assert_eq!(libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0), 0) };
}

/// An owner that attached its table, then locks the handle it is sent and reports 1 (right bytes)
/// or 2 (an error).
fn stoppable_owner() -> (Child, End) {
    fork_with_channel(|mut end| {
        let me = Pid::current();
        shalloc::free(shalloc::alloc(b"attach", me).unwrap(), me).unwrap();
        end.send(1);
        let h = end.recv();
        let ok = match shalloc::lock(handle(h), me) {
            Ok(view) => u32::from(view.to_vec() == b"the block"),
            Err(_) => 2,
        };
        end.send(ok);
        end.wait_closed();
        0
    })
}

/// An owner stopped holding a block it took off a channel, and the leaser that sent it.
struct Stopped {
    owner: Child,
    owner_end: End,
    leaser: Child,
    leaser_end: End,
    h: u32,
}

/// Starts an owner and a leaser; the leaser sends the owner a block over its channel, and the
/// owner, told the handle, is stopped between taking it off the channel and its slot.
fn owner_stopped_holding_a_block() -> Stopped {
    let (owner, mut owner_end) = stoppable_owner();
    assert_eq!(owner_end.recv(), 1);
    let b = owner.pid();
    let (leaser, mut leaser_end) = fork_with_channel(move |mut end| {
        end.send(shalloc::alloc(b"the block", b).unwrap().as_raw());
        end.wait_closed();
        0
    });
    let h = leaser_end.recv();
    // (No listing before this: a listing takes blocks off channels, and the owner must.)
    stop_at_get_seals(owner.raw(), || owner_end.send(h));
    Stopped {
        owner,
        owner_end,
        leaser,
        leaser_end,
        h,
    }
}

/// Whether thread `tid` of this process is blocked in `poll` or `ppoll` (waiting for the broker's
/// reply).
fn polling(tid: libc::pid_t) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"));
    let number = syscall
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok());
    number.is_some_and(|n| n == libc::SYS_poll || n == libc::SYS_ppoll)
}

#[test]
fn a_third_process_waits_for_an_owner_stopped_between_channel_and_slot() {
    let _env = TestEnv::new();
    let Stopped {
        mut owner,
        mut owner_end,
        mut leaser,
        mut leaser_end,
        h,
    } = owner_stopped_holding_a_block();
    let b = owner.pid();
    // The owner is stopped with the block in its hands. Our lock must wait for it, not fail.
    let tid = std::sync::Arc::new(AtomicU64::new(0));
    let locker = {
        let tid = std::sync::Arc::clone(&tid);
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() } as u64, Ordering::SeqCst);
            shalloc::lock_read_only(handle(h), b).map(|view| view.to_vec())
        })
    };
    wait_for(
        || "the locking thread never waited for the broker".into(),
        || {
            let t = tid.load(Ordering::SeqCst) as libc::pid_t;
            locker.is_finished() || (t != 0 && polling(t))
        },
    );
    assert!(
        !locker.is_finished(),
        "the lock was answered while the owner held the block: {:?}",
        locker.join()
    );
    detach(owner.raw());
    let third = locker.join().unwrap();
    assert_eq!(third.as_deref().ok(), Some(&b"the block"[..]), "{third:?}");
    assert_eq!(owner_end.recv(), 1, "the owner lost its block");
    assert_eq!(served("alloc"), 0, "the block did not go over the channel");
    leaser_end.close();
    leaser.expect_success();
    owner_end.close();
    owner.expect_success();
}

#[test]
fn a_leaser_that_exits_while_the_owner_holds_its_block_does_not_take_the_slot_away() {
    let _env = TestEnv::new();
    let Stopped {
        mut owner,
        mut owner_end,
        mut leaser,
        mut leaser_end,
        h,
    } = owner_stopped_holding_a_block();
    let b = owner.pid();
    let connections = || {
        shalloc::admin::listing(false)
            .unwrap()
            .unwrap()
            .broker
            .connections
    };
    let before = connections();
    leaser_end.close();
    leaser.expect_success();
    // The broker has seen the leaser's connection close, and tried to end its channel.
    wait_for(
        || "the broker never saw the leaser leave".into(),
        || connections() < before,
    );
    detach(owner.raw());
    assert_eq!(
        owner_end.recv(),
        1,
        "a handle whose alloc returned was lost"
    );
    assert_eq!(bytes_of(h, b, "after the owner resumed"), b"the block");
    owner_end.close();
    owner.expect_success();
}

#[test]
fn a_leaser_keeps_no_descriptors_for_targets_that_exited() {
    let _env = TestEnv::new();
    attach_own_table();
    let mut counts = Vec::new();
    for round in 0..70u32 {
        let (mut target, mut end) = fork_with_channel(|mut end| {
            attach_own_table();
            end.send(1);
            let h = end.recv();
            let ok = shalloc::lock(handle(h), Pid::current()).is_ok_and(|v| v.to_vec() == b"lease");
            end.send(u32::from(ok));
            0
        });
        assert_eq!(end.recv(), 1);
        let h = shalloc::alloc(b"lease", target.pid()).unwrap();
        end.send(h.as_raw());
        assert_eq!(
            end.recv(),
            1,
            "round {round}: the target did not get its block"
        );
        target.expect_success();
        counts.push(procs::open_fds());
    }
    assert_eq!(served("alloc"), 0, "the blocks did not go over channels");
    // Each round leaves at most the lease of its own (exited) target until the next lease, and
    // the one before it while the broker's word on the blocks it held comes over its channel.
    let early = counts[..5].iter().copied().max().unwrap_or(0);
    assert!(
        counts.iter().all(|&c| c <= early),
        "descriptors piled up with dead targets: {counts:?}"
    );
}
