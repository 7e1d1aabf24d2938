//! Differential test against Wine: one C program (`tests/wine/differential.c`) runs the same
//! single-process scenarios once against shlwapi.dll under Wine (built with mingw, the functions
//! loaded by ordinal) and once against libshalloc, and both print one normalized line per
//! observation. The outputs must agree line by line, except for the differences DESIGN.md §1
//! chooses on purpose, listed in [`INTENDED`].
//!
//! Needs `wine` and `x86_64-w64-mingw32-gcc` (Debian: `apt-get install wine64
//! gcc-mingw-w64-x86-64`); without them the test fails rather than skips. The Wine prefix is made
//! once (about 10 s, ~700 MB) under the system temp directory, one per user, and reused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::TestEnv;

const MINGW: &str = "x86_64-w64-mingw32-gcc";
const INSTALL_HINT: &str = "install Wine and mingw with \
     `apt-get install wine64 gcc-mingw-w64-x86-64` (the binaries are `wine` and \
     `x86_64-w64-mingw32-gcc`); .ci/run installs them";

/// Differences DESIGN.md §1 makes on purpose, as (the line Wine prints, the line shalloc prints).
/// Any other difference fails the test, and so does an entry here that no longer shows up (either
/// side changed: look again before editing the list).
const INTENDED: &[(&str, &str)] = &[
    // (1) Lock and free with a pid that names no process (0 is none either): Wine's shlwapi cannot
    // open the process and reports ERROR_INVALID_HANDLE (6); shalloc reports
    // ERROR_INVALID_PARAMETER (87), as alloc and map do in both.
    ("lock_pid0 ret=null err=6", "lock_pid0 ret=null err=87"),
    (
        "lock_no_such_pid ret=null err=6",
        "lock_no_such_pid ret=null err=87",
    ),
    ("free_pid0 ret=0 err=6", "free_pid0 ret=0 err=87"),
    (
        "free_no_such_pid ret=0 err=6",
        "free_no_such_pid ret=0 err=87",
    ),
    // (2) A successful alloc: Wine sets the last error to 0 (ERROR_SUCCESS); shalloc leaves it
    // untouched, as every other successful call does in both.
    (
        "alloc_data16 ret=nonnull err=0",
        "alloc_data16 ret=nonnull err=untouched",
    ),
    (
        "alloc_size0 ret=nonnull err=0",
        "alloc_size0 ret=nonnull err=untouched",
    ),
    (
        "alloc_size0_nulldata ret=nonnull err=0",
        "alloc_size0_nulldata ret=nonnull err=untouched",
    ),
    (
        "alloc_nulldata64 ret=nonnull err=0",
        "alloc_nulldata64 ret=nonnull err=untouched",
    ),
    (
        "lock_alloc ret=nonnull err=0",
        "lock_alloc ret=nonnull err=untouched",
    ),
    (
        "survive_alloc ret=nonnull err=0",
        "survive_alloc ret=nonnull err=untouched",
    ),
    (
        "map_alloc ret=nonnull err=0",
        "map_alloc ret=nonnull err=untouched",
    ),
    (
        "pid_alloc ret=nonnull err=0",
        "pid_alloc ret=nonnull err=untouched",
    ),
];

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wine/differential.c")
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// The path of `program` found in `PATH`, if any.
fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// What a finished child left behind; its output went to files, not pipes, so that a process it
/// leaves running (wineserver) cannot keep the test waiting for end of file.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    /// The standard output of a successful run; fails the test with everything otherwise.
    fn ok(self, what: &str) -> String {
        assert!(
            self.status.success(),
            "{what}: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// Runs `cmd` (stdin empty, stdout and stderr into files `<out>.out`/`<out>.err`) and waits for it
/// at most `limit`. On overrun it kills the child by its pid, runs `on_overrun` (to stop what the
/// child started) and fails the test.
fn run(cmd: &mut Command, out: &Path, limit: Duration, on_overrun: impl FnOnce()) -> Finished {
    let out_path = out.with_extension("out");
    let err_path = out.with_extension("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // Child::kill sends SIGKILL to this child's pid, and wait reaps it.
            let _ = child.kill();
            let _ = child.wait();
            on_overrun();
            panic!(
                "{cmd:?} did not finish within {limit:?}; output so far:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// The per-user directory holding the cached Wine prefix, made private on first use. Refuses a
/// directory that someone else owns or others can enter: it runs code in our name.
fn wine_cache_dir() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("shalloc-wine-{uid}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot create {}: {e}", dir.display()),
    }
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(
        meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0,
        "{} must be a directory owned by uid {uid} with mode 0700; remove it",
        dir.display()
    );
    dir
}

/// Holds the cache's lock file exclusively (until dropped), so that runs sharing the prefix take
/// turns: making a prefix, and a wineserver of a prefix, are not for two runs at once.
fn lock_cache(dir: &Path, limit: Duration) -> File {
    let file = File::create(dir.join("lock")).unwrap();
    let deadline = Instant::now() + limit;
    while rustix::fs::flock(
        file.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "another run held {} for {limit:?}",
            dir.join("lock").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    file
}

/// A command for Wine's tools with the test's prefix: quiet, headless, and without the Mono and
/// Gecko installers a new prefix would otherwise try to run.
fn wine_command(program: &str, prefix: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    cmd
}

/// Stops the prefix's wineserver and every Wine process of the prefix (after an overrun).
fn kill_wineserver(prefix: &Path, out: &Path) {
    let _ = run(
        wine_command("wineserver", prefix).arg("-k"),
        out,
        Duration::from_secs(10),
        || {},
    );
}

/// Runs `exe` under Wine in the cached prefix and returns its standard output.
fn run_under_wine(env: &TestEnv, exe: &Path) -> String {
    let cache = wine_cache_dir();
    let _lock = lock_cache(&cache, Duration::from_secs(15));
    let prefix = cache.join("prefix");
    let ready = cache.join("prefix-ready");
    if prefix.exists() && !ready.exists() {
        // A run was stopped while Wine was making the prefix: start over.
        std::fs::remove_dir_all(&prefix).unwrap();
    }
    let started = Instant::now();
    let wine = run(
        wine_command("wine", &prefix).arg(exe),
        &env.dir.join("wine"),
        Duration::from_secs(45),
        || kill_wineserver(&prefix, &env.dir.join("wineserver-k")),
    );
    let wine_time = started.elapsed();
    // Let the wineserver save the prefix and exit (it lingers ~2 s after its last client), so
    // the next run starts from a whole prefix and nothing of ours outlives the test.
    let _ = run(
        wine_command("wineserver", &prefix).arg("-w"),
        &env.dir.join("wineserver-w"),
        Duration::from_secs(10),
        || kill_wineserver(&prefix, &env.dir.join("wineserver-k")),
    )
    .ok("wineserver -w");
    let stdout = wine.ok(&format!(
        "{} under Wine (prefix {}; if it is broken, remove it)",
        exe.display(),
        prefix.display()
    ));
    if !ready.exists() {
        File::create(&ready).unwrap();
    }
    eprintln!(
        "wine run took {:.1} s (prefix {})",
        wine_time.as_secs_f64(),
        prefix.display()
    );
    stdout
}

/// A directory with the `libshalloc.so` under test, by both the link name and the SONAME.
fn library_dir(env: &TestEnv) -> PathBuf {
    let library = common::target_dir().join("libshalloc.so");
    assert!(
        library.is_file(),
        "{} is missing: run `cargo build` first",
        library.display()
    );
    let dir = env.dir.join("lib");
    std::fs::create_dir(&dir).unwrap();
    for name in ["libshalloc.so", "libshalloc.so.0"] {
        std::os::unix::fs::symlink(&library, dir.join(name)).unwrap();
    }
    dir
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(|l| l.trim_end_matches('\r')).collect()
}

/// Both outputs side by side: ` ` agree, `~` an intended difference, `!` a difference.
fn side_by_side(wine: &[&str], ours: &[&str]) -> String {
    let width = wine.iter().map(|l| l.len()).max().unwrap_or(0).max(4);
    let mut text = format!("  {:width$} | shalloc\n", "Wine");
    for i in 0..wine.len().max(ours.len()) {
        let w = wine.get(i).copied().unwrap_or("<missing>");
        let o = ours.get(i).copied().unwrap_or("<missing>");
        let mark = if w == o {
            ' '
        } else if INTENDED.contains(&(w, o)) {
            '~'
        } else {
            '!'
        };
        text.push_str(&format!("{mark} {w:width$} | {o}\n"));
    }
    text
}

#[test]
fn shalloc_matches_wine_shlwapi() {
    let env = TestEnv::new();
    let missing: Vec<_> = ["wine", "wineserver", MINGW]
        .into_iter()
        .filter(|p| find_in_path(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "{} not found in PATH: {INSTALL_HINT}",
        missing.join(", ")
    );

    let exe_windows = env.dir.join("differential.exe");
    run(
        Command::new(MINGW)
            .args(["-O1", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&exe_windows)
            .arg(source()),
        &env.dir.join("mingw"),
        Duration::from_secs(15),
        || {},
    )
    .ok("mingw build");

    let lib = library_dir(&env);
    let exe_linux = env.dir.join("differential");
    run(
        Command::new("cc")
            .args(["-O1", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(include_dir())
            .arg("-o")
            .arg(&exe_linux)
            .arg(source())
            .arg("-L")
            .arg(&lib)
            .arg("-lshalloc")
            .arg(format!("-Wl,-rpath,{}", lib.display())),
        &env.dir.join("cc"),
        Duration::from_secs(15),
        || {},
    )
    .ok("Linux build");

    // The broker it starts lives in the test's private runtime dir (TestEnv's environment).
    let ours = run(
        &mut Command::new(&exe_linux),
        &env.dir.join("linux"),
        Duration::from_secs(10),
        || {},
    )
    .ok("the Linux build");
    let wine = run_under_wine(&env, &exe_windows);

    let (wine, ours) = (lines(&wine), lines(&ours));
    let table = side_by_side(&wine, &ours);
    assert_eq!(
        wine.last().copied(),
        Some("done"),
        "the Wine run stopped early\n{table}"
    );
    let unexpected: Vec<_> = wine
        .iter()
        .zip(&ours)
        .filter(|&(w, o)| w != o && !INTENDED.contains(&(*w, *o)))
        .collect();
    assert!(
        unexpected.is_empty() && wine.len() == ours.len(),
        "shalloc differs from Wine beyond the intended differences (marked !, intended ~):\n{table}"
    );
    let stale: Vec<_> = INTENDED
        .iter()
        .filter(|pair| !wine.iter().zip(&ours).any(|(w, o)| (*w, *o) == **pair))
        .collect();
    assert!(
        stale.is_empty(),
        "intended differences that no longer occur: {stale:#?}\n{table}"
    );
    eprintln!("{table}");
}
