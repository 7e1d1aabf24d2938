//! Where the client and the broker meet, and what a directory must be before either trusts it.
//!
//! The broker is per user and per PID namespace: process ids mean nothing across namespaces, so
//! every file's name carries the namespace (`pidns-<inode>.sock`). The directory is, in order of
//! preference, `$SHALLOC_RUNTIME_DIR`, `$XDG_RUNTIME_DIR/shalloc`, or `/tmp/shalloc-<uid>`; it must
//! be a real directory (not a symlink) owned by the effective user with no group or other access.
//! A directory that fails those checks is refused, never repaired: somebody else may control it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The environment variable that overrides the runtime directory (tests give each run its own).
pub const RUNTIME_DIR_ENV: &str = "SHALLOC_RUNTIME_DIR";

/// The set of paths one broker and its clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    dir: PathBuf,
    stem: String,
}

impl Rendezvous {
    /// The rendezvous for the calling process: its runtime directory (see the module docs) and its
    /// PID namespace.
    pub fn for_this_process() -> io::Result<Rendezvous> {
        Rendezvous::in_dir(runtime_dir())
    }

    /// The rendezvous in `dir` for the calling process's PID namespace.
    pub fn in_dir(dir: impl Into<PathBuf>) -> io::Result<Rendezvous> {
        let ns = pid_namespace_id()?;
        Ok(Rendezvous {
            dir: dir.into(),
            stem: format!("pidns-{ns}"),
        })
    }

    /// The runtime directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's listening socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.stem))
    }

    /// The file a running broker holds an exclusive `flock` on for its whole life, with its pid
    /// written inside: at most one broker per namespace, and a way to find it.
    pub fn broker_lock(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.stem))
    }

    /// The file clients `flock` while they start a broker, so that concurrent first callers start
    /// exactly one.
    pub fn start_lock(&self) -> PathBuf {
        self.dir.join(format!("{}.start", self.stem))
    }

    /// Where brokers record how far they have handed out handle values, so that the next broker
    /// never hands out a value a client of the last one may still hold.
    pub fn handle_mark(&self) -> PathBuf {
        self.dir.join(format!("{}.handles", self.stem))
    }

    /// Where a broker started on demand writes its log.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.stem))
    }

    /// The pid of the broker that holds the broker lock, if a pid is written there.
    ///
    /// The file is only a hint for people and tests (the lock itself is the truth).
    pub fn broker_pid_hint(&self) -> Option<u32> {
        std::fs::read_to_string(self.broker_lock())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Creates the directory (mode 0700) when it is missing, then checks it: a real directory, owned
    /// by the effective user, with no access for group or others.
    pub fn prepare_dir(&self) -> io::Result<()> {
        match std::fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)?;
                // The umask may have taken bits away; it cannot have added any. Set exactly 0700.
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        check_private_dir(&self.dir)
    }
}

/// Opens (creating, mode 0600) one of the rendezvous' lock files, never through a symlink.
pub fn open_lock_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)
}

/// Takes an exclusive `flock` on `file`, waiting until `deadline` at most (flock itself has no
/// timeout, so the lock is polled with a growing pause). `Err(Errno::WOULDBLOCK)` means someone
/// else still held it at the deadline.
pub fn lock_exclusive(
    file: &std::fs::File,
    deadline: std::time::Instant,
) -> Result<(), rustix::io::Errno> {
    use rustix::fs::FlockOperation;
    use rustix::io::Errno;
    use std::time::{Duration, Instant};
    let mut pause = Duration::from_millis(1);
    loop {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Err(Errno::WOULDBLOCK) if Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

/// Checks that `dir` is a directory (not a symlink to one), owned by the effective user, and not
/// accessible to group or others.
pub fn check_private_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if meta.file_type().is_symlink() {
        return refuse(format!(
            "runtime directory {} is a symlink; refusing it",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return refuse(format!(
            "runtime directory {} is not a directory",
            dir.display()
        ));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return refuse(format!(
            "runtime directory {} is owned by uid {}, not by you (uid {euid}); refusing it",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "runtime directory {} has mode {:04o}; it must allow no access to group or others (0700)",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The runtime directory this process would use: `$SHALLOC_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/shalloc`, else `/tmp/shalloc-<euid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("shalloc");
    }
    PathBuf::from(format!(
        "/tmp/shalloc-{}",
        rustix::process::geteuid().as_raw()
    ))
}

/// The inode number of the calling process's PID namespace, which names it.
pub fn pid_namespace_id() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/pid")?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shalloc-rdv-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn missing_directory_is_created_private() {
        let dir = scratch("new").join("nested");
        let r = Rendezvous::in_dir(&dir).expect("rendezvous");
        r.prepare_dir().expect("prepare");
        let mode = std::fs::metadata(&dir).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert!(r.socket().to_string_lossy().contains("pidns-"));
        let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[test]
    fn loose_modes_and_symlinks_are_refused() {
        let dir = scratch("loose");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let err = Rendezvous::in_dir(&dir)
            .expect("rdv")
            .prepare_dir()
            .expect_err("loose mode accepted");
        assert!(err.to_string().contains("0750"), "{err}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let link = scratch("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = Rendezvous::in_dir(&link)
            .expect("rdv")
            .prepare_dir()
            .expect_err("symlink accepted");
        assert!(err.to_string().contains("symlink"), "{err}");
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
