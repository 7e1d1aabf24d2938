//! The C ABI, tested from C: each test compiles one of the programs in `tests/c/` against
//! `include/shalloc.h` and the built library (`libshalloc.so` through a `libshalloc.so.0` symlink, or
//! `libshalloc.a`), runs one of its cases in the test's private shalloc world, and requires exit
//! status 0, a final `PASS <case>` line and no `FAIL` line. The programs print one line per check
//! and stop at the first failed one, naming the check, the value returned, `shalloc_last_error()`
//! and `shalloc_last_error_message()`.
//!
//! Needs `cargo build` first (for `target/<profile>/shalloc`, `libshalloc.so`, `libshalloc.a`), gcc,
//! and `cargo nextest run` (one process per test). The uid tests need root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::TestEnv;

/// How long one program may run before it (and everything it started) is killed.
const LIMIT: Duration = Duration::from_secs(60);

/// Where the C sources live.
fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c")
}

/// The directory holding `shalloc.h`.
fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// `-lshalloc` against `libshalloc.so`, found at run time as `libshalloc.so.0` (its SONAME).
    Shared,
    /// `libshalloc.a` linked into the program.
    Static,
}

/// A directory holding `libshalloc.so` and `libshalloc.so.0`, both symlinks to the built library.
fn shared_lib_dir(env: &TestEnv) -> PathBuf {
    let built = env.target_dir.join("libshalloc.so");
    assert!(
        built.is_file(),
        "{} is missing: run `cargo build` first",
        built.display()
    );
    let dir = env.dir.join("lib");
    if !dir.is_dir() {
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&built, dir.join("libshalloc.so")).unwrap();
        std::os::unix::fs::symlink(&built, dir.join("libshalloc.so.0")).unwrap();
    }
    dir
}

/// Compiles `tests/c/<source>.c` into the test's directory and returns the executable.
fn compile(env: &TestEnv, source: &str, link: Link) -> PathBuf {
    let exe = env.dir.join(format!("{source}-{link:?}").to_lowercase());
    let mut gcc = Command::new("gcc");
    gcc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(include_dir())
        .arg(c_dir().join(format!("{source}.c")))
        .arg("-o")
        .arg(&exe);
    match link {
        Link::Shared => {
            let lib = shared_lib_dir(env);
            gcc.arg(format!("-L{}", lib.display()))
                .arg("-lshalloc")
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .arg("-pthread");
        }
        Link::Static => {
            let archive = env.target_dir.join("libshalloc.a");
            assert!(
                archive.is_file(),
                "{} is missing: run `cargo build` first",
                archive.display()
            );
            // What `rustc --print native-static-libs` asks for.
            gcc.arg(archive)
                .args([
                    "-lgcc_s",
                    "-lutil",
                    "-lrt",
                    "-lpthread",
                    "-lm",
                    "-ldl",
                    "-lc",
                ])
                .arg("-pthread");
        }
    }
    let out = gcc.output().expect("cannot run gcc");
    assert!(
        out.status.success(),
        "gcc failed on {source}.c ({link:?}):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// What a program did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }

    /// Requires exit status 0, a final `PASS <case> (...)` line and no `FAIL` line.
    fn assert_passed(&self, case: &str) {
        let pass = format!("PASS {case} (");
        assert!(
            self.status.success()
                && self.last_line().starts_with(&pass)
                && !self.stdout.lines().any(|l| l.starts_with("FAIL")),
            "case {case} failed\n{}",
            self.report()
        );
    }

    /// Requires these lines (checks that must have run) in the output.
    fn assert_lines(&self, lines: &[&str]) {
        for line in lines {
            assert!(
                self.stdout.lines().any(|l| l == *line),
                "missing line {line:?}\n{}",
                self.report()
            );
        }
    }
}

/// Runs `exe` with `args` (and `vars` on top of the test's environment), killing it and its whole
/// process group if it overruns `limit`. Output goes to files, so a chatty program never blocks.
fn run_with(
    env: &TestEnv,
    exe: &Path,
    args: &[&str],
    vars: &[(&str, &str)],
    limit: Duration,
) -> Run {
    let tag = format!(
        "{}-{}",
        exe.file_name().unwrap().to_string_lossy(),
        args.join("-")
    );
    let out_path = env.dir.join(format!("{tag}.stdout"));
    let err_path = env.dir.join(format!("{tag}.stderr"));
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0);
    let mut child = cmd.spawn().expect("cannot start the C program");
    let group = i32::try_from(child.id()).unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Whatever happened, nothing the program forked or spawned may outlive it (the broker it may
    // have started is in a session of its own, and TestEnv ends it).
    // SAFETY: kill takes plain integers; `group` is the process group this test created.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let timed_out = status.is_none();
    let status = match status {
        Some(status) => status,
        None => child.wait().unwrap(),
    };
    let run = Run {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(
        !timed_out,
        "{} {args:?} did not finish within {limit:?}; killed\n{}",
        exe.display(),
        run.report()
    );
    run
}

/// Compiles `source` (linked to libshalloc.so), runs `case` in a fresh test environment, and
/// requires it to pass. Returns the run for further checks.
fn case(source: &str, case: &str) -> Run {
    let env = TestEnv::new();
    let exe = compile(&env, source, Link::Shared);
    let run = run_with(&env, &exe, &[case], &[], LIMIT);
    run.assert_passed(case);
    run
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A uid case: passes as root, and says SKIP (and is not counted as a pass) otherwise.
fn root_case(source: &str, name: &str) -> Option<Run> {
    if is_root() {
        return Some(case(source, name));
    }
    let env = TestEnv::new();
    let exe = compile(&env, source, Link::Shared);
    let run = run_with(&env, &exe, &[name], &[], LIMIT);
    assert!(
        run.status.success() && run.last_line().starts_with("SKIP"),
        "{}",
        run.report()
    );
    eprintln!("skipped {name}: needs root");
    None
}

// ---- linking ------------------------------------------------------------------------------------

#[test]
fn shared_library_is_found_by_its_soname_and_starts_the_broker() {
    let env = TestEnv::new();
    let exe = compile(&env, "own_table", Link::Shared);
    assert!(env.running_broker().is_none());
    let run = run_with(&env, &exe, &["linkage"], &[], LIMIT);
    run.assert_passed("linkage");
    let lib = shared_lib_dir(&env).join("libshalloc.so.0");
    run.assert_lines(&[&format!("SHAllocShared is in {}", lib.display())]);
    assert!(
        env.running_broker().is_some(),
        "the C program's first call started a broker"
    );
}

#[test]
fn static_library_links_and_works() {
    let env = TestEnv::new();
    let own = compile(&env, "own_table", Link::Static);
    let run = run_with(&env, &own, &["linkage"], &[], LIMIT);
    run.assert_passed("linkage");
    run.assert_lines(&[&format!("SHAllocShared is in {}", own.display())]);
    for name in ["basics", "two_views", "unlock_rules", "map_handle"] {
        run_with(&env, &own, &[name], &[], LIMIT).assert_passed(name);
    }
    let cross = compile(&env, "cross", Link::Static);
    for name in ["exec_parent_table", "exec_child_table", "fork_child_table"] {
        run_with(&env, &cross, &[name], &[], LIMIT).assert_passed(name);
    }
    let stress = compile(&env, "stress", Link::Static);
    run_with(&env, &stress, &["threads"], &[], LIMIT).assert_passed("threads");
}

// ---- the own table --------------------------------------------------------------------------------

#[test]
fn alloc_lock_unlock_free_in_own_table() {
    case("own_table", "basics").assert_lines(&[
        "ok main: the view holds the bytes copied at alloc",
        "ok main: lock after free fails with ERROR_INVALID_HANDLE",
    ]);
}

#[test]
fn zero_size_blocks_work() {
    case("own_table", "zero_size").assert_lines(&[
        "ok main: lock of an empty block gives a non-NULL pointer",
        "ok main: free of an empty block's handle returns TRUE",
    ]);
}

#[test]
fn null_data_gives_a_zero_filled_block() {
    case("own_table", "null_data").assert_lines(&["ok main: all 12411 bytes are zero"]);
}

#[test]
fn two_locks_give_distinct_views_of_the_same_bytes() {
    case("own_table", "two_views").assert_lines(&[
        "ok main: a write through the first view is seen through the second",
        "ok main: a write through the second view is seen through the first",
    ]);
}

#[test]
fn free_keeps_live_views_and_a_second_free_fails() {
    case("own_table", "free_keeps_views").assert_lines(&[
        "ok main: the first view is writable after free",
        "ok main: a second free of the handle fails with ERROR_INVALID_HANDLE",
    ]);
}

#[test]
fn handle_values_are_distinct_below_2_31_and_not_reused_soon() {
    case("own_table", "handle_values")
        .assert_lines(&["ok main: 200 allocs after a free never reuse the freed value"]);
}

#[test]
fn map_handle_in_own_table() {
    case("own_table", "map_handle").assert_lines(&[
        "ok main: both handles lock the same bytes",
        "ok main: SHMapHandle with access 0 works",
        "ok main: DUPLICATE_CLOSE_SOURCE closed the source",
        "ok main: SHMapHandle of an unknown handle fails with ERROR_INVALID_HANDLE",
    ]);
}

#[test]
fn read_only_view_faults_on_write() {
    case("own_table", "read_only").assert_lines(&[
        "ok main: a write through the read-only view killed the child with SIGSEGV",
        "ok main: a write through the child's own read-only view killed it with SIGSEGV",
        "ok main: a write through a writable view does not fault",
    ]);
}

#[test]
fn unlock_takes_views_only_and_unmaps_the_whole_view() {
    case("own_table", "unlock_rules").assert_lines(&[
        "ok main: unlock of an interior pointer (ptr + 8) returns TRUE",
        "ok main: it unmapped all 3 pages of the view",
        "ok main: unlock of an already unlocked pointer fails with ERROR_INVALID_ADDRESS",
    ]);
}

#[test]
fn size_of_views_and_non_views() {
    case("own_table", "size_rules");
}

// ---- last errors ----------------------------------------------------------------------------------

#[test]
fn last_error_is_set_by_failures_only() {
    case("errors", "last_error");
}

#[test]
fn process_ids_naming_no_process_give_87() {
    case("errors", "bad_pids");
}

#[test]
fn unknown_handles_give_6() {
    case("errors", "unknown_handles");
}

#[test]
fn last_error_is_per_thread() {
    case("errors", "per_thread");
}

#[test]
fn no_broker_gives_1062() {
    let env = TestEnv::new();
    let exe = compile(&env, "errors", Link::Shared);
    let missing = env.dir.join("no-such-dir/shalloc");
    let run = run_with(
        &env,
        &exe,
        &["no_broker"],
        &[("SHALLOC_BROKER", missing.to_str().unwrap())],
        LIMIT,
    );
    run.assert_passed("no_broker");
    assert!(env.running_broker().is_none());
}

#[test]
fn a_block_over_the_file_size_limit_gives_8() {
    case("errors", "too_large");
}

#[test]
fn a_broker_out_of_descriptors_gives_1450() {
    case("errors", "handle_limit");
}

// ---- across processes -----------------------------------------------------------------------------

#[test]
fn forked_child_locks_the_parents_table_and_writes() {
    case("cross", "fork_parent_table")
        .assert_lines(&["ok main: the parent's live view sees the child's write"]);
}

#[test]
fn forked_child_locks_and_frees_what_the_parent_put_in_its_table() {
    case("cross", "fork_child_table").assert_lines(&[
        "ok child: free it with its own pid",
        "ok main: the parent's view sees the child's write",
    ]);
}

#[test]
fn executed_program_locks_and_frees_in_the_parents_table() {
    case("cross", "exec_parent_table").assert_lines(&[
        "ok main: the parent sees the executed child's write",
        "ok main: another executed child freed the handle in the parent's table",
    ]);
}

#[test]
fn executed_program_locks_and_frees_what_the_parent_put_in_its_table() {
    case("cross", "exec_child_table").assert_lines(&["ok exec child: free it in its own table"]);
}

#[test]
fn a_handle_left_in_the_parents_table_outlives_the_child() {
    case("cross", "survives_child_exit").assert_lines(&[
        "ok main: after the child was reaped, the parent locks the handle it left",
    ]);
}

#[test]
fn the_table_of_an_exited_process_is_closed() {
    case("cross", "exited_table_closed")
        .assert_lines(&["ok main: lock from the reaped child's table fails (no such process)"]);
}

#[test]
fn alloc_into_a_zombie_gives_5_and_into_a_reaped_child_87() {
    case("cross", "zombie").assert_lines(&[
        "ok main: alloc into the zombie fails with ERROR_ACCESS_DENIED",
        "ok main: alloc into the reaped child fails with ERROR_INVALID_PARAMETER",
    ]);
}

#[test]
fn map_handle_between_tables() {
    case("cross", "map_across");
}

// ---- access ---------------------------------------------------------------------------------------

#[test]
fn another_uid_gets_nothing_from_our_table() {
    if let Some(run) = root_case("access", "other_uid") {
        run.assert_lines(&[
            "ok child: as uid 65534, lock of the parent's handle fails with ERROR_ACCESS_DENIED",
            "ok child: as uid 65534, alloc into the parent's table fails with ERROR_ACCESS_DENIED",
            "ok main: the handle is still open and unchanged",
        ]);
    }
}

#[test]
fn we_get_nothing_from_another_uids_table() {
    if let Some(run) = root_case("access", "other_uid_child_table") {
        run.assert_lines(&["ok main: lock from its table fails with ERROR_ACCESS_DENIED"]);
    }
}

#[test]
fn a_non_dumpable_process_keeps_others_out() {
    case("access", "nondumpable").assert_lines(&[
        "ok main: alloc into the non-dumpable child's table fails with ERROR_ACCESS_DENIED",
        "ok child: lock from the parent's table works",
    ]);
}

// ---- volume ---------------------------------------------------------------------------------------

#[test]
fn two_thousand_live_handles_in_one_table() {
    case("stress", "many_handles")
        .assert_lines(&["ok main: 2000 handles allocated, all live at once"]);
}

#[test]
fn a_64_mib_block_is_byte_exact() {
    case("stress", "big_block")
        .assert_lines(&["ok main: all 64 MiB are byte-exact (first difference at 67108864)"]);
}

#[test]
fn four_threads_cycle_at_once() {
    case("stress", "threads").assert_lines(&["ok main: 4 threads completed 2000 cycles in all"]);
}

// ---- beyond Windows: frozen blocks and in-place fill ------------------------------------------

#[test]
fn frozen_blocks_cannot_be_written_by_any_route() {
    case("extensions", "frozen");
}

#[test]
fn ordinary_blocks_are_not_frozen() {
    case("extensions", "not_frozen");
}

#[test]
fn alloc_with_fills_in_place() {
    case("extensions", "alloc_with");
}
