//! The plot: an SVG drawn by hand. One column per scenario; the top row is block size against
//! median µs (log-log), the bottom row the same medians divided by the floor's. One line per
//! system.

use std::fmt::Write as _;

use crate::report::{Record, size_label};
use crate::systems::{Scenario, System};

const PANEL_W: f64 = 470.0;
const PANEL_H: f64 = 330.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 28.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 48.0;
const TITLE_H: f64 = 26.0;
const LEGEND_H: f64 = 34.0;

fn style(system: System) -> (&'static str, &'static str, f64) {
    // (colour, dash pattern, stroke width)
    match system {
        System::Floor => ("#222222", "6 4", 2.0),
        System::Shalloc => ("#d62728", "", 3.0),
        System::ShallocFresh => ("#d62728", "5 3", 1.8),
        System::Pipe => ("#1f77b4", "", 1.8),
        System::IpcChannel => ("#2ca02c", "", 1.8),
        System::SharedMemory => ("#ff7f0e", "", 1.8),
        System::ShallocFill => ("#9467bd", "2 2", 2.0),
    }
}

/// A tick value as text: `1`, `20`, `5k`, `0.5`.
fn tick_label(value: f64) -> String {
    if value >= 1e6 {
        format!("{}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{}k", value / 1e3)
    } else {
        format!("{value}")
    }
}

/// One panel: `series` are (system, points of (size, value)); the y axis is logarithmic.
struct Panel<'a> {
    x0: f64,
    y0: f64,
    title: String,
    y_label: &'a str,
    series: Vec<(System, Vec<(usize, f64)>)>,
    /// Ticks at 1, 2 and 5 of every decade rather than at decades only.
    fine_ticks: bool,
}

fn draw_panel(out: &mut String, panel: &Panel<'_>, sizes: &[usize]) {
    let (min_size, max_size) = match (sizes.iter().min(), sizes.iter().max()) {
        (Some(&a), Some(&b)) if a > 0 && b > a => (a as f64, b as f64),
        _ => return,
    };
    let values: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(_, v)| *v))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return;
    }
    let d_lo = lo.log10().floor() as i32;
    let d_hi = (hi.log10().ceil() as i32).max(d_lo + 1);
    let (left, right) = (panel.x0 + LEFT, panel.x0 + PANEL_W - RIGHT);
    let (top, bottom) = (panel.y0 + TOP, panel.y0 + PANEL_H - BOTTOM);
    let x_of = |size: f64| {
        left + (size.log2() - min_size.log2()) / (max_size.log2() - min_size.log2())
            * (right - left)
    };
    let y_of =
        |v: f64| bottom - (v.log10() - f64::from(d_lo)) / f64::from(d_hi - d_lo) * (bottom - top);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        (left + right) / 2.0,
        top - 8.0,
        escape(&panel.title)
    );
    let multiples: &[f64] = if panel.fine_ticks {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    for d in d_lo..=d_hi {
        for &m in multiples {
            let v = m * 10f64.powi(d);
            if v > 10f64.powi(d_hi) * 1.0001 {
                continue;
            }
            let y = y_of(v);
            let colour = if m == 1.0 { "#d0d0d0" } else { "#eeeeee" };
            let _ = writeln!(
                out,
                r#"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="{colour}"/>"#
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                y + 4.0,
                tick_label(v)
            );
        }
    }
    for &size in sizes {
        let x = x_of(size as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#eeeeee"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            size_label(size)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#555555"/>"##,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">block size</text>"#,
        (left + right) / 2.0,
        bottom + 34.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        panel.x0 + 16.0,
        (top + bottom) / 2.0,
        escape(panel.y_label)
    );
    for (system, points) in &panel.series {
        let mut points: Vec<(f64, f64)> = points
            .iter()
            .filter(|(_, v)| *v > 0.0 && v.is_finite())
            .map(|&(size, v)| (x_of(size as f64), y_of(v)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if points.is_empty() {
            continue;
        }
        let (colour, dash, stroke) = style(*system);
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="{stroke}" stroke-dasharray="{dash}"><title>{}</title></polyline>"#,
            path.join(" "),
            system.name()
        );
        for (x, y) in &points {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
            );
        }
    }
}

/// The SVG of `records`: a column per scenario in `scenarios`, a line per system in `systems`.
pub fn svg(
    records: &[Record],
    scenarios: &[Scenario],
    sizes: &[usize],
    systems: &[System],
    title: &str,
) -> String {
    let width = PANEL_W * scenarios.len().max(1) as f64;
    let height = TITLE_H + 2.0 * PANEL_H + LEGEND_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    let median = |scenario: Scenario, size: usize, system: System| {
        records
            .iter()
            .find(|r| r.scenario == scenario && r.size == size && r.system == system)
            .map(|r| r.stats.median_ns)
    };
    for (p, &scenario) in scenarios.iter().enumerate() {
        let x0 = PANEL_W * p as f64;
        // One line per system: `value(size, system)` at every size that has one.
        let series = |value: &dyn Fn(usize, System) -> Option<f64>| {
            systems
                .iter()
                .map(|&system| {
                    let points = sizes
                        .iter()
                        .filter_map(|&size| Some((size, value(size, system)?)))
                        .collect();
                    (system, points)
                })
                .collect()
        };
        let absolute = series(&|size, system| Some(median(scenario, size, system)? / 1000.0));
        draw_panel(
            &mut out,
            &Panel {
                x0,
                y0: TITLE_H,
                title: format!("{}: median µs", scenario.name()),
                y_label: "median µs (log)",
                series: absolute,
                fine_ticks: false,
            },
            sizes,
        );
        let ratios = series(&|size, system| {
            let floor = median(scenario, size, System::Floor)?;
            Some(median(scenario, size, system)? / floor)
        });
        draw_panel(
            &mut out,
            &Panel {
                x0,
                y0: TITLE_H + PANEL_H,
                title: format!("{}: median ÷ floor's median", scenario.name()),
                y_label: "ratio to floor (log)",
                series: ratios,
                fine_ticks: true,
            },
            sizes,
        );
    }
    let legend_y = TITLE_H + 2.0 * PANEL_H + 12.0;
    let step = width / systems.len().max(1) as f64;
    for (i, &system) in systems.iter().enumerate() {
        let x = step * i as f64 + 20.0;
        let (colour, dash, stroke) = style(system);
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{legend_y}" x2="{:.1}" y2="{legend_y}" stroke="{colour}" stroke-width="{stroke}" stroke-dasharray="{dash}"/>"#,
            x + 28.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            x + 34.0,
            legend_y + 4.0,
            system.name()
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels() {
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(tick_label(5000.0), "5k");
        assert_eq!(tick_label(1e6), "1M");
    }
}
