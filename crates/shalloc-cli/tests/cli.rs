//! The command as shell users and operators meet it, against a real broker in a test-private
//! runtime directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../shalloc/tests/common/mod.rs"]
mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, wait_until};

const LIMIT: Duration = Duration::from_secs(20);

fn shalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shalloc"))
}

/// Runs to completion within LIMIT (killed by pid otherwise), feeding `input` to stdin.
fn run(cmd: &mut Command, input: &[u8]) -> Output {
    common::run_limited(cmd, Some(input), LIMIT)
}

fn ok(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.starts_with("shalloc: "),
        "a clear reason on stderr: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
}

#[test]
fn put_and_get_round_trip_through_files_and_pipes() {
    let env = TestEnv::new();
    let me = std::process::id().to_string();
    let data = pattern(3 * 1024 * 1024 + 7);
    let input = env.dir.join("in.bin");
    std::fs::write(&input, &data).unwrap();

    let handle = String::from_utf8(ok(&run(
        shalloc().args(["put", "--to", &me]).arg(&input),
        b"",
    )))
    .unwrap();
    let handle = handle.trim();
    assert!(handle.starts_with("0x"), "{handle}");
    let output = env.dir.join("out.bin");
    ok(&run(
        shalloc()
            .args(["get", handle, "--from", &me, "-o"])
            .arg(&output),
        b"",
    ));
    assert!(
        std::fs::read(&output).unwrap() == data,
        "file round trip is byte-exact"
    );

    // stdin to stdout, and a decimal handle.
    let piped = String::from_utf8(ok(&run(shalloc().args(["put", "--to", &me]), &data))).unwrap();
    let decimal = u32::from_str_radix(piped.trim().trim_start_matches("0x"), 16)
        .unwrap()
        .to_string();
    let back = ok(&run(
        shalloc().args(["get", &decimal, "--from", &me, "--free"]),
        b"",
    ));
    assert!(back == data, "pipe round trip is byte-exact");

    let err = failed(&run(shalloc().args(["get", &decimal, "--from", &me]), b""));
    assert!(err.contains("invalid handle"), "get after --free: {err}");
    ok(&run(shalloc().args(["free", handle, "--from", &me]), b""));
    let err = failed(&run(shalloc().args(["free", handle, "--from", &me]), b""));
    assert!(err.contains("invalid handle"), "{err}");
}

#[test]
fn put_into_a_missing_process_and_bad_handles_fail_clearly() {
    let _env = TestEnv::new();
    let err = failed(&run(shalloc().args(["put", "--to", "2147483000"]), b"x"));
    assert!(err.contains("no such process"), "{err}");
    // Usage errors are clap's: exit code 2 and the reason.
    let out = run(shalloc().args(["get", "0", "--from", "1"]), b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a handle"));
    let err = failed(&run(
        shalloc().args(["map", "0x1234", "--from", "0", "--to", "1"]),
        b"",
    ));
    assert!(err.contains("no such process"), "{err}");
}

#[test]
fn map_duplicates_into_another_table() {
    let env = TestEnv::new();
    let me = std::process::id().to_string();
    let h = String::from_utf8(ok(&run(shalloc().args(["put", "--to", &me]), b"mapped"))).unwrap();
    let new = String::from_utf8(ok(&run(
        shalloc().args(["map", h.trim(), "--from", &me, "--to", &me]),
        b"",
    )))
    .unwrap();
    assert_ne!(h.trim(), new.trim());
    assert_eq!(
        ok(&run(
            shalloc().args(["get", new.trim(), "--from", &me]),
            b""
        )),
        b"mapped"
    );
    drop(env);
}

#[test]
fn ls_json_shows_the_block_and_stop_ends_the_broker() {
    let env = TestEnv::new();
    let me = std::process::id();
    let h = String::from_utf8(ok(&run(
        shalloc().args(["put", "--to", &me.to_string()]),
        b"12345",
    )))
    .unwrap();
    let handle = u32::from_str_radix(h.trim().trim_start_matches("0x"), 16).unwrap();

    let json: serde_json::Value =
        serde_json::from_slice(&ok(&run(shalloc().args(["ls", "--json"]), b""))).unwrap();
    let broker_pid = env.running_broker().unwrap();
    assert_eq!(json["broker"]["pid"], broker_pid);
    assert_eq!(json["broker"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["broker"]["uptime_ms"].is_u64());
    assert_eq!(json["broker"]["requests"]["alloc"]["count"], 1);
    let tables = json["tables"].as_array().unwrap();
    let mine = tables
        .iter()
        .find(|t| t["pid"] == me)
        .expect("our table is listed");
    assert_eq!(mine["bytes"], 5);
    assert_eq!(
        mine["command"],
        std::fs::read_to_string("/proc/self/comm").unwrap().trim()
    );
    let entry = &mine["handles"][0];
    assert_eq!(entry["handle"], handle);
    assert_eq!(entry["size"], 5);
    let seals: Vec<&str> = entry["seals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(seals, ["shrink", "grow", "seal"]);

    let text = String::from_utf8(ok(&run(shalloc().args(["ls", "-v"]), b""))).unwrap();
    assert!(text.contains(h.trim()), "{text}");

    ok(&run(shalloc().arg("stop"), b""));
    wait_until(Duration::from_secs(5), || env.running_broker().is_none());
    assert!(
        !env.rendezvous().socket().exists(),
        "a stopped broker removes its socket"
    );
    let text = String::from_utf8(ok(&run(shalloc().arg("ls"), b""))).unwrap();
    assert!(
        text.contains("no broker is running"),
        "ls does not start a broker: {text}"
    );
    failed(&run(shalloc().arg("stop"), b""));
}

#[test]
fn broker_takes_a_socket_from_the_service_manager() {
    let env = TestEnv::new();
    let r = env.rendezvous();
    // Made the way systemd's ListenSequentialPacket= makes it.
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    rustix::net::bind(
        &sock,
        &rustix::net::SocketAddrUnix::new(r.socket()).unwrap(),
    )
    .unwrap();
    rustix::net::listen(&sock, 16).unwrap();
    let raw = sock.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" broker --runtime-dir "$1""#);
    cmd.arg(env!("CARGO_BIN_EXE_shalloc"))
        .arg(&env.dir)
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it puts the listening socket at fd 3 in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let mut broker = cmd.spawn().unwrap();
    drop(sock);
    let me = std::process::id().to_string();
    let h =
        String::from_utf8(ok(&run(shalloc().args(["put", "--to", &me]), b"activated"))).unwrap();
    assert_eq!(
        env.running_broker(),
        Some(broker.id()),
        "the activated broker serves, none was started"
    );
    assert_eq!(
        ok(&run(shalloc().args(["get", h.trim(), "--from", &me]), b"")),
        b"activated"
    );
    // SAFETY: kill takes plain integers; the pid is our child's.
    unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + LIMIT;
    while broker.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the broker did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(broker.wait().unwrap().success(), "SIGTERM is a clean exit");
    assert!(
        r.socket().exists(),
        "the socket belongs to the service manager and stays"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let _env = TestEnv::new();
    let man = String::from_utf8(ok(&run(shalloc().arg("manpage"), b""))).unwrap();
    assert!(
        man.contains(".TH shalloc 1") && man.contains("put") && man.contains("broker"),
        "{man}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let text =
            String::from_utf8(ok(&run(shalloc().args(["completions", shell]), b""))).unwrap();
        assert!(
            text.contains("shalloc") && text.contains("put"),
            "{shell}: {text}"
        );
    }
    for sub in ["put", "get", "free", "map", "ls", "stop", "broker", "demo"] {
        let help = String::from_utf8(ok(&run(shalloc().args([sub, "--help"]), b""))).unwrap();
        assert!(help.contains("Usage: shalloc"), "{sub} --help: {help}");
    }
}

#[test]
fn demo_hands_a_block_to_another_process() {
    let _env = TestEnv::new();
    let out = String::from_utf8(ok(&run(shalloc().arg("demo"), b""))).unwrap();
    assert!(
        out.contains("locked it with my own pid: 64 bytes, \"hello from the parent\""),
        "{out}"
    );
    assert!(out.contains("freed"), "{out}");
    assert!(
        out.contains("my view now reads: \"HELLO BACK FROM CHILD\""),
        "{out}"
    );
}

/// Waits for a child with a deadline; kills it (by pid) and fails if it overruns.
fn wait_child(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_foreground_broker_logs_to_stderr_and_exits_cleanly_on_sigterm() {
    let env = TestEnv::new();
    let log = env.dir.join("stderr.log");
    let mut broker = shalloc()
        .args(["broker", "-v", "--runtime-dir"])
        .arg(&env.dir)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_until(LIMIT, || {
        env.running_broker() == Some(broker.id()) && env.rendezvous().socket().exists()
    });
    let me = std::process::id().to_string();
    ok(&run(shalloc().args(["put", "--to", &me]), b"x"));
    assert_eq!(
        env.running_broker(),
        Some(broker.id()),
        "clients use the running broker"
    );
    // SAFETY: kill takes plain integers; the pid is our child's.
    unsafe { libc::kill(broker.id() as i32, libc::SIGTERM) };
    assert!(
        wait_child(&mut broker, LIMIT).success(),
        "SIGTERM is a clean exit"
    );
    assert!(!env.rendezvous().socket().exists(), "the socket is removed");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("INFO") && text.contains("listening on"),
        "{text}"
    );
    assert!(
        text.contains("DEBUG") && text.contains("Alloc"),
        "-v logs every request: {text}"
    );
    assert!(text.contains("signal received"), "{text}");
}

#[test]
fn a_broker_started_on_demand_exits_when_idle() {
    let env = TestEnv::new();
    let me = std::process::id().to_string();
    let h = String::from_utf8(ok(&run(
        shalloc()
            .args(["put", "--to", &me])
            .env("SHALLOC_IDLE_EXIT_SECS", "1"),
        b"x",
    )))
    .unwrap();
    let first = env.running_broker().expect("a broker was started");
    // It holds a table (ours): it must stay, idle time or not, until the table is gone.
    let json = String::from_utf8(ok(&run(shalloc().args(["ls", "--json"]), b""))).unwrap();
    assert!(json.contains(&format!("\"pid\": {first}")), "{json}");
    ok(&run(shalloc().args(["free", h.trim(), "--from", &me]), b""));
    wait_until(Duration::from_secs(10), || env.running_broker().is_none());
    assert!(!env.rendezvous().socket().exists());
    let log = std::fs::read_to_string(env.rendezvous().log_file()).unwrap();
    assert!(log.contains("idle for"), "{log}");
    // The next client starts a new one.
    ok(&run(shalloc().args(["put", "--to", &me]), b"again"));
    assert!(env.running_broker().is_some_and(|pid| pid != first));
}

#[test]
fn large_transfers_show_no_progress_in_a_pipe() {
    let env = TestEnv::new();
    let me = std::process::id().to_string();
    let big = vec![7u8; 65 * 1024 * 1024];
    let out = run(shalloc().args(["put", "--to", &me]), &big);
    let h = String::from_utf8(ok(&out)).unwrap();
    assert!(
        out.stderr.is_empty(),
        "stderr is a pipe: no progress bar: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        shalloc()
            .args(["get", h.trim(), "--from", &me, "--free", "-o"])
            .arg(env.dir.join("big")),
        b"",
    );
    ok(&out);
    assert!(out.stderr.is_empty());
    assert_eq!(
        std::fs::metadata(env.dir.join("big")).unwrap().len(),
        big.len() as u64
    );
}

#[test]
fn large_transfers_show_progress_on_a_terminal() {
    let env = TestEnv::new();
    let file = env.dir.join("big.bin");
    std::fs::write(&file, vec![3u8; 65 * 1024 * 1024]).unwrap();
    // `script` runs the command on a pseudo-terminal, as a person at a shell would.
    let command = format!(
        "{} put --to {} {} 2>&1 >/dev/null",
        env!("CARGO_BIN_EXE_shalloc"),
        std::process::id(),
        file.display()
    );
    let out = run(
        Command::new("script").args(["-qec", &command, "/dev/null"]),
        b"",
    );
    let text = String::from_utf8_lossy(&ok(&out)).into_owned();
    assert!(
        text.contains("reading [") && text.contains("100%") && text.contains("65 / 65 MiB"),
        "{text:?}"
    );
}
