//! The results: records, the JSON file, the terminal table and its Markdown twin.

use std::fmt::Write as _;

use crate::measure::Stats;
use crate::systems::{Scenario, System};

/// One measured cell.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// What was measured.
    pub scenario: Scenario,
    /// The block's size in bytes.
    pub size: usize,
    /// Who did it.
    pub system: System,
    /// The timings.
    pub stats: Stats,
}

/// `64 B`, `4 KiB`, `16 MiB`…
pub fn size_label(size: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if size >= unit && size % unit == 0 {
            return format!("{} {name}", size / unit);
        }
    }
    format!("{size} B")
}

/// Microseconds, with as many decimals as make sense.
pub fn format_us(ns: f64) -> String {
    let us = ns / 1000.0;
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        let whole = us.round() as u64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

/// The records as a JSON list of objects.
pub fn to_json(records: &[Record]) -> String {
    let mut out = String::from("[\n");
    for (i, r) in records.iter().enumerate() {
        let _ = write!(
            out,
            "  {{\"scenario\": \"{}\", \"size\": {}, \"system\": \"{}\", \"median_ns\": {:.1}, \
             \"p99_ns\": {:.1}, \"min_ns\": {:.1}, \"mean_ns\": {:.1}, \"iterations\": {}}}",
            r.scenario.name(),
            r.size,
            r.system.name(),
            r.stats.median_ns,
            r.stats.p99_ns,
            r.stats.min_ns,
            r.stats.mean_ns,
            r.stats.iterations
        );
        out.push_str(if i + 1 < records.len() { ",\n" } else { "\n" });
    }
    out.push_str("]\n");
    out
}

fn find(records: &[Record], scenario: Scenario, size: usize, system: System) -> Option<&Record> {
    records
        .iter()
        .find(|r| r.scenario == scenario && r.size == size && r.system == system)
}

/// One table's cells: a header row and a row per size, each cell `median (ratio to floor)`.
fn table_cells(
    records: &[Record],
    scenario: Scenario,
    sizes: &[usize],
    systems: &[System],
    times: &str,
) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut head = vec!["size".to_string()];
    head.extend(systems.iter().map(|s| s.name().to_string()));
    rows.push(head);
    for &size in sizes {
        let floor = find(records, scenario, size, System::Floor).map(|r| r.stats.median_ns);
        let mut row = vec![size_label(size)];
        for &system in systems {
            let cell = match find(records, scenario, size, system) {
                None => "—".to_string(),
                Some(r) => {
                    let us = format_us(r.stats.median_ns);
                    match floor {
                        Some(f) if system != System::Floor && f > 0.0 => {
                            format!("{us} ({:.2}{times})", r.stats.median_ns / f)
                        }
                        _ => us,
                    }
                }
            };
            row.push(cell);
        }
        rows.push(row);
    }
    rows
}

/// The terminal table of one scenario: median µs per size and system, with ratios to `floor`.
pub fn terminal_table(
    records: &[Record],
    scenario: Scenario,
    sizes: &[usize],
    systems: &[System],
) -> String {
    let rows = table_cells(records, scenario, sizes, systems, "x");
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!(
        "{}: median µs (ratio to floor)\n  {}\n",
        scenario.name(),
        scenario.description()
    );
    for (i, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c == 0 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{cell}", " ".repeat(pad));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1)));
            out.push('\n');
        }
    }
    out
}

/// The same table in Markdown.
pub fn markdown_table(
    records: &[Record],
    scenario: Scenario,
    sizes: &[usize],
    systems: &[System],
) -> String {
    let rows = table_cells(records, scenario, sizes, systems, "×");
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let _ = writeln!(out, "| {} |", row.join(" | "));
        if i == 0 {
            let aligns: Vec<&str> = row
                .iter()
                .enumerate()
                .map(|(c, _)| if c == 0 { "---" } else { "---:" })
                .collect();
            let _ = writeln!(out, "| {} |", aligns.join(" | "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_numbers() {
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(256 << 20), "256 MiB");
        assert_eq!(format_us(1234.0), "1.23");
        assert_eq!(format_us(123_456.0), "123.5");
        assert_eq!(format_us(12_345_678.0), "12,346");
    }
}
