//! Socket activation: a service manager (systemd's `shalloc.socket`) may hand the broker its
//! listening socket as descriptor 3, announced by `LISTEN_PID` and `LISTEN_FDS`.

use std::os::fd::{FromRawFd, OwnedFd};

const FIRST_FD: i32 = 3;

/// The listening socket passed by a service manager, if one was passed to this process.
///
/// Follows the `sd_listen_fds` protocol: `LISTEN_PID` must name this process (so a socket meant
/// for a parent is never taken) and `LISTEN_FDS` must be at least 1. The variables are removed so
/// that no child takes them for its own.
pub fn inherited_listener() -> Result<Option<OwnedFd>, String> {
    let pid = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok());
    if pid != Some(std::process::id()) {
        return Ok(None);
    }
    // SAFETY: called from the CLI's single thread before the broker starts any other, so nothing
    // reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    match count {
        Some(n) if n >= 1 => {
            // SAFETY: by the protocol, descriptor 3 was opened for us by the service manager and
            // nothing else in this process owns it (LISTEN_PID names us).
            Ok(Some(unsafe { OwnedFd::from_raw_fd(FIRST_FD) }))
        }
        _ => Err("LISTEN_PID names this process but LISTEN_FDS passes no socket".into()),
    }
}
