//! The listing a broker sends for [`Request::List`](crate::wire::Request::List): what it is and
//! what every table holds.
//!
//! It travels as the contents of a sealed memfd (one frame, whatever its length), as text: one
//! record per line, a record kind, then `key=value` fields separated by tabs. Values escape `%`,
//! tab, newline and carriage return as `%25`, `%09`, `%0A` and `%0D` (and, in the comma-separated
//! seal list, commas as `%2C`), so command names, paths and seal names can hold anything.

use std::collections::HashMap;

/// The broker's own figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Its process id.
    pub pid: u32,
    /// Its version (the `shalloc` package version).
    pub version: String,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Where it logs (empty for stderr).
    pub log_file: String,
    /// Open client connections.
    pub connections: u64,
    /// Live handles over all tables.
    pub handles: u64,
    /// Distinct live blocks.
    pub blocks: u64,
    /// Bytes in those blocks.
    pub bytes: u64,
}

/// How often one kind of request was served, and how often it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// The request kind (`alloc`, `lock`, `free`, `map`, …).
    pub kind: String,
    /// Requests served.
    pub count: u64,
    /// Of those, failures.
    pub errors: u64,
}

/// One handle in a table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandleEntry {
    /// The handle value.
    pub handle: u32,
    /// The block's size.
    pub size: u64,
    /// The block's seals (`shrink`, `grow`, `seal`, `write`, `future_write`).
    pub seals: Vec<String>,
}

/// One process's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableEntry {
    /// The process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
    /// How many handles it holds.
    pub handles: u64,
    /// The bytes of the blocks behind them.
    pub bytes: u64,
    /// Every handle, when the listing was asked for verbosely.
    pub entries: Vec<HandleEntry>,
}

/// A whole listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The broker.
    pub broker: BrokerStats,
    /// Requests by kind.
    pub requests: Vec<RequestStats>,
    /// The tables, by pid.
    pub tables: Vec<TableEntry>,
}

fn escape(value: &str) -> String {
    value
        .replace('%', "%25")
        .replace('\t', "%09")
        .replace('\n', "%0A")
        .replace('\r', "%0D")
}

fn unescape(value: &str) -> String {
    value
        .replace("%0A", "\n")
        .replace("%0D", "\r")
        .replace("%09", "\t")
        .replace("%2C", ",")
        .replace("%25", "%")
}

struct Record<'a>(HashMap<&'a str, &'a str>);

impl Record<'_> {
    fn text(&self, key: &str) -> Result<String, String> {
        self.0
            .get(key)
            .map(|v| unescape(v))
            .ok_or_else(|| format!("missing field {key}"))
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("missing or bad number {key}"))
    }
}

impl Listing {
    /// The text form.
    pub fn encode(&self) -> String {
        let b = &self.broker;
        let mut out = format!(
            "broker\tpid={}\tversion={}\tuptime_ms={}\tlog_file={}\tconnections={}\thandles={}\tblocks={}\tbytes={}\n",
            b.pid,
            escape(&b.version),
            b.uptime_ms,
            escape(&b.log_file),
            b.connections,
            b.handles,
            b.blocks,
            b.bytes
        );
        for r in &self.requests {
            out += &format!(
                "requests\tkind={}\tcount={}\terrors={}\n",
                escape(&r.kind),
                r.count,
                r.errors
            );
        }
        for t in &self.tables {
            out += &format!(
                "table\tpid={}\tcommand={}\thandles={}\tbytes={}\n",
                t.pid,
                escape(&t.command),
                t.handles,
                t.bytes
            );
            for h in &t.entries {
                out += &format!(
                    "handle\thandle={}\tsize={}\tseals={}\n",
                    h.handle,
                    h.size,
                    h.seals
                        .iter()
                        .map(|seal| escape(seal).replace(',', "%2C"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        out
    }

    /// Parses the text form.
    pub fn decode(text: &str) -> Result<Listing, String> {
        let mut listing = Listing::default();
        let mut saw_broker = false;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut parts = line.split('\t');
            let kind = parts.next().unwrap_or_default();
            let fields = Record(parts.filter_map(|p| p.split_once('=')).collect());
            match kind {
                "broker" => {
                    saw_broker = true;
                    listing.broker = BrokerStats {
                        pid: fields.num("pid")?,
                        version: fields.text("version")?,
                        uptime_ms: fields.num("uptime_ms")?,
                        log_file: fields.text("log_file")?,
                        connections: fields.num("connections")?,
                        handles: fields.num("handles")?,
                        blocks: fields.num("blocks")?,
                        bytes: fields.num("bytes")?,
                    }
                }
                "requests" => listing.requests.push(RequestStats {
                    kind: fields.text("kind")?,
                    count: fields.num("count")?,
                    errors: fields.num("errors")?,
                }),
                "table" => listing.tables.push(TableEntry {
                    pid: fields.num("pid")?,
                    command: fields.text("command")?,
                    handles: fields.num("handles")?,
                    bytes: fields.num("bytes")?,
                    entries: Vec::new(),
                }),
                "handle" => {
                    let seals = fields.0.get("seals").ok_or("missing field seals")?;
                    let entry = HandleEntry {
                        handle: fields.num("handle")?,
                        size: fields.num("size")?,
                        seals: seals
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(unescape)
                            .collect(),
                    };
                    listing
                        .tables
                        .last_mut()
                        .ok_or("a handle before any table")?
                        .entries
                        .push(entry);
                }
                other => return Err(format!("unknown record {other:?}")),
            }
        }
        if saw_broker {
            Ok(listing)
        } else {
            Err("no broker record".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_round_trip_with_awkward_names() {
        let listing = Listing {
            broker: BrokerStats {
                pid: 7,
                version: "0.1.0".into(),
                log_file: "/tmp/a b\t%.log".into(),
                ..Default::default()
            },
            requests: vec![RequestStats {
                kind: "alloc".into(),
                count: 3,
                errors: 1,
            }],
            tables: vec![TableEntry {
                pid: 42,
                command: "we\nird%09".into(),
                handles: 1,
                bytes: 5,
                entries: vec![HandleEntry {
                    handle: 0x100,
                    size: 5,
                    seals: vec!["shrink".into(), "g,r\nw%".into()],
                }],
            }],
        };
        assert_eq!(Listing::decode(&listing.encode()), Ok(listing));
        assert!(Listing::decode("table\tpid=1").is_err());
        assert!(Listing::decode("").is_err());
    }
}
