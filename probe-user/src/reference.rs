//! The generated references of the manual, kept equal to the code by tests, as the judged
//! tables of `docs/verify.md` are (`tuning/docs.rs`):
//!
//! - `docs/metrics.md`: every metric family `serve` exports, with its type, label names
//!   and help, from the exporter's own families for a populated sample snapshot;
//! - `docs/json.md`: every key of `snapshot --json` with its JSON type, from the same
//!   sample; the meanings are written by hand in the same table, and the test fails when
//!   a key has no row or a row names a key that no longer exists;
//! - `deploy/prometheus/fleet-rules.yaml`, `deploy/prometheus/alerts.yaml`, the `alerts`
//!   component's PrometheusRule and the alerts' table of `docs/deployment.md`, from
//!   `fleet/rules.rs` and `fleet/alerts.rs`.
//!
//! `TUNEPROBE_BLESS=1 cargo test -p probe-user reference` rewrites them (keeping the
//! meanings written for keys that still exist). A third test checks that every
//! repository path the README and `docs/` name exists.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use prometheus::proto::{MetricFamily, MetricType};
use serde_json::Value;

use crate::{
    report::{Snapshot, tests::sample},
    tuning,
    verify::{Expectation, Watcher, Windows},
    views::metrics::Exporter,
    workloads::identity::Identity,
};

const METRICS_PAGE: &str = "docs/metrics.md";
const METRICS_BEGIN: &str = "<!-- metrics-reference:begin (generated from the exporter's families for a sample snapshot; TUNEPROBE_BLESS=1 cargo test -p probe-user reference rewrites it) -->";
const METRICS_END: &str = "<!-- metrics-reference:end -->";

const JSON_PAGE: &str = "docs/json.md";
const JSON_BEGIN: &str = "<!-- json-reference:begin (keys and types generated from a sample snapshot, meanings written by hand; TUNEPROBE_BLESS=1 cargo test -p probe-user reference adds and removes rows) -->";
const JSON_END: &str = "<!-- json-reference:end -->";
/// The meaning a blessed row gets for a new key, which the test then refuses.
const RULES_FILE: &str = "deploy/prometheus/fleet-rules.yaml";
const RULES_BEGIN: &str = "# rules:begin (generated from the measures' declarations; TUNEPROBE_BLESS=1 cargo test -p probe-user reference rewrites it)";
const RULES_END: &str = "# rules:end";
const ALERTS_FILE: &str = "deploy/prometheus/alerts.yaml";
const ALERTS_RULE: &str = "deploy/components/alerts/prometheusrule.yaml";
const ALERTS_BEGIN: &str = "# alerts:begin (generated from the advice rules and the measures' declarations; TUNEPROBE_BLESS=1 cargo test -p probe-user reference rewrites it)";
const ALERTS_END: &str = "# alerts:end";
const ALERTS_PAGE: &str = "docs/deployment.md";
const ALERTS_TABLE_BEGIN: &str = "<!-- alerts:begin (generated from the advice rules and the measures' declarations; TUNEPROBE_BLESS=1 cargo test -p probe-user reference rewrites it) -->";
const ALERTS_TABLE_END: &str = "<!-- alerts:end -->";

const UNDESCRIBED: &str = "TODO: describe";

/// Objects whose keys are data (map names, drop reasons, response codes, query types,
/// resolvers), listed as `*`.
const DATA_KEYED: [&str; 6] = [
    "map_overflows",
    "gc_deleted_entries",
    "by_reason",
    "by_rcode",
    "by_qtype",
    "by_resolver",
];

/// The labels every per-workload series carries, shown as one word in the reference.
const WORKLOAD_LABELS: [&str; 4] = ["namespace", "pod", "container", "cgroup"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn blessing() -> bool {
    std::env::var_os("TUNEPROBE_BLESS").is_some()
}

/// The text between the begin marker's line and the end marker of `page`, as
/// (start, end) byte offsets.
fn generated_part(page: &str, begin: &str, end: &str, name: &str) -> (usize, usize) {
    let start = page
        .find(begin)
        .unwrap_or_else(|| panic!("{name} has no begin marker"))
        + begin.len();
    let stop = page
        .find(end)
        .unwrap_or_else(|| panic!("{name} has no end marker"));
    assert!(start <= stop, "{name}'s markers are out of order");
    (start, stop)
}

/// Rewrites the generated part of `name` when blessing; otherwise fails at the first line
/// that differs.
fn check_or_bless(name: &str, begin: &str, end: &str, generated: &str) {
    let path = root().join(name);
    let page = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let (start, stop) = generated_part(&page, begin, end, name);
    let generated = format!("\n{generated}");
    if blessing() {
        let updated = format!("{}{generated}{}", &page[..start], &page[stop..]);
        fs::write(&path, updated).unwrap();
        return;
    }
    let current = &page[start..stop];
    if current != generated {
        let first = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(generated.lines().count()));
        panic!(
            "{name} differs from the code from line {} of its generated part:\n  page: {}\n  code: {}\n\
             run TUNEPROBE_BLESS=1 cargo test -p probe-user reference",
            first + 1,
            current.lines().nth(first).unwrap_or("(end)"),
            generated.lines().nth(first).unwrap_or("(end)"),
        );
    }
}

#[test]
fn reference_judged_tables_of_the_verify_page_are_generated_from_the_declarations() {
    use crate::tuning::docs;
    check_or_bless(
        "docs/verify.md",
        docs::BEGIN,
        docs::END,
        &docs::judged_tables(),
    );
}

#[test]
fn reference_advice_rules_of_the_advise_page_are_generated_from_the_table() {
    use crate::advise::docs;
    check_or_bless(
        "docs/advise.md",
        docs::BEGIN,
        docs::END,
        &docs::rules_table(),
    );
}

/// A snapshot for the watcher: one named container throttled in `throttled` of `periods`.
fn throttled(periods: u64, throttled: u64) -> Snapshot {
    let identity = Identity {
        cgroup_path: Some("/kubepods/burstable/pod0b5a/4f2a".into()),
        namespace: Some("shop".into()),
        pod: Some("api-7f9c4".into()),
        container: Some("server".into()),
        ..Identity::default()
    };
    crate::report::tests::throttled(identity, periods, throttled)
}

fn setting(knob: &str, value: &str, recommended: Option<&str>) -> tuning::Setting {
    tuning::Setting {
        knob: knob.into(),
        value: value.into(),
        recommended: recommended.map(str::to_string),
        deviates: recommended.map(|_| true),
        signal: String::new(),
    }
}

/// An inventory with a setting at every scope, an unreadable node knob and a network
/// namespace that could not be entered; `quota` is the container's `cpu.max` quota.
fn inventory(quota: &str) -> tuning::Inventory {
    tuning::Inventory {
        node: vec![setting("vm.swappiness", "60", Some("1-10"))],
        node_unreadable: vec![tuning::Unreadable {
            knob: "net.core.netdev_max_backlog".into(),
            reason: "exists only in the node's own network namespace".into(),
        }],
        netns: vec![
            tuning::NetnsSettings {
                netns: 4_026_531_840,
                owner: Some("/".into()),
                settings: vec![setting("net.core.somaxconn", "4096", Some(">= 65535"))],
                error: None,
            },
            tuning::NetnsSettings {
                netns: 4_026_532_175,
                owner: Some("/kubepods/burstable/pod0b5a".into()),
                settings: vec![],
                error: Some("entering it needs CAP_SYS_ADMIN".into()),
            },
        ],
        devices: vec![tuning::DeviceSettings {
            device: "loop0".into(),
            settings: vec![setting("queue/nr_requests", "128", None)],
        }],
        mounts: vec![],
        cgroups: vec![tuning::CgroupSettings {
            cgroup_path: "/kubepods/burstable/pod0b5a/4f2a".into(),
            settings: vec![setting("cpu.max", &format!("{quota} 100000"), None)],
        }],
    }
}

/// The families `serve` exports for the sample snapshot, with a tuning inventory and a
/// watcher that has judged one change, with a prediction (`serve --expect`).
fn exported_families() -> Vec<MetricFamily> {
    let mut watcher = Watcher::new(Windows {
        before: Duration::from_secs(10),
        after: Duration::from_secs(10),
        interval: Duration::from_secs(1),
    })
    .expecting(vec![
        Expectation::parse("cpu_throttled_ratio:lower:50%").unwrap(),
    ]);
    for i in 0..=21u64 {
        // Throttled 9 of 10 periods until the quota is raised at i = 11.
        let (count, quota) = if i <= 10 {
            (9 * i, "20000")
        } else {
            (90, "100000")
        };
        watcher.observe(throttled(10 * i, count), inventory(quota), i as f64);
    }
    assert!(!watcher.recent.is_empty(), "the watcher judged the change");
    let adviser = crate::advise::tests::sample_adviser();
    Exporter::new(100, &[]).families(
        &sample(),
        Some(&inventory("100000")),
        Some(&watcher),
        Some(&adviser),
        0.01,
    )
}

fn kind(family: &MetricFamily) -> &'static str {
    match family.get_field_type() {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

/// Label names of a family, in the order its series carry them.
fn label_names(family: &MetricFamily) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for metric in family.get_metric() {
        for label in metric.get_label() {
            if !names.iter().any(|n| n == label.name()) {
                names.push(label.name().to_string());
            }
        }
    }
    names
}

/// The metrics table: one row per family, sorted by name.
fn metrics_table(families: &[MetricFamily]) -> String {
    let mut out = String::from("| metric | type | labels | help |\n|---|---|---|---|\n");
    for family in families {
        let names = label_names(family);
        let per_workload = WORKLOAD_LABELS.iter().all(|w| names.iter().any(|n| n == w));
        let mut cells: Vec<String> = Vec::new();
        if per_workload {
            cells.push("*workload*".into());
        }
        cells.extend(
            names
                .iter()
                .filter(|n| !per_workload || !WORKLOAD_LABELS.contains(&n.as_str()))
                .map(|n| format!("`{n}`")),
        );
        let labels = if cells.is_empty() {
            "(none)".to_string()
        } else {
            cells.join(", ")
        };
        let help = family.help().replace('|', "\\|");
        let _ = writeln!(
            out,
            "| `{}` | {} | {labels} | {help} |",
            family.name(),
            kind(family)
        );
    }
    out
}

/// The families `tests/tests/golden.rs` pins (its `METRICS` table).
fn golden_families() -> BTreeSet<String> {
    let golden = fs::read_to_string(root().join("tests/tests/golden.rs")).unwrap();
    let start = golden.find("const METRICS").expect("golden.rs has METRICS");
    let table = &golden[start..];
    let table = &table[..table.find("\n];").expect("METRICS ends")];
    table
        .split('"')
        .filter(|s| s.starts_with("tuneprobe_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn reference_metrics_page_lists_every_family_the_exporter_makes() {
    let families = exported_families();
    let names: BTreeSet<String> = families.iter().map(|f| f.name().to_string()).collect();
    // The sample must make every family the end-to-end golden test sees from the kernel.
    let missing: Vec<_> = golden_families().difference(&names).cloned().collect();
    assert!(
        missing.is_empty(),
        "the sample makes none of {missing:?}: extend report::tests::sample()"
    );
    for family in &families {
        assert!(!family.help().is_empty(), "{} has no help", family.name());
    }
    check_or_bless(
        METRICS_PAGE,
        METRICS_BEGIN,
        METRICS_END,
        &metrics_table(&families),
    );
}

/// The JSON type of a value, as the reference names it.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key path below `value` with the types seen there, in the order they first
/// appear (`workloads[].tcp.retransmits`; data keys as `*`).
fn key_paths(value: &Value, path: &str, out: &mut Vec<(String, BTreeSet<&'static str>)>) {
    if !path.is_empty() {
        match out.iter_mut().find(|(p, _)| p == path) {
            Some((_, types)) => {
                types.insert(json_type(value));
            }
            None => out.push((path.to_string(), BTreeSet::from([json_type(value)]))),
        }
    }
    match value {
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{path}[]"), out);
            }
        }
        Value::Object(fields) => {
            let data_keyed = DATA_KEYED
                .iter()
                .any(|k| path.rsplit('.').next() == Some(k));
            for (key, field) in fields {
                let key = if data_keyed { "*" } else { key.as_str() };
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                key_paths(field, &child, out);
            }
        }
        _ => {}
    }
}

/// The types seen at a key, as one cell: `integer`, `number or null`, ...
fn type_cell(types: &BTreeSet<&'static str>) -> String {
    let mut types = types.clone();
    if types.contains("number") {
        types.remove("integer");
    }
    let order = [
        "object", "array", "string", "integer", "number", "boolean", "null",
    ];
    order
        .iter()
        .filter(|t| types.contains(*t))
        .copied()
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The generated (key, type) rows of `snapshot --json`.
fn json_keys() -> Vec<(String, String)> {
    let json = serde_json::to_value(sample()).unwrap();
    let mut paths = Vec::new();
    key_paths(&json, "", &mut paths);
    paths
        .into_iter()
        .map(|(path, types)| (path, type_cell(&types)))
        .collect()
}

/// The rows of the page's table: key -> (type, meaning), and the keys in page order.
fn json_rows(part: &str) -> (BTreeMap<String, (String, String)>, Vec<String>) {
    let mut rows = BTreeMap::new();
    let mut order = Vec::new();
    for line in part.lines().filter(|l| l.starts_with("| `")) {
        let cells = line
            .strip_prefix("| ")
            .and_then(|l| l.strip_suffix(" |"))
            .unwrap_or_else(|| panic!("not a table row: {line}"));
        let mut cells = cells.splitn(3, " | ");
        let key = cells
            .next()
            .unwrap_or_default()
            .trim_matches('`')
            .to_string();
        let kind = cells.next().unwrap_or_default().to_string();
        let meaning = cells.next().unwrap_or_default().to_string();
        order.push(key.clone());
        rows.insert(key, (kind, meaning));
    }
    (rows, order)
}

#[test]
fn reference_json_page_has_a_row_for_every_key_and_no_other() {
    let keys = json_keys();
    // A key the sample only ever has as null says nothing of its type: fill it in.
    let null_only: Vec<_> = keys.iter().filter(|(_, t)| t == "null").collect();
    assert!(
        null_only.is_empty(),
        "always null in the sample: {null_only:?}"
    );
    let path = root().join(JSON_PAGE);
    let page = fs::read_to_string(&path).unwrap();
    let (start, stop) = generated_part(&page, JSON_BEGIN, JSON_END, JSON_PAGE);
    let (rows, order) = json_rows(&page[start..stop]);
    let mut table = String::from("| key | type | meaning |\n|---|---|---|\n");
    for (key, kind) in &keys {
        let meaning = rows
            .get(key)
            .map_or(UNDESCRIBED, |(_, meaning)| meaning.as_str());
        let _ = writeln!(table, "| `{key}` | {kind} | {meaning} |");
    }
    if blessing() {
        check_or_bless(JSON_PAGE, JSON_BEGIN, JSON_END, &table);
        return;
    }
    let generated: Vec<&String> = keys.iter().map(|(k, _)| k).collect();
    let missing: Vec<_> = generated
        .iter()
        .filter(|k| !rows.contains_key(k.as_str()))
        .collect();
    let stale: Vec<_> = order.iter().filter(|k| !generated.contains(k)).collect();
    let retyped: Vec<_> = keys
        .iter()
        .filter_map(|(k, t)| {
            let (page_type, _) = rows.get(k)?;
            (page_type != t).then(|| format!("{k}: page {page_type}, code {t}"))
        })
        .collect();
    let undescribed: Vec<_> = rows
        .iter()
        .filter(|(_, (_, m))| m.trim().is_empty() || m.starts_with("TODO"))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty() && retyped.is_empty() && undescribed.is_empty(),
        "{JSON_PAGE} does not match `snapshot --json`:\n  keys without a row: {missing:?}\n  \
         rows of keys that no longer exist: {stale:?}\n  types changed: {retyped:?}\n  \
         rows without a meaning: {undescribed:?}\n\
         run TUNEPROBE_BLESS=1 cargo test -p probe-user reference, then describe the new keys"
    );
    // Same rows, same order as the code gives them.
    check_or_bless(JSON_PAGE, JSON_BEGIN, JSON_END, &table);
}

/// Top-level directories whose paths the pages name from the repository root.
const TOP_LEVEL: [&str; 8] = [
    "probe-user/",
    "probe-ebpf/",
    "probe-common/",
    "xtask/",
    "tests/",
    "deploy/",
    "lab/",
    "docs/",
];

/// `probe-user/src/`'s module directories, which the pages also name from there
/// (`signals/measure.rs`).
const MODULES: [&str; 9] = [
    "kernel/",
    "workloads/",
    "signals/",
    "tuning/",
    "verify/",
    "views/",
    "fleet/",
    "cli/",
    "output/",
];

/// A heading's anchor, as GitHub makes it.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Everything a page names: (path in backticks, relative to the root) and (link target,
/// relative to the page), outside fenced code.
fn named_paths(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut quoted, mut links) = (Vec::new(), Vec::new());
    // The prose: everything outside fenced code, whose inline code may span lines.
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    for (i, span) in prose.split('`').enumerate() {
        if i % 2 == 0 {
            // Outside backticks: links.
            let mut rest = span;
            while let Some(at) = rest.find("](") {
                let after = &rest[at + 2..];
                let Some(end) = after.find(')') else { break };
                links.push(after[..end].to_string());
                rest = &after[end..];
            }
        } else {
            for word in span.split_whitespace() {
                let word = word.trim_end_matches([',', ';', ':', ')', '.']);
                if word.contains(['<', '*', '{', '…']) || word.contains("...") {
                    continue;
                }
                if TOP_LEVEL.iter().any(|top| word.starts_with(top)) {
                    quoted.push(word.to_string());
                } else if MODULES.iter().any(|module| word.starts_with(module)) {
                    quoted.push(format!("probe-user/src/{word}"));
                }
            }
        }
    }
    (quoted, links)
}

fn anchors_of(page: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(page).unwrap_or_default();
    let mut fenced = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            anchors.insert(anchor(line.trim_start_matches('#')));
        }
    }
    anchors
}

#[test]
fn reference_pages_name_only_paths_that_exist() {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut stale = Vec::new();
    for page in &pages {
        let text = fs::read_to_string(page).unwrap();
        let name = page
            .strip_prefix(&root)
            .unwrap_or(page)
            .display()
            .to_string();
        let (quoted, links) = named_paths(&text);
        for path in quoted {
            if !root.join(&path).exists() {
                stale.push(format!("{name}: `{path}`"));
            }
        }
        for link in links {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !target.exists() {
                stale.push(format!("{name}: link ({link})"));
            } else if !fragment.is_empty()
                && target.extension().is_some_and(|e| e == "md")
                && !anchors_of(&target).contains(fragment)
            {
                stale.push(format!("{name}: link ({link}) names no heading"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "names that do not exist:\n{}",
        stale.join("\n")
    );
}

/// The fleet recording rules: one per judged measure and its median, from the
/// declarations `fleet verify` queries by (`fleet/rules.rs`).
#[test]
fn reference_fleet_rules_are_generated_from_the_declarations() {
    // The end marker is indented as a list item of the group's rules.
    let rules = format!("{}      ", crate::fleet::rules::recording_rules());
    check_or_bless(RULES_FILE, RULES_BEGIN, RULES_END, &rules);
}

/// The alerts, in `alerts.yaml` and in the `alerts` component's PrometheusRule (the same
/// groups, indented as `spec.groups`), and their table in the docs (`fleet/alerts.rs`).
#[test]
fn reference_alerts_are_generated_from_the_advice_rules_and_declarations() {
    use crate::fleet::alerts;
    // Each end marker is indented as an item of the list before it.
    check_or_bless(
        ALERTS_FILE,
        ALERTS_BEGIN,
        ALERTS_END,
        &format!("{}  ", alerts::groups("  ")),
    );
    check_or_bless(
        ALERTS_RULE,
        ALERTS_BEGIN,
        ALERTS_END,
        &format!("{}    ", alerts::groups("    ")),
    );
    check_or_bless(
        ALERTS_PAGE,
        ALERTS_TABLE_BEGIN,
        ALERTS_TABLE_END,
        &alerts::docs_table(),
    );
}

const DASHBOARD: &str = "deploy/dashboards/tuneprobe.json";

/// Families no panel or rule shows, and why: everything else `serve` exports is on the
/// dashboard, in a recording rule or in an alert, so a new family is either shown or
/// listed here.
const NOT_SHOWN: &[(&str, &str)] = &[
    (
        "tuneprobe_cpu_throttle_events_total",
        "the load of the stall p99, which is on the stall panel",
    ),
    (
        "tuneprobe_dns_malformed_total",
        "zero unless something sends garbage to port 53: a query when DNS misbehaves, \
         not a graph",
    ),
    (
        "tuneprobe_gc_deleted_entries_total",
        "the agent's housekeeping, for debugging churn",
    ),
    (
        "tuneprobe_program_run_seconds_total",
        "exported only with --bpf-stats: benchmarks, not dashboards",
    ),
    (
        "tuneprobe_program_runs_total",
        "exported only with --bpf-stats: benchmarks, not dashboards",
    ),
    (
        "tuneprobe_tcp_failed_retransmits_total",
        "zero unless the device refuses a retransmit: a query, not a graph; the \
         retransmits themselves are shown",
    ),
    (
        "tuneprobe_tcp_retransmits_total",
        "the skbs behind the retransmitted segments, which are shown",
    ),
    (
        "tuneprobe_tuning_prediction",
        "exported only with serve --expect: one experiment's outcome, not a fleet's panel",
    ),
    (
        "tuneprobe_tuning_unreadable",
        "a knob the agent cannot read: `tuneprobe tuning` says which",
    ),
];

/// Every PromQL expression of the dashboard (panels in rows included, template variables).
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query", Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = fs::read_to_string(root().join(DASHBOARD)).unwrap();
    let mut out = Vec::new();
    walk(&serde_json::from_str(&text).unwrap(), &mut out);
    out
}

/// Whether `query` reads `family` (a histogram through its `_bucket`, `_sum` or `_count`).
fn reads(query: &str, family: &str) -> bool {
    query.match_indices(family).any(|(at, _)| {
        let rest = &query[at + family.len()..];
        let rest = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| rest.strip_prefix(s))
            .unwrap_or(rest);
        !rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[test]
fn reference_every_exported_family_is_on_the_dashboard_in_a_rule_or_listed_as_not_shown() {
    let mut queries = dashboard_queries();
    queries.push(fs::read_to_string(root().join(RULES_FILE)).unwrap());
    queries.push(fs::read_to_string(root().join(ALERTS_FILE)).unwrap());
    let mut unshown = Vec::new();
    for family in exported_families() {
        let name = family.name();
        let shown = queries.iter().any(|q| reads(q, name));
        let listed = NOT_SHOWN.iter().any(|(n, _)| *n == name);
        assert!(
            !(shown && listed),
            "{name} is shown but also listed in NOT_SHOWN"
        );
        if !shown && !listed {
            unshown.push(name.to_string());
        }
    }
    assert!(
        unshown.is_empty(),
        "families on no panel of {DASHBOARD}, in no rule of {RULES_FILE} or {ALERTS_FILE} \
         and not in NOT_SHOWN:\n{}",
        unshown.join("\n")
    );
    for (name, _) in NOT_SHOWN {
        assert!(
            exported_families().iter().any(|f| f.name() == *name),
            "NOT_SHOWN names {name}, which is not exported"
        );
    }
}
