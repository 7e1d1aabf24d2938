//! What a C user does: install under a prefix, build the README's C example with pkg-config
//! (shared, then static), run it. And the Rust example, as `cargo run --example handoff` would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::TestEnv;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs `cmd` to completion within `limit`, killing it (by pid) if it overruns.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    common::run_limited(cmd, None, limit)
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn install(env: &TestEnv) -> std::path::PathBuf {
    let prefix = env.dir.join("prefix");
    let script = repo().join("scripts/install.sh");
    ok(&run(
        Command::new("bash")
            .arg(script)
            .arg("--from")
            .arg(&env.target_dir)
            .arg(&prefix),
        Duration::from_secs(30),
    ));
    prefix
}

fn pkg_config(prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = run(
        Command::new("pkg-config")
            .args(args)
            .arg("shalloc")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")),
        Duration::from_secs(10),
    );
    ok(&out).split_whitespace().map(String::from).collect()
}

#[test]
fn readme_c_example_builds_with_pkg_config_and_runs() {
    let env = TestEnv::new();
    let prefix = install(&env);
    assert!(
        prefix.join("lib/libshalloc.so.0").exists() && prefix.join("include/shalloc.h").exists()
    );
    let exe = env.dir.join("handoff");
    let flags = pkg_config(&prefix, &["--cflags", "--libs"]);
    let rpath = format!("-Wl,-rpath,{}", prefix.join("lib").display());
    ok(&run(
        Command::new("cc")
            .arg(repo().join("examples/handoff.c"))
            .args(&flags)
            .arg(rpath)
            .arg("-o")
            .arg(&exe),
        Duration::from_secs(60),
    ));
    // The installed library finds the installed command (../bin from its directory) on its own.
    let out = ok(&run(
        Command::new(&exe).env_remove("SHALLOC_BROKER"),
        Duration::from_secs(20),
    ));
    assert!(
        out.contains("child read: what is six times seven?"),
        "{out}"
    );
    assert!(out.contains("parent read the answer: 42"), "{out}");
}

#[test]
fn shared_library_has_its_soname() {
    let env = TestEnv::new();
    let out = ok(&run(
        Command::new("readelf")
            .arg("-d")
            .arg(env.target_dir.join("libshalloc.so")),
        Duration::from_secs(10),
    ));
    assert!(out.contains("Library soname: [libshalloc.so.0]"), "{out}");
}

#[test]
fn readme_c_example_links_statically() {
    let env = TestEnv::new();
    let prefix = install(&env);
    let exe = env.dir.join("handoff-static");
    let cflags = pkg_config(&prefix, &["--cflags"]);
    let libs = pkg_config(&prefix, &["--static", "--libs-only-l"]);
    let static_lib = prefix.join("lib/libshalloc.a");
    let libs: Vec<_> = libs.into_iter().filter(|l| l != "-lshalloc").collect();
    ok(&run(
        Command::new("cc")
            .arg(repo().join("examples/handoff.c"))
            .args(&cflags)
            .arg("-o")
            .arg(&exe)
            .arg(static_lib)
            .args(&libs),
        Duration::from_secs(60),
    ));
    let out = ok(&run(&mut Command::new(&exe), Duration::from_secs(20)));
    assert!(out.contains("parent read the answer: 42"), "{out}");
}

/// Builds `examples/NAME.c` against an installed shalloc with pkg-config, as its comment says.
fn build_c_example(env: &TestEnv, prefix: &Path, name: &str) -> std::path::PathBuf {
    let exe = env.dir.join(name);
    let flags = pkg_config(prefix, &["--cflags", "--libs"]);
    let rpath = format!("-Wl,-rpath,{}", prefix.join("lib").display());
    ok(&run(
        Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror"])
            .arg(repo().join(format!("examples/{name}.c")))
            .args(&flags)
            .arg(rpath)
            .arg("-o")
            .arg(&exe),
        Duration::from_secs(60),
    ));
    exe
}

#[test]
fn c_example_frozen_producer() {
    let env = TestEnv::new();
    let prefix = install(&env);
    let out = ok(&run(
        &mut Command::new(build_c_example(&env, &prefix, "frozen_producer")),
        Duration::from_secs(20),
    ));
    for sum in ["sum 1024", "sum 2048", "sum 3072"] {
        assert!(
            out.contains(&format!("consumer: 1024 frozen bytes, {sum}")),
            "{out}"
        );
    }
}

#[test]
fn c_example_token_env() {
    let env = TestEnv::new();
    let prefix = install(&env);
    let out = ok(&run(
        &mut Command::new(build_c_example(&env, &prefix, "token_env")),
        Duration::from_secs(20),
    ));
    assert!(
        out.contains("holds \"configuration, handed down\""),
        "{out}"
    );
}

fn rust_example(env: &TestEnv, name: &str) -> String {
    let exe = env.target_dir.join("examples").join(name);
    assert!(
        exe.is_file(),
        "{} missing: cargo build --examples",
        exe.display()
    );
    ok(&run(&mut Command::new(exe), Duration::from_secs(20)))
}

#[test]
fn rust_example_frozen_producer() {
    let env = TestEnv::new();
    let out = rust_example(&env, "frozen_producer");
    for sum in ["sum 1024", "sum 2048", "sum 3072"] {
        assert!(
            out.contains(&format!("consumer: 1024 frozen bytes, {sum}")),
            "{out}"
        );
    }
}

#[test]
fn rust_example_request_response() {
    let env = TestEnv::new();
    let out = rust_example(&env, "request_response");
    assert!(
        out.contains("requester: the answer is \"forty-two\""),
        "{out}"
    );
}

#[test]
fn rust_example_token_env() {
    let env = TestEnv::new();
    let out = rust_example(&env, "token_env");
    assert!(
        out.contains("holds \"configuration, handed down\""),
        "{out}"
    );
}

#[test]
fn rust_example_hands_off() {
    let env = TestEnv::new();
    let exe = env.target_dir.join("examples/handoff");
    assert!(
        exe.is_file(),
        "{} missing: cargo build --examples",
        exe.display()
    );
    let out = ok(&run(&mut Command::new(exe), Duration::from_secs(20)));
    assert!(out.contains("child: got \"ping\""), "{out}");
    assert!(out.contains("the block now says \"pong\""), "{out}");
}
