//! The fleet report as a table and as an SVG picture: canary and control, before and
//! after, on one axis per verdict.

use std::fmt::Write as _;

use crate::views::plot::{Heading, box_row, escape, number, write_axis};

use super::{FleetReport, FleetVerdict};

fn time(t: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), number)
}

fn row(out: &mut String, v: &FleetVerdict) {
    let c = &v.did;
    let ci = if c.ci95[0].is_finite() {
        format!("[{}, {}]", number(c.ci95[0]), number(c.ci95[1]))
    } else {
        "-".into()
    };
    // Four decimals as `verify` prints them; smaller p-values are not 0.
    let p = match c.p_value {
        p if !p.is_finite() => "-".into(),
        p if p < 0.0001 => "<0.0001".into(),
        p => format!("{p:.4}"),
    };
    let load = v
        .relative_load_change
        .map_or_else(|| "-".into(), |r| format!("x{r:.2}"));
    let _ = writeln!(
        out,
        "{:<44} {:<20} {:>8} {:>8} {:>8} {:>8} {:>9} {:>20} {:>7} {:>6}  {}",
        v.group,
        v.signal.name(),
        opt(v.canary.before),
        opt(v.canary.after),
        opt(v.control.before),
        opt(v.control.after),
        if c.effect.is_finite() {
            number(c.effect)
        } else {
            "-".into()
        },
        ci,
        p,
        load,
        crate::output::serde_name(&c.verdict)
    );
}

/// The header (what changed where), one row per verdict, the overall rows, and notes.
pub fn table(report: &FleetReport) -> String {
    let mut out = String::new();
    let what = report
        .knob
        .as_deref()
        .map_or_else(|| "change".to_string(), str::to_string);
    let canary: Vec<String> = report
        .canary
        .iter()
        .map(|c| format!("{} at {}", c.node, time(c.changed_at)))
        .collect();
    let _ = writeln!(
        out,
        "fleet verify: {what} on {} canary node(s): {}",
        report.canary.len(),
        canary.join(", ")
    );
    let _ = writeln!(
        out,
        "control: {} node(s): {}; windows {}s before, {}s after, every {}s; from {}",
        report.control.len(),
        report.control.join(", "),
        report.windows.before_s,
        report.windows.after_s,
        report.windows.interval_s,
        report.prometheus
    );
    let _ = writeln!(
        out,
        "\n{:<44} {:<20} {:>8} {:>8} {:>8} {:>8} {:>9} {:>20} {:>7} {:>6}  VERDICT",
        "GROUP", "SIGNAL", "CANARY", "AFTER", "CONTROL", "AFTER", "DiD", "95% CI", "P", "LOAD"
    );
    for v in report.verdicts.iter().chain(&report.overall) {
        row(&mut out, v);
    }
    // The store's answer in part comes first: it bears on every verdict above.
    let notes: Vec<String> = report
        .partial
        .iter()
        .map(|p| format!("partial data: {p}"))
        .chain(report.notes.iter().cloned())
        .chain(report.verdicts.iter().chain(&report.overall).flat_map(|v| {
            v.notes
                .iter()
                .map(move |n| format!("{} {}: {n}", v.group, v.signal.name()))
        }))
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            let _ = writeln!(out, "note: {note}");
        }
    }
    out
}

/// The SVG's width, one panel's height, and the margins left and right of the axis.
const WIDTH: f64 = 760.0;
const PANEL: f64 = 210.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 30.0;

/// One panel per verdict: four rows (canary before and after, control before and after)
/// of points over box plots on one shared axis, the verdict in the title.
pub fn svg(report: &FleetReport) -> String {
    let verdicts: Vec<&FleetVerdict> = report.verdicts.iter().chain(&report.overall).collect();
    let height = 50.0 + PANEL * verdicts.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let title = format!(
        "fleet verify: {} — canary {} against control {}",
        report.knob.as_deref().unwrap_or("change"),
        report
            .canary
            .iter()
            .map(|c| c.node.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        report.control.join(", ")
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(&title)
    );
    if verdicts.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="10" y="60">no canary pod had samples</text>"#
        );
    }
    for (i, v) in verdicts.iter().enumerate() {
        svg_panel(&mut out, 40.0 + PANEL * i as f64, v);
    }
    out.push_str("</svg>\n");
    out
}

/// The panel of one verdict at `top`: its group and verdict, the shared axis, a row of
/// points over a box plot for each group and window.
fn svg_panel(out: &mut String, top: f64, v: &FleetVerdict) {
    let rows = [
        ("canary before", &v.samples.canary.before, "#d62728"),
        ("canary after", &v.samples.canary.after, "#2ca02c"),
        ("control before", &v.samples.control.before, "#7f7f7f"),
        ("control after", &v.samples.control.after, "#1f77b4"),
    ];
    let (lo, hi) = rows
        .iter()
        .flat_map(|(_, values, _)| values.iter().copied())
        .filter(|x| x.is_finite())
        .fold((0.0f64, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let x = |value: f64| LEFT + (value - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT);
    let c = &v.did;
    let heading = Heading {
        title: &v.group,
        signal: &v.signal.name(),
        verdict: &crate::output::serde_name(&c.verdict),
        effect_name: "difference in differences",
        effect: c.effect,
        ci95: c.ci95,
        p_value: c.p_value,
    };
    heading.write(out, top);
    write_axis(out, top + 196.0, (LEFT, WIDTH - RIGHT), (lo, hi));
    for (row, (name, values, colour)) in rows.into_iter().enumerate() {
        let y = top + 56.0 + 36.0 * row as f64;
        box_row(out, y, name, values, colour, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fleet::{
            By, CanaryNode, SideSamples, VerdictSamples, WindowLengths,
            did::{self, Paired},
        },
        signals::measure::Measure,
    };

    fn report() -> FleetReport {
        let paired = |canary: f64| Paired {
            canary,
            control: 0.8,
            canary_load: Some(100.0),
            control_load: Some(100.0),
        };
        let windows = did::Windows {
            before: vec![paired(0.8); 6],
            after: vec![paired(0.1); 6],
        };
        let j = did::judge(&windows, true, Some("cfs_periods"));
        let column = |w: &[Paired]| w.iter().map(|p| p.canary).collect::<Vec<_>>();
        let verdict = |group: &str| FleetVerdict {
            group: group.into(),
            node: Some("n<1>".into()),
            namespace: None,
            workload: None,
            pod: None,
            container: None,
            signal: Measure::CpuThrottledRatio,
            load: Some("cfs_periods"),
            canary_pods: 1,
            control_pods: 1,
            control_nodes: vec!["n2".into()],
            did: j.did,
            canary: j.canary.clone(),
            control: j.control.clone(),
            relative_load_change: j.relative_load_change,
            load_changed: false,
            control_moved: false,
            notes: vec!["a note".into()],
            samples: VerdictSamples {
                canary: SideSamples {
                    before: column(&windows.before),
                    after: column(&windows.after),
                },
                control: SideSamples {
                    before: vec![0.8; 6],
                    after: vec![0.8; 6],
                },
                difference: SideSamples::default(),
            },
        };
        FleetReport {
            prometheus: "http://p:9090".into(),
            knob: Some("cpu.max".into()),
            at: None,
            windows: WindowLengths {
                before_s: 60.0,
                after_s: 60.0,
                interval_s: 10.0,
            },
            by: By::Pod,
            signals: vec![Measure::CpuThrottledRatio],
            canary: vec![CanaryNode {
                node: "n<1>".into(),
                changed_at: 1_796_000_000.0,
                changes: Some(1),
            }],
            control: vec!["n2".into()],
            notes: vec![],
            partial: vec!["store b unavailable (answering `q`)".into()],
            overall: vec![verdict("overall")],
            verdicts: vec![verdict("shop/api-1/server@n<1>")],
        }
    }

    #[test]
    fn table_rows_and_notes() {
        let text = table(&report());
        assert!(
            text.starts_with("fleet verify: cpu.max on 1 canary node(s): n<1> at 2026-"),
            "{text}"
        );
        let rows: Vec<&str> = text.lines().filter(|l| l.ends_with("improved")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].starts_with("shop/api-1/server@n<1>") && rows[1].starts_with("overall"));
        assert!(
            rows[0].contains("-0.70") && rows[0].contains("x1.00"),
            "{text}"
        );
        assert!(
            text.contains("note: overall cpu_throttled_ratio: a note"),
            "{text}"
        );
        assert!(
            text.contains("\nnote: partial data: store b unavailable (answering `q`)\n"),
            "{text}"
        );
    }

    #[test]
    fn svg_has_four_rows_per_panel_and_escapes() {
        let svg = svg(&report());
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("n&lt;1&gt;") && !svg.contains("n<1>"));
        // Two panels of 4 x 6 points.
        assert_eq!(svg.matches("<circle").count(), 2 * 4 * 6);
        assert_eq!(svg.matches(">control after<").count(), 2);
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }
}
