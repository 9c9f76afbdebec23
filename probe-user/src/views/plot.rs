//! Before/after pictures of a verdict's per-interval samples: box plots on a shared axis,
//! drawn as text for the terminal and as SVG for a file.

use std::fmt::Write as _;

use crate::verify::WorkloadVerdict;

/// Five-number summary: minimum, quartiles, median, maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub(crate) min: f64,
    pub(crate) q1: f64,
    pub(crate) median: f64,
    pub(crate) q3: f64,
    pub(crate) max: f64,
}

impl Summary {
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let position = q * (v.len() - 1) as f64;
            let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (position - lo as f64)
        };
        Some(Self {
            min: v[0],
            q1: at(0.25),
            median: at(0.5),
            q3: at(0.75),
            max: v[v.len() - 1],
        })
    }
}

/// The shared axis of both windows: from 0 (or the smallest sample, if negative) to the
/// largest sample.
fn axis(verdict: &WorkloadVerdict) -> (f64, f64) {
    let all = verdict
        .samples
        .before
        .iter()
        .chain(&verdict.samples.after)
        .copied()
        .filter(|x| x.is_finite());
    let (lo, hi) = all.fold((0.0f64, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if hi > lo { (lo, hi) } else { (lo, lo + 1.0) }
}

pub(crate) fn number(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Two box plots on one axis, `width` characters wide:
///
/// ```text
///           0                                          0.93
///  before   |                         ├──────[███|████]──┤
///  after    ┃
/// ```
pub(crate) fn terminal(verdict: &WorkloadVerdict, width: usize) -> String {
    let width = width.max(20);
    let (lo, hi) = axis(verdict);
    let column = |x: f64| (((x - lo) / (hi - lo)) * (width - 1) as f64).round() as usize;
    let mut out = String::new();
    let left = number(lo);
    let right = number(hi);
    let _ = writeln!(
        out,
        "          {left}{}{right}",
        " ".repeat(width.saturating_sub(left.len() + right.len()))
    );
    for (label, values) in [
        ("before", &verdict.samples.before),
        ("after", &verdict.samples.after),
    ] {
        let mut row = vec![' '; width];
        if let Some(s) = Summary::of(values) {
            let (min, q1, median, q3, max) = (
                column(s.min),
                column(s.q1),
                column(s.median),
                column(s.q3),
                column(s.max),
            );
            for c in &mut row[min..=max] {
                *c = '─';
            }
            for c in &mut row[q1..=q3] {
                *c = '█';
            }
            row[min] = '├';
            row[max] = '┤';
            row[median] = if min == max { '┃' } else { '|' };
        }
        let median = Summary::of(values).map_or_else(|| "-".into(), |s| number(s.median));
        let _ = writeln!(
            out,
            "  {label:<7} {}  median {median} ({} samples)",
            row.into_iter().collect::<String>(),
            values.len()
        );
    }
    out
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One panel per verdict: the before and after samples as points over box plots, the
/// verdict, effect and p-value in the title.
/// The two lines above a verdict's panel: what was judged, and the verdict with its
/// effect, confidence interval and p-value.
pub(crate) struct Heading<'a> {
    pub title: &'a str,
    pub signal: &'a str,
    pub verdict: &'a str,
    /// `effect`, or `difference in differences`.
    pub effect_name: &'a str,
    pub effect: f64,
    pub ci95: [f64; 2],
    pub p_value: f64,
}

impl Heading<'_> {
    pub(crate) fn write(&self, out: &mut String, top: f64) {
        let _ = writeln!(
            out,
            r#"<text x="10" y="{}" font-weight="bold">{}</text><text x="10" y="{}">{}: {} ({} {}, 95% CI [{}, {}], p = {:.4})</text>"#,
            top + 16.0,
            escape(self.title),
            top + 32.0,
            escape(self.signal),
            escape(self.verdict),
            self.effect_name,
            number(self.effect),
            number(self.ci95[0]),
            number(self.ci95[1]),
            self.p_value
        );
    }
}

/// A horizontal axis at `y` from `x.0` to `x.1`, labelled with its ends `range`.
pub(crate) fn write_axis(out: &mut String, y: f64, x: (f64, f64), range: (f64, f64)) {
    let _ = writeln!(
        out,
        r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#444"/><text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        x.0,
        x.1,
        x.0,
        y + 14.0,
        number(range.0),
        x.1,
        y + 14.0,
        number(range.1)
    );
}

pub(crate) fn svg(title: &str, verdicts: &[(String, &WorkloadVerdict)]) -> String {
    const WIDTH: f64 = 760.0;
    const PANEL: f64 = 150.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 30.0;
    let height = 50.0 + PANEL * verdicts.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    if verdicts.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="10" y="60">no workload had load on both sides of the change</text>"#
        );
    }
    for (i, (label, verdict)) in verdicts.iter().enumerate() {
        let top = 40.0 + PANEL * i as f64;
        let (lo, hi) = axis(verdict);
        let x = |v: f64| LEFT + (v - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT);
        let c = &verdict.comparison;
        let heading = Heading {
            title: label,
            signal: &verdict.signal.name(),
            verdict: &crate::output::serde_name(&c.verdict),
            effect_name: "effect",
            effect: c.effect,
            ci95: c.ci95,
            p_value: c.p_value,
        };
        heading.write(&mut out, top);
        write_axis(&mut out, top + 128.0, (LEFT, WIDTH - RIGHT), (lo, hi));
        for (row, (name, values, colour)) in [
            ("before", &verdict.samples.before, "#d62728"),
            ("after", &verdict.samples.after, "#2ca02c"),
        ]
        .into_iter()
        .enumerate()
        {
            let y = top + 60.0 + 38.0 * row as f64;
            box_row(&mut out, y, name, values, colour, x);
        }
    }
    out.push_str("</svg>\n");
    out
}

/// One row of a box plot: the name, the box (quartiles, median, whiskers to the
/// extremes) and every finite value as a point, at height `y`, with `x` mapping values to
/// the shared axis.
pub(crate) fn box_row(
    out: &mut String,
    y: f64,
    name: &str,
    values: &[f64],
    colour: &str,
    x: impl Fn(f64) -> f64,
) {
    let _ = writeln!(out, r#"<text x="10" y="{}">{name}</text>"#, y + 4.0);
    if let Some(s) = Summary::of(values) {
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}"/><rect x="{}" y="{}" width="{}" height="20" fill="{colour}" fill-opacity="0.25" stroke="{colour}"/><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" stroke-width="3"/>"#,
            x(s.min),
            x(s.max),
            x(s.q1),
            y - 10.0,
            (x(s.q3) - x(s.q1)).max(1.0),
            x(s.median),
            y - 10.0,
            x(s.median),
            y + 10.0
        );
    }
    for (j, v) in values.iter().enumerate().filter(|(_, v)| v.is_finite()) {
        // Spread the points vertically a little so equal values stay visible.
        let jitter = ((j * 7) % 11) as f64 - 5.0;
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
            x(*v),
            y + jitter
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        signals::measure::Measure, verify::SampleValues, verify::stats,
        workloads::identity::Identity,
    };

    fn verdict(before: Vec<f64>, after: Vec<f64>) -> WorkloadVerdict {
        WorkloadVerdict {
            workload: Identity {
                cgroup_path: Some("/pod/c".into()),
                ..Identity::default()
            },
            signal: Measure::CpuThrottledRatio,
            device: None,
            load: Measure::CpuThrottledRatio.load(),
            before: None,
            after: None,
            comparison: stats::compare(&before, &after, true),
            prediction: None,
            exploratory: false,
            load_change: None,
            load_changed: false,
            notes: vec![],
            listeners: vec![],
            samples: SampleValues { before, after },
        }
    }

    #[test]
    fn summaries() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, 5.0]).unwrap();
        assert_eq!(
            (s.min, s.q1, s.median, s.q3, s.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn terminal_boxes_sit_where_the_samples_are() {
        let v = verdict(vec![0.8, 0.9, 0.9, 1.0, 0.9], vec![0.0; 5]);
        let text = terminal(&v, 41);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].trim_start().starts_with('0') && lines[0].ends_with("1.00"),
            "{text}"
        );
        // Before: a box in the right part; after: a single bar at zero.
        let before: Vec<char> = lines[1].chars().skip(10).take(41).collect();
        let after: Vec<char> = lines[2].chars().skip(10).take(41).collect();
        assert_eq!(
            before[..32].iter().filter(|c| **c != ' ').count(),
            0,
            "{text}"
        );
        assert_eq!(before[40], '┤', "{text}");
        assert_eq!(after[0], '┃', "{text}");
        assert!(lines[1].ends_with("median 0.9000 (5 samples)"), "{text}");
        assert!(lines[2].ends_with("median 0 (5 samples)"), "{text}");
    }

    #[test]
    fn svg_is_well_formed_and_escaped() {
        let v = verdict(vec![1.0, 2.0, 3.0, 2.0, 2.0], vec![5.0, 6.0, 7.0, 6.0, 6.0]);
        let svg = svg("cpu.max <test>", &[("pod & c".into(), &v)]);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("cpu.max &lt;test&gt;") && svg.contains("pod &amp; c"));
        assert_eq!(svg.matches("<circle").count(), 10);
        assert!(svg.contains("regressed"));
        let opens = svg.matches('<').count();
        let closes = svg.matches('>').count();
        assert_eq!(opens, closes);
    }
}
