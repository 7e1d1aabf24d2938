//! A progress bar on stderr for large transfers: only above 64 MiB, and only when stderr is a
//! terminal (never in a pipe or a log).

use std::io::Write;

/// Transfers above this size show progress.
pub const THRESHOLD: u64 = 64 * 1024 * 1024;

/// A bar for one transfer; silent when the transfer is small or stderr is not a terminal.
pub struct Progress {
    total: u64,
    done: u64,
    shown: u64,
    active: bool,
    what: &'static str,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Progress {
        let active = total > THRESHOLD && rustix::termios::isatty(std::io::stderr());
        Progress {
            total,
            done: 0,
            shown: u64::MAX,
            active,
            what,
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if !self.active {
            return;
        }
        let percent = self.done * 100 / self.total.max(1);
        if percent == self.shown {
            return;
        }
        self.shown = percent;
        let filled = (percent / 5) as usize;
        let _ = write!(
            std::io::stderr(),
            "\r{} [{}{}] {percent:3}% {} / {} MiB",
            self.what,
            "#".repeat(filled),
            " ".repeat(20 - filled),
            self.done >> 20,
            self.total >> 20
        );
    }

    pub fn finish(self) {
        if self.active {
            let _ = writeln!(std::io::stderr());
        }
    }
}
