//! The benchmark of shalloc: hands blocks of 64 B to 16 MiB (256 MiB in the full run) from one
//! process to another and back through shalloc, a plain-syscall floor, a Unix socket, ipc-channel
//! and shared_memory, and reports medians with their ratios to the floor.
//!
//! `cargo run --release -p shalloc-bench -- [--quick] [--json FILE] [--plot FILE]`, or
//! `-- --throughput` (broker requests/s with 1, 4 and 16 clients beside a raw `SOCK_SEQPACKET`
//! echo server), or `-- --memory` (broker and client memory per live handle).
//!
//! It starts a private broker (its own runtime directory, the `shalloc` executable next to this
//! one) and one peer process per system (this executable again, with `--peer SYSTEM`), and stops
//! all of them at the end.

mod common;
mod floor;
mod load;
mod measure;
mod peer;
mod pinning;
mod plot;
mod report;
mod systems;

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;

use crate::common::{Result, checksum, test_data};
use crate::measure::{Budget, Stats, measure_interleaved};
use crate::peer::{Peer, run_peer};
use crate::report::{Record, format_us, size_label};
use crate::systems::{CycleState, Scenario, System};

/// Benchmark shalloc against a plain-syscall floor, a Unix socket, ipc-channel and shared_memory.
#[derive(Debug, Parser)]
#[command(name = "shalloc-bench", version)]
struct Args {
    /// Short run (about 0.3 s per cell, sizes up to 16 MiB): within a minute.
    #[arg(long)]
    quick: bool,
    /// Write the results as a JSON list of records to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the SVG plot to FILE (the full run draws one by default, to
    /// target/shalloc-bench/bench.svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Write the tables and the machine as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Only these systems (comma-separated; floor is always measured).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    systems: Vec<String>,
    /// Only these scenarios (comma-separated: cycle, handoff, cycle-mixed, handoff-mixed).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    scenarios: Vec<String>,
    /// Only these sizes in bytes (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "BYTES")]
    sizes: Vec<usize>,
    /// Leave the placement of A and its peers to the scheduler (by default A runs on one CPU
    /// and every peer on another, so every system pays the same wake-ups).
    #[arg(long)]
    no_pin: bool,
    /// Run as the receiving peer of SYSTEM on stdin (internal).
    #[arg(long, hide = true, value_name = "SYSTEM")]
    peer: Option<String>,
    /// The CPU the peer runs on (internal).
    #[arg(long, hide = true, value_name = "CPU")]
    peer_cpu: Option<usize>,
    /// Broker throughput instead: requests/s with 1, 4 and 16 client processes, beside a raw
    /// SOCK_SEQPACKET echo server.
    #[arg(long, conflicts_with = "memory")]
    throughput: bool,
    /// Memory per live handle instead: the broker's RSS and descriptors, and this process's RSS,
    /// with 10,000 live 64 B handles.
    #[arg(long)]
    memory: bool,
    /// Run as a throughput client of SYSTEM (shalloc, echo) on stdin (internal).
    #[arg(long, hide = true, value_name = "SYSTEM")]
    load_client: Option<String>,
    /// Run as the echo server listening at PATH (internal).
    #[arg(long, hide = true, value_name = "PATH")]
    echo_server: Option<PathBuf>,
}

const QUICK_SIZES: [usize; 5] = [64, 4 << 10, 64 << 10, 1 << 20, 16 << 20];
const FULL_EXTRA_SIZE: usize = 256 << 20;

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match &args.peer {
        Some(name) => match System::from_name(name) {
            Some(system) => run_peer(system, args.peer_cpu),
            None => Err(format!("no system called {name:?}").into()),
        },
        None => match (&args.load_client, &args.echo_server) {
            (Some(name), _) => match load::LoadSystem::from_name(name) {
                Some(system) => load::run_load_client(system),
                None => Err(format!("no load system called {name:?}").into()),
            },
            (None, Some(path)) => load::run_echo_server(path),
            (None, None) if args.throughput || args.memory => run_load(&args),
            (None, None) => run(&args),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let who = if args.peer.is_some() {
                "shalloc-bench peer"
            } else if args.load_client.is_some() || args.echo_server.is_some() {
                "shalloc-bench load process"
            } else {
                "shalloc-bench"
            };
            eprintln!("{who}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The private broker environment; stops the broker and removes its directory when dropped.
struct BrokerEnv {
    runtime_dir: PathBuf,
    broker_pid: Option<u32>,
}

impl BrokerEnv {
    /// Makes a private runtime directory, points this process (and so its children) at it and at
    /// `broker`, and starts the broker.
    fn start(broker: &Path) -> Result<BrokerEnv> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let runtime_dir =
            std::env::temp_dir().join(format!("shalloc-bench-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&runtime_dir)?;
        std::fs::set_permissions(&runtime_dir, std::fs::Permissions::from_mode(0o700))?;
        // SAFETY: this runs before the benchmark starts any thread (argument parsing starts none),
        // so nothing reads the environment concurrently.
        unsafe {
            std::env::set_var(shalloc::RUNTIME_DIR_ENV, &runtime_dir);
            std::env::set_var(shalloc::BROKER_ENV, broker);
        }
        let mut env = BrokerEnv {
            runtime_dir,
            broker_pid: None,
        };
        env.broker_pid = Some(shalloc::broker_pid()?.as_raw());
        Ok(env)
    }
}

impl Drop for BrokerEnv {
    fn drop(&mut self) {
        match shalloc::admin::stop_broker() {
            Ok(_) => {}
            Err(e) => {
                eprintln!("shalloc-bench: stopping the broker: {e}; sending it SIGTERM");
                if let Some(pid) = self.broker_pid.and_then(|p| i32::try_from(p).ok()) {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// The `shalloc` executable that runs the broker: `$SHALLOC_BROKER`, else the one next to this
/// executable, which is (re)built first when this runs under `cargo run`.
fn broker_executable(exe: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(shalloc::BROKER_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let dir = exe.parent().ok_or("this executable has no directory")?;
    let candidate = dir.join("shalloc");
    let profile = dir.file_name().and_then(|n| n.to_str());
    if let (Some(cargo), Some(profile @ ("release" | "debug"))) =
        (std::env::var_os("CARGO"), profile)
    {
        eprintln!("shalloc-bench: building the shalloc executable (the broker) for {profile}");
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "shalloc-cli", "--bin", "shalloc"]);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status()?;
        if !status.success() {
            eprintln!("shalloc-bench: building the shalloc executable failed ({status})");
        }
    }
    if !candidate.is_file() {
        return Err(format!(
            "no shalloc executable at {}: run `cargo build --release` first, or set {}",
            candidate.display(),
            shalloc::BROKER_ENV
        )
        .into());
    }
    Ok(candidate)
}

/// The CPUs: how many the machine has online, and how many this process may run on (fewer
/// under `taskset`).
fn cpus() -> (usize, usize) {
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    let online = std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| info.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    (online.max(usable), usable)
}

/// The CPUs as words: `2 CPUs`, or `2 CPUs, pinned to 1` under `taskset`.
fn cpus_label() -> String {
    match cpus() {
        (online, usable) if usable < online => format!("{online} CPUs, pinned to {usable}"),
        (online, _) => format!("{online} CPUs"),
    }
}

/// This machine, as BENCHMARKS.md states it.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{}, {model}, Linux {kernel}, load average {}",
        cpus_label(),
        load_average()
    )
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn parse_filters<T: Copy + Ord>(
    names: &[String],
    all: &[T],
    lookup: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    let mut chosen = Vec::new();
    for name in names {
        chosen.push(lookup(name).ok_or_else(|| format!("no {what} called {name:?}"))?);
    }
    chosen.sort();
    chosen.dedup();
    Ok(chosen)
}

/// `--throughput` or `--memory`, against a private broker.
fn run_load(args: &Args) -> Result<()> {
    let exe = std::env::current_exe()?;
    let broker = broker_executable(&exe)?;
    println!("shalloc-bench on {}", machine());
    let env = BrokerEnv::start(&broker)?;
    if args.throughput {
        load::run_throughput(&exe, &env.runtime_dir)?;
    } else {
        load::run_memory()?;
    }
    println!("load average now {}", load_average());
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let budget = if args.quick {
        Budget::QUICK
    } else {
        Budget::FULL
    };
    let mut sizes = if args.sizes.is_empty() {
        let mut sizes = QUICK_SIZES.to_vec();
        if !args.quick {
            sizes.push(FULL_EXTRA_SIZE);
        }
        sizes
    } else {
        args.sizes.clone()
    };
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.contains(&0) {
        return Err("sizes must be at least 1 byte".into());
    }
    let mut systems = parse_filters(&args.systems, &System::ALL, System::from_name, "system")?;
    if !systems.contains(&System::Floor) {
        systems.insert(0, System::Floor);
    }
    let scenarios = parse_filters(
        &args.scenarios,
        &Scenario::ALL,
        Scenario::from_name,
        "scenario",
    )?;
    let exe = std::env::current_exe()?;
    let broker = broker_executable(&exe)?;
    let machine = machine();
    let _env = BrokerEnv::start(&broker)?;
    // Pinned after the broker started, which keeps the scheduler's placement.
    let placement = if args.no_pin {
        None
    } else {
        pinning::choose()?
    };
    if let Some(placement) = placement {
        pinning::pin_to(placement.a)?;
    }
    let machine = format!(
        "{machine}; {}",
        match placement {
            Some(p) => format!("A on CPU {}, peers on CPU {}", p.a, p.b),
            None => "placement left to the scheduler".into(),
        }
    );
    let mode = if args.quick { "quick" } else { "full" };
    println!("shalloc-bench ({mode} run) on {machine}");

    let max_size = sizes.iter().copied().max().unwrap_or(0);
    let data = test_data(max_size);
    let sums: BTreeMap<usize, u64> = sizes.iter().map(|&s| (s, checksum(&data[..s]))).collect();

    let mut peers: BTreeMap<System, Peer> = BTreeMap::new();
    if scenarios.contains(&Scenario::Handoff) || scenarios.contains(&Scenario::HandoffMixed) {
        for &system in &systems {
            peers.insert(system, Peer::spawn(system, &exe, placement.map(|p| p.b))?);
        }
    }

    let mut records = Vec::new();
    let mut cycle_state = CycleState::default();
    let mut sink = 0u64;
    for &scenario in &scenarios {
        for &size in &sizes {
            let block = &data[..size];
            let expected = sums.get(&size).copied().unwrap_or(0);
            // The mixed scenarios' sizes with their checksums, and where each system is in them.
            let mix: Vec<(usize, u64)> = systems::mixed_sizes(size)
                .into_iter()
                .map(|s| (s, checksum(&data[..s])))
                .collect();
            let mut turn: BTreeMap<System, usize> = BTreeMap::new();
            let mut next_mixed = |system: System| {
                let at = turn.entry(system).or_insert(0);
                *at += 1;
                mix[*at % mix.len()]
            };
            let samples = measure_interleaved(&systems, &budget, |system| match scenario {
                Scenario::Cycle => {
                    sink = sink.wrapping_add(cycle_state.cycle(system, block)?);
                    Ok(())
                }
                Scenario::Handoff => peers
                    .get_mut(&system)
                    .ok_or("no peer")?
                    .handoff(block, expected),
                Scenario::CycleMixed => {
                    let (len, _) = next_mixed(system);
                    sink = sink.wrapping_add(cycle_state.cycle(system, &data[..len])?);
                    Ok(())
                }
                Scenario::HandoffMixed => {
                    let (len, sum) = next_mixed(system);
                    peers
                        .get_mut(&system)
                        .ok_or("no peer")?
                        .handoff(&data[..len], sum)
                }
                Scenario::Fill => Err("fill runs on its own, below".into()),
            })?;
            let mut line = format!(
                "[{:6.1} s] {} {}:",
                started.elapsed().as_secs_f64(),
                scenario.name(),
                size_label(size)
            );
            for (system, mut samples) in samples {
                if let Some(stats) = Stats::of(&mut samples) {
                    line.push_str(&format!(
                        " {} {} µs;",
                        system.name(),
                        format_us(stats.median_ns)
                    ));
                    records.push(Record {
                        scenario,
                        size,
                        system,
                        stats,
                    });
                }
            }
            eprintln!("{line}");
        }
    }
    std::hint::black_box(sink);

    // In-place fill against a prepared buffer, beside the cycle scenario.
    let fill_sizes: Vec<usize> = systems::FILL_SIZES
        .into_iter()
        .filter(|s| scenarios.contains(&Scenario::Cycle) && sizes.contains(s))
        .collect();
    let mut scratch = Vec::new();
    for &size in &fill_sizes {
        let samples = measure_interleaved(&systems::FILL_SYSTEMS, &budget, |system| {
            sink = sink.wrapping_add(systems::fill(system, size, &mut scratch)?);
            Ok(())
        })?;
        for (system, mut samples) in samples {
            if let Some(stats) = Stats::of(&mut samples) {
                records.push(Record {
                    scenario: Scenario::Fill,
                    size,
                    system,
                    stats,
                });
            }
        }
        eprintln!(
            "[{:6.1} s] fill {}",
            started.elapsed().as_secs_f64(),
            size_label(size)
        );
    }

    let mut shutdown_errors = Vec::new();
    for (_, mut peer) in peers {
        if let Err(e) = peer.shutdown() {
            shutdown_errors.push(e.to_string());
        }
    }

    println!();
    for &scenario in &scenarios {
        println!(
            "{}",
            report::terminal_table(&records, scenario, &sizes, &systems)
        );
    }
    if !fill_sizes.is_empty() {
        println!(
            "{}",
            report::terminal_table(
                &records,
                Scenario::Fill,
                &fill_sizes,
                &systems::FILL_SYSTEMS
            )
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report::to_json(&records))?;
        println!("wrote {}", path.display());
    }
    let plot_path = args.plot.clone().or_else(|| {
        (!args.quick)
            .then(|| {
                exe.parent()?
                    .parent()
                    .map(|t| t.join("shalloc-bench/bench.svg"))
            })
            .flatten()
    });
    if let Some(path) = plot_path {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let title = format!(
            "shalloc-bench ({mode} run, {}): median latency",
            cpus_label()
        );
        std::fs::write(
            &path,
            plot::svg(&records, &scenarios, &sizes, &systems, &title),
        )?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        let mut md = format!("Machine: {machine}\n\n");
        for &scenario in &scenarios {
            md.push_str(&format!(
                "**{}** — {}. Median µs (ratio to floor):\n\n{}\n",
                scenario.name(),
                scenario.description(),
                report::markdown_table(&records, scenario, &sizes, &systems)
            ));
        }
        if !fill_sizes.is_empty() {
            md.push_str(&format!(
                "**fill** — {}. Median µs (ratio to floor):\n\n{}\n",
                Scenario::Fill.description(),
                report::markdown_table(
                    &records,
                    Scenario::Fill,
                    &fill_sizes,
                    &systems::FILL_SYSTEMS
                )
            ));
        }
        std::fs::write(path, md)?;
        println!("wrote {}", path.display());
    }
    println!(
        "{mode} run took {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    if !shutdown_errors.is_empty() {
        return Err(shutdown_errors.join("; ").into());
    }
    Ok(())
}
