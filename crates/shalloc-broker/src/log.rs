//! The broker's log: one line per event, to stderr in the foreground or to a file when a client
//! started the broker (its stderr is then /dev/null).

use std::fs::File;
use std::io::Write;

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed that the broker cannot fix.
    Error,
    /// A client misbehaved, or a limit was hit.
    Warn,
    /// Start, stop, connections.
    Info,
    /// Every request.
    Debug,
}

/// Where log lines go and which are kept.
#[derive(Debug)]
pub(crate) struct Log {
    file: Option<File>,
    max: Level,
}

impl Log {
    pub fn new(file: Option<File>, max: Level) -> Self {
        Log { file, max }
    }

    pub fn enabled(&self, level: Level) -> bool {
        level <= self.max
    }

    pub fn write(&mut self, level: Level, args: std::fmt::Arguments<'_>) {
        if !self.enabled(level) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:03} {:5} {args}\n",
            now.as_secs(),
            now.subsec_millis(),
            format!("{level:?}").to_uppercase()
        );
        // A log that cannot be written must not take the broker down: drop the line.
        let _ = match &mut self.file {
            Some(f) => f.write_all(line.as_bytes()),
            None => std::io::stderr().write_all(line.as_bytes()),
        };
    }
}

/// Logs a formatted line at a level: `log!(self.log, Info, "...", args)`.
macro_rules! log {
    ($log:expr, $level:ident, $($arg:tt)*) => {
        if $log.enabled($crate::log::Level::$level) {
            $log.write($crate::log::Level::$level, format_args!($($arg)*));
        }
    };
}
pub(crate) use log;
