//! The "What is judged" tables of `docs/verify.md`, generated from the one knob table and
//! the measures' declarations (a test keeps the page equal to them).

use std::fmt::Write as _;

use super::KNOBS;
use crate::signals::measure::Measure;

/// Where the generated part of `docs/verify.md` starts and ends.
pub(crate) const BEGIN: &str = "<!-- judged-table:begin (generated from tuning::KNOBS and Measure::declared; TUNEPROBE_BLESS=1 cargo test -p probe-user reference rewrites it) -->";
pub(crate) const END: &str = "<!-- judged-table:end -->";

/// The knobs with their measures and why, then every measure with its load and source.
pub(crate) fn judged_tables() -> String {
    let mut out = String::from("| knob | judged on (per load) | why |\n|---|---|---|\n");
    for knob in KNOBS {
        let names: Vec<String> = std::iter::once(knob.name)
            .chain(knob.aliases.iter().copied())
            .map(|n| format!("`{n}`"))
            .collect();
        let measures = if knob.judged_by.is_empty() {
            "nothing".to_string()
        } else {
            let names: Vec<String> = knob
                .judged_by
                .iter()
                .map(|m| match m.load() {
                    Some(load) => format!("`{}` per `{load}`", m.name()),
                    None => format!("`{}`", m.name()),
                })
                .collect();
            names.join(", ")
        };
        let why = knob.why.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "| {} | {measures} | {why} |", names.join(", "));
    }
    out.push_str(
        "\n| measure | what it counts | load (per interval) | from |\n|---|---|---|---|\n",
    );
    for measure in Measure::ALL {
        let d = measure.declared();
        let what = if d.judged {
            d.what.to_string()
        } else {
            format!("{} (context for notes, never judged)", d.what)
        };
        let load = d
            .load
            .map_or_else(|| "none".to_string(), |l| format!("`{l}`"));
        let _ = writeln!(
            out,
            "| `{}` | {what} | {load} | {} |",
            measure.name(),
            d.source
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_judged_knob_says_why_and_every_measure_is_described() {
        for knob in KNOBS {
            assert!(!knob.why.is_empty(), "{}", knob.name);
            // The words the inventory shows are the measures' own.
            for m in knob.judged_by {
                assert!(knob.signal().contains(m.declared().what), "{}", knob.name);
                assert!(m.declared().judged, "{} judged on context", knob.name);
            }
        }
        for m in Measure::ALL {
            assert!(!m.declared().what.is_empty() && !m.declared().source.is_empty());
        }
    }
}
