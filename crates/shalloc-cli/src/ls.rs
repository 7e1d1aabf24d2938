//! `shalloc ls`: the broker and its tables, for people (a table) or programs (`--json`).

use std::fmt::Write;

use shalloc::admin::Listing;

/// Prints the listing, or says that no broker runs.
pub fn ls(json: bool, verbose: bool) -> Result<(), String> {
    // JSON is for programs: it always carries every handle.
    let Some(listing) = shalloc::admin::listing(verbose || json).map_err(|e| e.to_string())? else {
        if json {
            println!("{{\"broker\": null, \"tables\": []}}");
        } else {
            println!("no broker is running");
        }
        return Ok(());
    };
    if json {
        println!("{}", to_json(&listing))
    } else {
        print!("{}", to_text(&listing, verbose))
    }
    Ok(())
}

/// A JSON string literal.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One JSON object: `{"broker": {...}, "tables": [...]}`, numbers as numbers.
pub fn to_json(l: &Listing) -> String {
    let b = &l.broker;
    let requests: Vec<String> = l
        .requests
        .iter()
        .map(|r| {
            format!(
                "{}: {{\"count\": {}, \"errors\": {}}}",
                string(&r.kind),
                r.count,
                r.errors
            )
        })
        .collect();
    let tables: Vec<String> = l
        .tables
        .iter()
        .map(|t| {
            let handles: Vec<String> = t
                .entries
                .iter()
                .map(|h| {
                    let seals: Vec<String> = h.seals.iter().map(|s| string(s)).collect();
                    format!("{{\"handle\": {}, \"size\": {}, \"seals\": [{}]}}", h.handle, h.size, seals.join(", "))
                })
                .collect();
            format!(
                "{{\"pid\": {}, \"command\": {}, \"handle_count\": {}, \"bytes\": {}, \"handles\": [{}]}}",
                t.pid,
                string(&t.command),
                t.handles,
                t.bytes,
                handles.join(", ")
            )
        })
        .collect();
    format!(
        "{{\"broker\": {{\"pid\": {}, \"version\": {}, \"uptime_ms\": {}, \"log_file\": {}, \"connections\": {}, \
         \"handles\": {}, \"blocks\": {}, \"bytes\": {}, \"requests\": {{{}}}}}, \"tables\": [{}]}}",
        b.pid,
        string(&b.version),
        b.uptime_ms,
        if b.log_file.is_empty() {
            "null".to_string()
        } else {
            string(&b.log_file)
        },
        b.connections,
        b.handles,
        b.blocks,
        b.bytes,
        requests.join(", "),
        tables.join(", ")
    )
}

fn to_text(l: &Listing, verbose: bool) -> String {
    let b = &l.broker;
    let mut out = String::new();
    let log = if b.log_file.is_empty() {
        "stderr"
    } else {
        &b.log_file
    };
    let _ = writeln!(
        out,
        "broker {} (shalloc {}), up {:.1} s, log {log}\n  {} connections, {} handles, {} blocks, {} bytes",
        b.pid,
        b.version,
        b.uptime_ms as f64 / 1000.0,
        b.connections,
        b.handles,
        b.blocks,
        b.bytes
    );
    for r in &l.requests {
        let _ = writeln!(
            out,
            "  {:<6} {:>10} requests {:>8} failed",
            r.kind, r.count, r.errors
        );
    }
    let _ = writeln!(
        out,
        "{:>8}  {:<16} {:>8} {:>14}",
        "PID", "COMMAND", "HANDLES", "BYTES"
    );
    for t in &l.tables {
        let _ = writeln!(
            out,
            "{:>8}  {:<16} {:>8} {:>14}",
            t.pid, t.command, t.handles, t.bytes
        );
        if verbose {
            for h in &t.entries {
                let _ = writeln!(
                    out,
                    "{:>10}{:#x}  {} bytes  sealed {}",
                    "",
                    h.handle,
                    h.size,
                    h.seals.join(",")
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_they_must() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }
}
