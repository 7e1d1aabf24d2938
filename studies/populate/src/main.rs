//! Populate study (issue 5, §3: "MAP_POPULATE on or off by measurement"): receiver read, writer
//! create, and two-process hand-off, variants interleaved in one run. A measurement program, not
//! product code: it panics on any failure.
//!
//! Usage: `cargo run --release -- [recv|write|handoff|all] [sizes in KiB, comma separated]`
//! (from `studies/populate/`). Results and conclusions: BENCHMARKS.md.
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use std::hint::black_box;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::time::Instant;

const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

fn minflt() -> i64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

fn memfd() -> OwnedFd {
    rustix::fs::memfd_create("study", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap()
}

fn pwrite_all(fd: &OwnedFd, mut data: &[u8]) {
    let mut off = 0u64;
    while !data.is_empty() {
        let n = rustix::io::pwrite(fd, data, off).unwrap();
        data = &data[n..];
        off += n as u64;
    }
}

fn seal(fd: &OwnedFd) {
    rustix::fs::fcntl_add_seals(fd, SEALS).unwrap();
}

unsafe fn map(fd: BorrowedFd, len: usize, prot: ProtFlags, flags: MapFlags) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks; the caller unmaps it.
    unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            MapFlags::SHARED | flags,
            fd,
            0,
        )
    }
    .unwrap() as *mut u8
}

fn madv(p: *mut u8, len: usize, advice: i32) {
    let r = unsafe { libc::madvise(p.cast(), len, advice) };
    assert_eq!(
        r,
        0,
        "madvise {advice}: {}",
        std::io::Error::last_os_error()
    );
}

fn sum(p: *const u8, len: usize) -> u64 {
    let s = unsafe { std::slice::from_raw_parts(p as *const u64, len / 8) };
    s.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

fn iters(len: usize) -> usize {
    match len {
        l if l <= 64 << 10 => 2000,
        l if l <= 1 << 20 => 400,
        l if l <= 16 << 20 => 40,
        _ => 15,
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 10_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

fn size_name(len: usize) -> String {
    if len >= 1 << 20 {
        format!("{} MiB", len >> 20)
    } else {
        format!("{} KiB", len >> 10)
    }
}

/// Runs `variants` interleaved (order rotated each iteration) and prints medians.
fn run<R>(title: &str, len: usize, names: &[&str], mut f: impl FnMut(usize) -> R, base: usize) {
    let n = iters(len);
    let warm = 2.max(n / 20);
    let k = names.len();
    let mut times = vec![Vec::with_capacity(n); k];
    let mut faults = vec![0i64; k];
    for it in 0..warm + n {
        for j in 0..k {
            let v = (it + j) % k;
            let f0 = minflt();
            let t = Instant::now();
            let r = black_box(f(v));
            let dt = t.elapsed().as_nanos() as u64;
            let df = minflt() - f0;
            drop(r); // outside the timed part (e.g. an fd whose close frees the pages)
            if it >= warm {
                times[v].push(dt);
                faults[v] += df;
            }
        }
    }
    let meds: Vec<u64> = times.iter_mut().map(|t| median(t)).collect();
    println!("## {title} {} ({n} iters/variant)", size_name(len));
    for v in 0..k {
        println!(
            "  {:<34} {:>10}  x{:.2}  faults/iter {:>7}",
            names[v],
            fmt_ns(meds[v]),
            meds[v] as f64 / meds[base] as f64,
            faults[v] / n as i64
        );
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 1) as u8).collect()
}

fn recv(len: usize) {
    let data = pattern(len);
    let fd = memfd();
    pwrite_all(&fd, &data);
    seal(&fd);
    let expect = sum(data.as_ptr(), len);
    drop(data);
    let keep = unsafe { map(fd.as_fd(), len, ProtFlags::READ, MapFlags::empty()) };
    assert_eq!(sum(keep, len), expect);
    let names = [
        "R  plain",
        "R  MAP_POPULATE",
        "R  MADV_POPULATE_READ",
        "RW plain",
        "RW MAP_POPULATE",
        "RW MADV_POPULATE_READ",
        "R  kept mapping (sum only)",
    ];
    run(
        "recv map+sum+unmap",
        len,
        &names,
        |v| {
            if v == 6 {
                return sum(keep, len);
            }
            let prot = if v < 3 {
                ProtFlags::READ
            } else {
                ProtFlags::READ | ProtFlags::WRITE
            };
            let flags = if v % 3 == 1 {
                MapFlags::POPULATE
            } else {
                MapFlags::empty()
            };
            let p = unsafe { map(fd.as_fd(), len, prot, flags) };
            if v % 3 == 2 {
                madv(p, len, libc::MADV_POPULATE_READ);
            }
            let s = sum(p, len);
            unsafe { rustix::mm::munmap(p.cast(), len).unwrap() };
            assert_eq!(s, expect);
            s
        },
        0,
    );
}

fn write(len: usize) {
    let data = pattern(len);
    let names = [
        "a memfd+pwrite",
        "b memfd+fallocate+pwrite",
        "c ftruncate+mmap+memcpy",
        "d ftruncate+mmap(POPULATE)+memcpy",
        "e fallocate+mmap+memcpy (alloc_with)",
        "f fallocate+mmap(POPULATE)+memcpy",
        "g fallocate+mmap+POPULATE_WRITE+cpy",
        "h ftruncate+mmap+POPULATE_WRITE+cpy",
        "a' memfd+pwrite incl. close",
        "i fallocate only (no data)",
        "j fallocate+mmap+POPULATE_WRITE, no cpy",
    ];
    run(
        "write create..seal",
        len,
        &names,
        |v| write_variant(v, len, &data),
        0,
    );
}

fn write_variant(v: usize, len: usize, data: &[u8]) -> Option<OwnedFd> {
    {
        let fd = memfd();
        match v {
            0 | 8 => pwrite_all(&fd, &data),
            9 => rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).unwrap(),
            1 => {
                rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).unwrap();
                pwrite_all(&fd, &data);
            }
            _ => {
                if matches!(v, 2 | 3 | 7) {
                    rustix::fs::ftruncate(&fd, len as u64).unwrap();
                } else {
                    rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).unwrap();
                }
                let flags = if matches!(v, 3 | 5) {
                    MapFlags::POPULATE
                } else {
                    MapFlags::empty()
                };
                let p = unsafe { map(fd.as_fd(), len, ProtFlags::READ | ProtFlags::WRITE, flags) };
                if matches!(v, 6 | 7 | 10) {
                    madv(p, len, libc::MADV_POPULATE_WRITE);
                }
                if v != 10 {
                    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, len) };
                }
                unsafe { rustix::mm::munmap(p.cast(), len).unwrap() };
            }
        }
        seal(&fd);
        if v == 8 {
            drop(fd);
            None
        } else {
            Some(fd) // closed after the timer stops
        }
    }
}

// ---- two-process hand-off (floor-like) ----

fn send_fd(sock: BorrowedFd, byte: u8, fd: BorrowedFd) {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&[byte])],
        &mut cmsg,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
}

fn recv_fd(sock: BorrowedFd) -> Option<(u8, OwnedFd)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut b = [0u8; 1];
    let r = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut b)],
        &mut cmsg,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    if r.bytes == 0 {
        return None;
    }
    let mut out = None;
    for m in cmsg.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = m {
            out = fds.next();
        }
    }
    Some((b[0], out.expect("no fd")))
}

fn peer(sock: OwnedFd) -> ! {
    while let Some((mode, fd)) = recv_fd(sock.as_fd()) {
        let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
        let mode = if mode == 4 { 0 } else { mode };
        let flags = if mode == 1 {
            MapFlags::POPULATE
        } else {
            MapFlags::empty()
        };
        let p = unsafe { map(fd.as_fd(), len, ProtFlags::READ | ProtFlags::WRITE, flags) };
        if mode == 2 {
            madv(p, len, libc::MADV_POPULATE_READ);
        }
        let s = sum(p, len);
        unsafe { rustix::mm::munmap(p.cast(), len).unwrap() };
        if mode == 3 {
            rustix::io::write(&sock, &s.to_ne_bytes()).unwrap();
            drop(fd);
        } else {
            drop(fd);
            rustix::io::write(&sock, &s.to_ne_bytes()).unwrap();
        }
    }
    unsafe { libc::_exit(0) }
}

fn handoff(sizes: &[usize]) {
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(a);
        peer(b);
    }
    drop(b);
    for &len in sizes {
        let data = pattern(len);
        let expect = sum(data.as_ptr(), len);
        let names = [
            "B plain mmap (floor)",
            "B MAP_POPULATE",
            "B MADV_POPULATE_READ",
            "B plain, acks before close",
            "B plain mmap (floor, 2nd copy: noise)",
        ];
        run(
            "handoff A:memfd+pwrite+seal+send, B:map+sum+unmap+close",
            len,
            &names,
            |v| {
                let fd = memfd();
                pwrite_all(&fd, &data);
                seal(&fd);
                send_fd(a.as_fd(), v as u8, fd.as_fd());
                drop(fd);
                let mut buf = [0u8; 8];
                let mut got = 0;
                while got < 8 {
                    got += rustix::io::read(&a, &mut buf[got..]).unwrap();
                }
                assert_eq!(u64::from_ne_bytes(buf), expect);
                0
            },
            0,
        );
    }
    drop(a);
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("all");
    let sizes: Vec<usize> = args
        .get(2)
        .map(|s| {
            s.split(',')
                .map(|k| k.parse::<usize>().unwrap() << 10)
                .collect()
        })
        .unwrap_or(vec![64 << 10, 1 << 20, 16 << 20, 256 << 20]);
    for f in [
        "/sys/kernel/mm/transparent_hugepage/shmem_enabled",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        println!(
            "# {f}: {}",
            std::fs::read_to_string(f).unwrap_or_default().trim()
        );
    }
    if what == "one" {
        // one write variant (index) repeated, for perf: one V KiB N
        let v: usize = args[3].parse().unwrap();
        let n: usize = args[4].parse().unwrap();
        let data = pattern(sizes[0]);
        for _ in 0..n {
            drop(write_variant(v, sizes[0], &data));
        }
        return;
    }
    let t = Instant::now();
    if what == "recv" || what == "all" {
        sizes.iter().for_each(|&l| recv(l));
    }
    if what == "write" || what == "all" {
        sizes.iter().for_each(|&l| write(l));
    }
    if what == "handoff" || what == "all" {
        handoff(&sizes);
    }
    println!("# wall {:.1} s", t.elapsed().as_secs_f64());
}
