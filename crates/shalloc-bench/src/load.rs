//! Broker throughput with many client processes (`--throughput`), beside a raw `SOCK_SEQPACKET`
//! echo server, and memory per live handle in the client and in the broker (`--memory`).
//!
//! Every client is this executable again (`--load-client SYSTEM`), with a Unix stream socket on
//! its stdin that carries the go frames (a `Work` header whose size is the number of requests)
//! and the answers (the client's elapsed nanoseconds). The echo server is this executable too
//! (`--echo-server PATH`); it exits when its stdin closes.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketType};

use crate::common::{Header, Kind, Result, Spawned, recv_ack, recv_header, send_ack, test_data};
use crate::floor;

/// The hidden flag that starts a throughput client.
pub const LOAD_CLIENT_FLAG: &str = "--load-client";
/// The hidden flag that starts the echo server.
pub const ECHO_SERVER_FLAG: &str = "--echo-server";
/// The environment variable that tells an echo client where the server listens.
const ECHO_SOCKET_ENV: &str = "SHALLOC_BENCH_ECHO_SOCKET";
/// The size of an echo frame.
const FRAME: usize = 16;
/// The client counts of `--throughput`.
const CLIENTS: [usize; 3] = [1, 4, 16];
/// Requests per client in the warm-up round that sizes the measured round.
const WARMUP_REQUESTS: u64 = 200;
/// How long the measured round should take.
const TARGET: Duration = Duration::from_secs(1);
/// Handles allocated by `--memory`.
const HANDLES: usize = 10_000;
/// Their size.
const HANDLE_SIZE: usize = 64;

/// What a throughput client does per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSystem {
    /// `shalloc::lock` of a handle in the client's own table, then drop of the view: one broker
    /// round trip that carries the block's descriptor back.
    Shalloc,
    /// `send` + `recv` of a 16-byte frame to the raw `SOCK_SEQPACKET` echo server.
    Echo,
}

impl LoadSystem {
    /// The name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            LoadSystem::Shalloc => "shalloc",
            LoadSystem::Echo => "echo",
        }
    }

    /// The system with this name.
    pub fn from_name(name: &str) -> Option<LoadSystem> {
        [LoadSystem::Shalloc, LoadSystem::Echo]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// A child process with a control socket; killed by its pid if it has not exited when dropped.
struct Proc {
    child: Spawned,
    ctl: Option<UnixStream>,
}

impl Proc {
    /// Starts `exe ARGS` with a control socket on its stdin and waits for its "ready".
    fn spawn(exe: &Path, args: &[&std::ffi::OsStr], envs: &[(&str, &Path)]) -> Result<Proc> {
        let (ctl, theirs) = UnixStream::pair()?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let proc = Proc {
            child: Spawned::new(cmd.spawn()?),
            ctl: Some(ctl),
        };
        recv_ack(proc.ctl()?)?;
        Ok(proc)
    }

    fn ctl(&self) -> Result<&UnixStream> {
        self.ctl
            .as_ref()
            .ok_or_else(|| "control socket closed".into())
    }

    /// Closes the control socket (after a `Quit` frame) and waits a second for the exit, then
    /// kills the process by its pid.
    fn shutdown(&mut self) -> Result<()> {
        if let Some(ctl) = self.ctl.take() {
            let quit = Header {
                size: 0,
                arg: 0,
                kind: Kind::Quit,
            };
            let _ = floor::write_all(ctl.as_fd(), &quit.encode());
        }
        self.child.finish("a load process", Duration::from_secs(1))
    }
}

/// Releases every client at once with `count` requests each; returns the total requests per
/// second, from the release to the last answer.
fn round(clients: &[Proc], count: u64) -> Result<f64> {
    let go = Header {
        size: count,
        arg: 0,
        kind: Kind::Work,
    }
    .encode();
    let start = Instant::now();
    for c in clients {
        floor::write_all(c.ctl()?.as_fd(), &go)?;
    }
    for c in clients {
        recv_ack(c.ctl()?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((count * clients.len() as u64) as f64 / secs)
}

/// Runs `n` clients of `system`: a warm-up round sizes a measured round of about [`TARGET`].
fn throughput_of(system: LoadSystem, n: usize, exe: &Path, echo_path: &Path) -> Result<f64> {
    let args = [LOAD_CLIENT_FLAG.as_ref(), system.name().as_ref()];
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Proc::spawn(exe, &args, &[(ECHO_SOCKET_ENV, echo_path)])?);
    }
    let warm = round(&clients, WARMUP_REQUESTS)?;
    let count = ((warm * TARGET.as_secs_f64() / n as f64) as u64).max(WARMUP_REQUESTS);
    let rate = round(&clients, count)?;
    for c in &mut clients {
        c.shutdown()?;
    }
    Ok(rate)
}

/// `--throughput`: requests per second with 1, 4 and 16 client processes, shalloc beside the
/// echo server. `runtime_dir` is the private broker's directory; the echo socket goes there too.
pub fn run_throughput(exe: &Path, runtime_dir: &Path) -> Result<()> {
    let echo_path = runtime_dir.join("echo.sock");
    let mut server = Proc::spawn(exe, &[ECHO_SERVER_FLAG.as_ref(), echo_path.as_ref()], &[])?;
    let mut rows = Vec::new();
    for n in CLIENTS {
        let shalloc = throughput_of(LoadSystem::Shalloc, n, exe, &echo_path)?;
        let echo = throughput_of(LoadSystem::Echo, n, exe, &echo_path)?;
        eprintln!("{n:2} clients: shalloc {shalloc:.0} req/s, echo {echo:.0} req/s");
        rows.push((n, shalloc, echo));
    }
    server.shutdown()?;
    println!();
    println!("shalloc = lock(h, bench) + drop of the view: a handle in the bench process's table,");
    println!(
        "  so every lock is one broker round trip carrying an fd (own-table locks need none);"
    );
    println!("echo = send + recv of {FRAME} B on SOCK_SEQPACKET to a single-threaded poll server");
    println!();
    println!("| clients | shalloc req/s | echo req/s | shalloc/echo |");
    println!("| ---: | ---: | ---: | ---: |");
    for (n, shalloc, echo) in rows {
        println!(
            "| {n} | {shalloc:.0} | {echo:.0} | {:.2}× |",
            shalloc / echo.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}

/// A throughput client: sets up, says ready, then runs rounds until told to quit.
pub fn run_load_client(system: LoadSystem) -> Result<()> {
    let ctl = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    // The handle lives in the bench process's table (our parent, alive throughout): a lock of a
    // handle in our own table would not reach the broker at all.
    let owner = shalloc::Pid::from_raw(
        rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32),
    );
    let mut handle = None;
    let mut sock = None;
    match system {
        LoadSystem::Shalloc => handle = Some(shalloc::alloc(&[0u8; HANDLE_SIZE], owner)?),
        LoadSystem::Echo => {
            let path = std::env::var_os(ECHO_SOCKET_ENV).ok_or("no echo socket given")?;
            let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)?;
            rustix::net::connect(&fd, &SocketAddrUnix::new(Path::new(&path))?)?;
            sock = Some(fd);
        }
    }
    send_ack(&ctl, 0)?;
    let frame = [7u8; FRAME];
    let mut buf = [0u8; 64];
    while let Some((header, _)) = recv_header(&ctl)? {
        if header.kind != Kind::Work {
            break;
        }
        let start = Instant::now();
        for _ in 0..header.size {
            if let Some(h) = handle {
                let view = shalloc::lock(h, owner)?;
                std::hint::black_box(view.len());
                drop(view);
            } else if let Some(fd) = &sock {
                rustix::net::send(fd, &frame, SendFlags::empty())?;
                let (got, _) = rustix::net::recv(fd, &mut buf, RecvFlags::empty())?;
                if got != FRAME {
                    return Err(format!("echo answered {got} bytes").into());
                }
            }
        }
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        send_ack(&ctl, ns)?;
    }
    if let Some(h) = handle {
        shalloc::free(h, owner)?;
    }
    Ok(())
}

/// The echo server: one thread, `poll` over its stdin, the listener and the clients; echoes every
/// frame back; exits when stdin closes or says quit.
pub fn run_echo_server(path: &Path) -> Result<()> {
    let ctl = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None)?;
    rustix::net::bind(&listener, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&listener, 128)?;
    send_ack(&ctl, 0)?;
    let mut clients: Vec<OwnedFd> = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let (ctl_ready, accept, ready) = {
            let mut fds = Vec::with_capacity(clients.len() + 2);
            fds.push(PollFd::new(&ctl, PollFlags::IN));
            fds.push(PollFd::new(&listener, PollFlags::IN));
            fds.extend(clients.iter().map(|c| PollFd::new(c, PollFlags::IN)));
            match rustix::event::poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<usize> = fds[2..]
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(i, _)| i)
                .collect();
            (
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                ready,
            )
        };
        if ctl_ready {
            break;
        }
        let mut gone = Vec::new();
        for i in ready {
            match rustix::net::recv(&clients[i], &mut buf, RecvFlags::empty()) {
                Ok((0, _)) | Err(_) => gone.push(i),
                Ok((n, _)) => {
                    if rustix::net::send(&clients[i], &buf[..n], SendFlags::empty()).is_err() {
                        gone.push(i);
                    }
                }
            }
        }
        for i in gone.into_iter().rev() {
            clients.swap_remove(i);
        }
        if accept {
            clients.push(rustix::net::accept(&listener)?);
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// VmRSS of `pid` (`self` for this process) in KiB.
fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .ok_or("empty VmRSS line")?
        .parse()?;
    Ok(kib)
}

/// The `Shmem` and `Slab` lines of /proc/meminfo in KiB: system-wide, so only a rough account of
/// the kernel memory behind the blocks (their pages are in no process's RSS until mapped).
fn kernel_kib() -> Result<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> Result<u64> {
        let line = info
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc/meminfo"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("empty meminfo line")?
            .parse()?)
    };
    Ok((field("Shmem:")?, field("Slab:")?))
}

/// The number of open descriptors of `pid`.
fn fds(pid: &str) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// `--memory`: the broker's RSS and descriptors, and this client's RSS, per live 64 B handle.
pub fn run_memory() -> Result<()> {
    let broker = shalloc::broker_pid()?.as_raw().to_string();
    let me = shalloc::Pid::current();
    let data = test_data(HANDLE_SIZE);
    // Warm up the connection and both sides' tables so the baseline holds them.
    let warm: Vec<_> = (0..100)
        .map(|_| shalloc::alloc(&data, me))
        .collect::<shalloc::Result<_>>()?;
    for h in warm {
        shalloc::free(h, me)?;
    }
    let (b_rss0, b_fds0, c_rss0, c_fds0) = (
        rss_kib(&broker)?,
        fds(&broker)?,
        rss_kib("self")?,
        fds("self")?,
    );
    let (shmem0, slab0) = kernel_kib()?;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(HANDLES);
    for _ in 0..HANDLES {
        handles.push(shalloc::alloc(&data, me)?);
    }
    let alloc_secs = started.elapsed().as_secs_f64();
    let (shmem1, slab1) = kernel_kib()?;
    let (b_rss1, b_fds1, c_rss1, c_fds1) = (
        rss_kib(&broker)?,
        fds(&broker)?,
        rss_kib("self")?,
        fds("self")?,
    );
    for h in handles {
        shalloc::free(h, me)?;
    }
    let (b_rss2, b_fds2) = (rss_kib(&broker)?, fds(&broker)?);
    let per = |before: u64, after: u64| (after as f64 - before as f64) * 1024.0 / HANDLES as f64;
    let per_fd = |before: usize, after: usize| (after as f64 - before as f64) / HANDLES as f64;
    println!(
        "{HANDLES} live handles of {HANDLE_SIZE} B in this process's own table ({alloc_secs:.2} s to allocate):"
    );
    println!("| process | RSS before | RSS with handles | per handle | fds per handle |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| broker | {b_rss0} KiB | {b_rss1} KiB | {:.0} B | {:.2} |",
        per(b_rss0, b_rss1),
        per_fd(b_fds0, b_fds1)
    );
    println!(
        "| client | {c_rss0} KiB | {c_rss1} KiB | {:.0} B | {:.2} |",
        per(c_rss0, c_rss1),
        per_fd(c_fds0, c_fds1)
    );
    println!(
        "kernel, system-wide (/proc/meminfo): Shmem {:.0} B and Slab {:.0} B per handle",
        per(shmem0, shmem1),
        per(slab0, slab1)
    );
    println!(
        "after freeing them all: broker RSS {b_rss2} KiB, {} fds more than before",
        b_fds2 as i64 - b_fds0 as i64
    );
    Ok(())
}
