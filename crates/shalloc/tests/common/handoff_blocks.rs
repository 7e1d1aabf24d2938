//! Blocks as the recycling suites see them: a block's bytes for a seed, its memfd reopened through
//! `/proc/self/fd`, the inode a view shows (shared by the recycling suites).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use shalloc::{Handle, View};

/// What `/proc/self/fd/N` reads for a block's memfd (`memfd_create("shalloc")`).
pub const BLOCK_LINK: &str = "/memfd:shalloc (deleted)";

/// The bytes of block `seed`: its seed first, then bytes that are never zero.
pub fn pattern(seed: u64, size: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..size)
        .map(|i| ((i.wrapping_mul(2_654_435_761).wrapping_add(seed * 77) >> 11) as u8) | 1)
        .collect();
    let head = seed.to_le_bytes();
    let n = head.len().min(bytes.len());
    bytes[..n].copy_from_slice(&head[..n]);
    bytes
}

/// A block's memfd as this process holds it, opened again through `/proc/self/fd`.
pub struct Memfd {
    pub file: File,
    pub ino: u64,
    pub len: u64,
}

/// The block memfd with inode `ino` this process holds (for writing too when `write`).
pub fn open_block(ino: u64, write: bool) -> Memfd {
    let entries: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    let path = entries
        .into_iter()
        .filter(|p| std::fs::read_link(p).is_ok_and(|t| t.as_os_str() == BLOCK_LINK))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino))
        .unwrap_or_else(|| {
            panic!(
                "no block memfd with inode {ino} open here: {:?}",
                crate::support::fd_targets("self")
            )
        });
    let file = File::options().read(true).write(write).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    Memfd { file, ino, len }
}

/// The inode of the block a view shows (a view starts a mapping in `/proc/self/maps`).
pub fn view_inode(view: &View) -> u64 {
    crate::support::inode_mapped_at(view.as_ptr() as usize)
        .expect("a view's mapping in /proc/self/maps")
}

/// Fails unless `view` shows exactly block `seed`'s bytes.
pub fn check_view(view: &View, seed: u64, size: u64, what: &str) {
    assert_eq!(view.len() as u64, size, "{what}: size of block {seed}");
    let got = view.to_vec();
    let want = pattern(seed, size);
    if let Some(at) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: block {seed} shows {:#x} at {at}, expected {:#x}",
            got[at], want[at]
        );
    }
}

pub fn handle(raw: u64) -> Handle {
    Handle::from_raw(u32::try_from(raw).unwrap()).expect("a handle is never 0")
}
