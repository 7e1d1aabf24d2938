//! `shalloc`: hand blocks of memory between processes from the shell, run the broker, or watch a
//! two-process hand-off (`shalloc demo`).

mod activation;
mod demo;
mod ls;
mod progress;
mod transfer;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shalloc::{Handle, Pid, Token};

/// Hand a block of memory to another process (the SHAllocShared family on Linux).
#[derive(Parser, Debug)]
#[command(name = "shalloc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy FILE (or stdin) into a new block in PID's table and print the handle.
    Put {
        /// The process whose table receives the handle ($$ for the calling shell).
        #[arg(long = "to", value_name = "PID")]
        to: u32,
        /// The file to copy; stdin when absent.
        file: Option<PathBuf>,
        /// Freeze the block: nobody can ever change it (it can only be read).
        #[arg(long)]
        frozen: bool,
        /// Print a token (HANDLE@PID) instead of the handle alone.
        #[arg(long)]
        token: bool,
    },
    /// Write the bytes of block HANDLE (in PID's table) to FILE or stdout.
    Get {
        /// The handle, decimal or 0x-hex, or a token HANDLE@PID (then --from is not needed).
        handle: HandleArg,
        /// The process whose table holds the handle.
        #[arg(long = "from", value_name = "PID")]
        from: Option<u32>,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Free the handle after reading it.
        #[arg(long)]
        free: bool,
    },
    /// Close HANDLE in PID's table.
    Free {
        /// The handle, decimal or 0x-hex, or a token HANDLE@PID (then --from is not needed).
        handle: HandleArg,
        /// The process whose table holds the handle.
        #[arg(long = "from", value_name = "PID")]
        from: Option<u32>,
    },
    /// Duplicate HANDLE from one table into another and print the new handle.
    Map {
        /// The handle, decimal or 0x-hex, or a token HANDLE@PID (then --from is not needed).
        handle: HandleArg,
        /// The process whose table holds the handle.
        #[arg(long = "from", value_name = "PID")]
        from: Option<u32>,
        /// The process whose table receives the duplicate.
        #[arg(long = "to", value_name = "PID")]
        to: u32,
    },
    /// Show the running broker and its tables.
    Ls {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// List every handle with its size and seals.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Ask the running broker to exit cleanly.
    Stop,
    /// Run the broker in the foreground (clients start one on demand when none runs).
    Broker {
        /// The runtime directory (default: $SHALLOC_RUNTIME_DIR, $XDG_RUNTIME_DIR/shalloc, /tmp/shalloc-UID).
        #[arg(long, value_name = "DIR")]
        runtime_dir: Option<PathBuf>,
        /// Append the log to FILE instead of stderr.
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// Write one byte to this inherited descriptor once listening (used by clients that start it).
        #[arg(long, value_name = "FD", hide = true)]
        ready_fd: Option<i32>,
        /// The largest block accepted, in bytes.
        #[arg(long, value_name = "BYTES", env = "SHALLOC_MAX_BLOCK", default_value_t = shalloc_broker::DEFAULT_MAX_BLOCK)]
        max_block: u64,
        /// The most handles one process's table may hold.
        #[arg(long, value_name = "N", env = "SHALLOC_MAX_HANDLES_PER_TABLE", default_value_t = shalloc_broker::DEFAULT_MAX_HANDLES_PER_TABLE)]
        max_handles_per_table: usize,
        /// The most blocks the broker itself holds, over all tables (the user's total of handles
        /// put into tables whose owners have not taken them); its open-file limit caps it too.
        #[arg(long, value_name = "N", env = "SHALLOC_MAX_HANDLES", default_value_t = shalloc_broker::DEFAULT_MAX_HANDLES)]
        max_handles: usize,
        /// Exit after SECS with no clients and no tables (clients that start a broker ask for this).
        #[arg(long, value_name = "SECS")]
        idle_exit: Option<u64>,
        /// Log every request.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Run a real two-process hand-off and tell what happened.
    Demo,
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Manpage,
    /// The child side of `shalloc demo` (started by it).
    #[command(hide = true)]
    DemoChild,
}

/// A handle argument: a bare handle (the owner comes from `--from`) or a token `HANDLE@PID`.
#[derive(Debug, Clone)]
struct HandleArg {
    handle: Handle,
    owner: Option<Pid>,
}

impl std::str::FromStr for HandleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<HandleArg, String> {
        if s.contains('@') {
            let t: Token = s.parse().map_err(|e| format!("{e}"))?;
            Ok(HandleArg {
                handle: t.handle,
                owner: Some(t.owner),
            })
        } else {
            let handle: Handle = s.parse().map_err(|e| format!("{e}"))?;
            Ok(HandleArg {
                handle,
                owner: None,
            })
        }
    }
}

impl HandleArg {
    /// The token this argument and `--from` name together.
    fn token(&self, from: Option<u32>) -> Result<Token, String> {
        match (self.owner, from.map(Pid::from_raw)) {
            (Some(owner), None) => Ok(Token::new(self.handle, owner)),
            (Some(owner), Some(from)) if owner == from => Ok(Token::new(self.handle, owner)),
            (Some(owner), Some(from)) => Err(format!(
                "the token names process {owner} but --from says {from}"
            )),
            (None, Some(from)) => Ok(Token::new(self.handle, from)),
            (None, None) => Err(format!(
                "which process's table holds {}? give --from PID or a token HANDLE@PID",
                self.handle
            )),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Put {
            to,
            file,
            frozen,
            token,
        } => transfer::put(Pid::from_raw(to), file.as_deref(), frozen, token),
        Command::Get {
            handle,
            from,
            output,
            free,
        } => handle
            .token(from)
            .and_then(|t| transfer::get(t, output.as_deref(), free)),
        Command::Free { handle, from } => handle
            .token(from)
            .and_then(|t| shalloc::free(t.handle, t.owner).map_err(|e| e.to_string())),
        Command::Map { handle, from, to } => handle.token(from).and_then(|t| {
            shalloc::map_handle(t.handle, t.owner, Pid::from_raw(to))
                .map(|h| println!("{h}"))
                .map_err(|e| e.to_string())
        }),
        Command::Broker {
            runtime_dir,
            log_file,
            ready_fd,
            idle_exit,
            verbose,
            max_block,
            max_handles_per_table,
            max_handles,
        } => broker(
            BrokerArgs {
                runtime_dir,
                log_file,
                ready_fd,
                idle_exit,
                verbose,
            },
            shalloc_broker::Limits {
                max_block,
                max_handles_per_table,
                max_handles,
            },
        ),
        Command::Ls { json, verbose } => ls::ls(json, verbose),
        Command::Stop => match shalloc::admin::stop_broker() {
            Ok(true) => Ok(()),
            Ok(false) => Err("no broker is running".to_string()),
            Err(e) => Err(e.to_string()),
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "shalloc",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .map_err(|e| format!("cannot write the man page: {e}")),
        Command::Demo => demo::parent(),
        Command::DemoChild => demo::child(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("shalloc: {message}");
            ExitCode::FAILURE
        }
    }
}

/// How the broker subcommand was asked to run.
struct BrokerArgs {
    runtime_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    ready_fd: Option<i32>,
    idle_exit: Option<u64>,
    verbose: bool,
}

fn broker(args: BrokerArgs, limits: shalloc_broker::Limits) -> Result<(), String> {
    let BrokerArgs {
        runtime_dir,
        log_file,
        ready_fd,
        idle_exit,
        verbose,
    } = args;
    let ready_fd = match ready_fd {
        Some(fd)
            if fd > 2
                && rustix::io::fcntl_getfd(
                    // SAFETY: only used to ask whether the descriptor is open; not kept.
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                )
                .is_ok() =>
        {
            // SAFETY: the descriptor is open (checked above) and was handed to us, by whoever
            // started us, to own: nothing else in this process uses it.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        Some(fd) => return Err(format!("--ready-fd {fd} is not an open descriptor above 2")),
        None => None,
    };
    let started_by_client = ready_fd.is_some();
    let config = shalloc_broker::Config {
        runtime_dir,
        log_file,
        idle_exit: idle_exit
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs),
        listener: activation::inherited_listener()?,
        // A client starts us when it found no broker; the last one may still be exiting.
        lock_wait: if started_by_client {
            std::time::Duration::from_secs(2)
        } else {
            std::time::Duration::ZERO
        },
        log_level: if verbose {
            shalloc_broker::log::Level::Debug
        } else {
            shalloc_broker::log::Level::Info
        },
        ready_fd,
        limits,
    };
    shalloc_broker::run(config).map_err(|e| e.to_string())
}
