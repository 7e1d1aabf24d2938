//! Process ids and handle values: the two numbers that travel together between processes.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// A process id, naming the process whose handle table a call is about.
///
/// Any `u32` can be made into a `Pid`; one that names no process makes calls fail with
/// [`Error::NoSuchProcess`](crate::Error::NoSuchProcess). Ids Linux cannot have (0, or 2^31 and
/// above) are rejected before they reach any system call, where they could mean a process group.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(u32);

impl Pid {
    /// The calling process.
    pub fn current() -> Pid {
        Pid(std::process::id())
    }

    /// The process with id `raw`.
    pub const fn from_raw(raw: u32) -> Pid {
        Pid(raw)
    }

    /// The id as a number.
    pub const fn as_raw(self) -> u32 {
        self.0
    }

    /// Whether Linux could ever give a process this id (1 ..= 2^31 - 1).
    pub(crate) fn is_possible(self) -> bool {
        self.0 != 0 && self.0 <= i32::MAX as u32
    }
}

impl From<u32> for Pid {
    fn from(raw: u32) -> Pid {
        Pid(raw)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({})", self.0)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A handle: names one block in one process's table. Never 0, always below 2^31.
///
/// A handle means something only together with the id of the process whose table holds it; send
/// both. It prints as `0x`-prefixed hex and parses from hex (`0x…`) or decimal.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(NonZeroU32);

impl Handle {
    /// The handle with value `raw`; `None` for 0, which is never a handle.
    pub const fn from_raw(raw: u32) -> Option<Handle> {
        match NonZeroU32::new(raw) {
            Some(v) => Some(Handle(v)),
            None => None,
        }
    }

    /// The value as a number.
    pub const fn as_raw(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({:#x})", self.0)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why a string is not a handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a handle: {0:?} (expected a nonzero number, decimal or 0x-hex, below 2^32)")]
pub struct ParseHandleError(String);

impl FromStr for Handle {
    type Err = ParseHandleError;

    fn from_str(s: &str) -> Result<Handle, ParseHandleError> {
        let t = s.trim();
        let value = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => t.parse::<u32>(),
        };
        value
            .ok()
            .and_then(Handle::from_raw)
            .ok_or_else(|| ParseHandleError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_print_and_parse() {
        let h = Handle::from_raw(0x2c).expect("nonzero");
        assert_eq!(h.to_string(), "0x2c");
        assert_eq!("0x2c".parse::<Handle>(), Ok(h));
        assert_eq!("44".parse::<Handle>(), Ok(h));
        assert!("0".parse::<Handle>().is_err());
        assert!("0x".parse::<Handle>().is_err());
        assert!("-4".parse::<Handle>().is_err());
        assert!("0x100000000".parse::<Handle>().is_err());
    }

    #[test]
    fn impossible_pids_are_recognised() {
        assert!(!Pid::from_raw(0).is_possible());
        assert!(!Pid::from_raw(1 << 31).is_possible());
        assert!(!Pid::from_raw(u32::MAX).is_possible());
        assert!(Pid::from_raw(1).is_possible());
        assert!(Pid::current().is_possible());
    }
}
