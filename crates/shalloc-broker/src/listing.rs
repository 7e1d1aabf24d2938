//! What `shalloc ls` shows: the broker's figures and its tables, built from the live state.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use rustix::fs::{MemfdFlags, SealFlags};
use shalloc_protocol::listing::{BrokerStats, HandleEntry, Listing, RequestStats, TableEntry};

use crate::block::Block;
use crate::state::Broker;

/// The names of the seals a block carries: read off the broker's copy, or, for a block its owner
/// holds, the seals every block has plus the write seal if the owner said it is frozen.
fn seal_names(block: Option<&Rc<Block>>, frozen: bool) -> Vec<String> {
    let seals = match block {
        Some(block) => rustix::fs::fcntl_get_seals(&block.fd).unwrap_or(SealFlags::empty()),
        None if frozen => shalloc_protocol::block::REQUIRED_SEALS | SealFlags::WRITE,
        None => shalloc_protocol::block::REQUIRED_SEALS,
    };
    [
        (SealFlags::SHRINK, "shrink"),
        (SealFlags::GROW, "grow"),
        (SealFlags::SEAL, "seal"),
        (SealFlags::WRITE, "write"),
        (SealFlags::FUTURE_WRITE, "future_write"),
    ]
    .into_iter()
    .filter(|(flag, _)| seals.contains(*flag))
    .map(|(_, name)| name.to_string())
    .collect()
}

/// Describes the broker; with `verbose`, every handle too.
pub(crate) fn describe(broker: &Broker, verbose: bool) -> Listing {
    let mut seen: HashSet<*const Block> = HashSet::new();
    let mut bytes = 0;
    let mut handles = 0;
    let mut owned_blocks = 0;
    // A table with no handle (its process attached, then freed everything) is not listed.
    let mut tables: Vec<TableEntry> = broker
        .tables
        .iter()
        .filter_map(|table| {
            let mut entries: Vec<HandleEntry> = Vec::new();
            let mut table_bytes = 0;
            let found = table.handles();
            for &(handle, size, frozen, block) in &found {
                table_bytes += size;
                // Blocks the broker holds are counted once however many handles share them; a
                // block an owner holds is counted per handle (the broker cannot tell them apart).
                let new_block = match block {
                    Some(block) => seen.insert(Rc::as_ptr(block)),
                    None => {
                        owned_blocks += 1;
                        true
                    }
                };
                if new_block {
                    bytes += size;
                }
                if verbose {
                    entries.push(HandleEntry {
                        handle,
                        size,
                        seals: seal_names(block, frozen),
                    });
                }
            }
            if found.is_empty() {
                return None;
            }
            handles += found.len() as u64;
            entries.sort_by_key(|e| e.handle);
            let command = std::fs::read_to_string(format!("/proc/{}/comm", table.process.pid))
                .unwrap_or_default();
            Some(TableEntry {
                pid: table.process.pid,
                command: command.trim_end().to_string(),
                handles: found.len() as u64,
                bytes: table_bytes,
                entries,
            })
        })
        .collect();
    tables.sort_by_key(|t| t.pid);
    Listing {
        broker: BrokerStats {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: broker.stats.started.elapsed().as_millis() as u64,
            log_file: broker
                .config
                .log_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            // The caller's own connection is out of the map while its request is served.
            connections: broker.connection_count() as u64 + 1,
            handles,
            blocks: seen.len() as u64 + owned_blocks,
            bytes,
        },
        requests: broker
            .stats
            .requests
            .iter()
            .map(|(kind, count, errors)| RequestStats {
                kind: kind.to_string(),
                count: *count,
                errors: *errors,
            })
            .collect(),
        tables,
    }
}

/// A sealed memfd holding `bytes`, to send to a client.
pub(crate) fn sealed_memfd(bytes: &[u8]) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "shalloc-listing",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut done = 0;
    while done < bytes.len() {
        done += rustix::io::pwrite(fd.as_fd(), &bytes[done..], done as u64)?;
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )?;
    Ok(fd)
}
