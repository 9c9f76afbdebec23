//! Each workload's measures over the window, and the further conditions of the rules.

use std::{borrow::Cow, collections::BTreeMap};

use super::place::Place;
use crate::{
    report::{Snapshot, Workload},
    signals::{Sections, histogram, measure::Measure, tcp_connections::ConnectionReport},
    tuning::{Condition, Knob, Rule, knob_named},
};

/// One workload over the window: its sections at the start (empty when it appeared
/// later) and at the end, and at every interval in between.
pub(super) struct WindowValues<'a> {
    pub workload: &'a Workload,
    start: Cow<'a, Sections>,
    intervals: Vec<(&'a Sections, &'a Sections)>,
}

/// The snapshots of a window as the rules read them, oldest first: when each was taken
/// and every workload's sections by cgroup path; the workloads advised are the last
/// one's.
pub(crate) struct Window<'a> {
    /// `duration_s` of each snapshot.
    pub(crate) at_s: Vec<f64>,
    sections: Vec<BTreeMap<&'a str, &'a Sections>>,
    last: &'a [Workload],
}

impl<'a> Window<'a> {
    /// The window of whole snapshots.
    pub(crate) fn of_snapshots(snapshots: &'a [Snapshot]) -> Self {
        let sections = snapshots
            .iter()
            .map(|s| Self::by_path(s.workloads.iter().map(|w| (w, &w.signals))))
            .collect();
        Self {
            at_s: snapshots.iter().map(|s| s.duration_s).collect(),
            sections,
            last: snapshots.last().map_or(&[], |s| s.workloads.as_slice()),
        }
    }

    /// A window of `earlier` snapshots' sections (`duration_s`, then sections by cgroup
    /// path), ending with the workloads of `last` taken at `last_s`.
    pub(crate) fn of_sections(
        earlier: impl IntoIterator<Item = (f64, BTreeMap<&'a str, &'a Sections>)>,
        (last_s, last): (f64, &'a [Workload]),
    ) -> Self {
        let (mut at_s, mut sections): (Vec<f64>, Vec<_>) = earlier.into_iter().unzip();
        at_s.push(last_s);
        sections.push(Self::by_path(last.iter().map(|w| (w, &w.signals))));
        Self {
            at_s,
            sections,
            last,
        }
    }

    fn by_path(
        workloads: impl Iterator<Item = (&'a Workload, &'a Sections)>,
    ) -> BTreeMap<&'a str, &'a Sections> {
        workloads
            .filter_map(|(w, s)| Some((w.identity.cgroup_path.as_deref()?, s)))
            .collect()
    }

    /// From the first snapshot to the last, in seconds (0 without two).
    pub(crate) fn length_s(&self) -> Option<f64> {
        Some(self.at_s.last()? - self.at_s.first()?)
    }
}

/// Every workload of the last snapshot that has a cgroup path, over the window.
pub(super) fn window_values<'a>(window: &'a Window<'a>) -> Vec<WindowValues<'a>> {
    let find = |at: usize, path: &str| window.sections[at].get(path).copied();
    window
        .last
        .iter()
        .filter_map(|workload| {
            let path = workload.identity.cgroup_path.as_deref()?;
            let start =
                find(0, path).map_or_else(|| Cow::Owned(Sections::default()), Cow::Borrowed);
            let intervals = (1..window.sections.len())
                .filter_map(|at| Some((find(at - 1, path)?, find(at, path)?)))
                .collect();
            Some(WindowValues {
                workload,
                start,
                intervals,
            })
        })
        .collect()
}

impl WindowValues<'_> {
    /// `measure` over the window, with its load (0 for a measure without one): from
    /// its start, or from the first snapshot that had the measure's section (a cgroup's
    /// CPU limit is read once the cgroup is known).
    pub(super) fn window(&self, measure: Measure, device: Option<&str>) -> Option<(f64, f64)> {
        let now = &self.workload.signals;
        let (value, load) = std::iter::once(self.start.as_ref())
            .chain(self.intervals.iter().map(|(before, _)| *before))
            .find_map(|start| measure.sample(start, now, device))?;
        Some((value, load.unwrap_or(0.0)))
    }

    /// `measure` in each interval of the window (`None` where it had no load).
    pub(super) fn per_interval(&self, measure: Measure) -> Vec<Option<f64>> {
        self.intervals
            .iter()
            .map(|(b, a)| measure.sample(b, a, None).map(|(v, _)| v))
            .collect()
    }

    /// The devices a knob's symptom is measured on: each of the workload's block
    /// devices for a per-device measure, none otherwise.
    pub(super) fn devices_for(&self, knob: &Knob) -> Vec<Option<&str>> {
        match knob.advice {
            Some(rule) if rule.symptom.per_device() => self
                .workload
                .signals
                .block
                .iter()
                .map(|b| Some(b.device.as_str()))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => vec![None],
        }
    }
}

/// Whether the rule's further condition holds: `None` when it does not, otherwise what
/// it found (in words, with figures) if there is anything to say.
pub(super) fn condition(
    rule: &Rule,
    values: &WindowValues<'_>,
    device: Option<&str>,
    place: &Place,
) -> Option<Option<String>> {
    match rule.also {
        Condition::None => Some(None),
        Condition::FailuresForLackOfPort => lack_of_port(values).map(Some),
        Condition::TimeWaitHoldsPorts => {
            let ports = lack_of_port(values)?;
            let time_wait = values.workload.signals.connections.as_ref()?.time_wait?;
            let range = place.sibling("net.ipv4.ip_local_port_range")?;
            let size = port_range_size(&range)?;
            (time_wait * 2 >= size).then(|| {
                Some(format!(
                    "{ports}; {time_wait} sockets in TIME_WAIT hold ports of a {size}-port \
                     local range ({range})"
                ))
            })
        }
        Condition::SiblingIs(knob, value) => (place.sibling(knob)? == value).then_some(None),
        Condition::QueueDominatesOnSsd { scheduler_followed } => {
            queue_dominates(values, device?, place, scheduler_followed)
        }
        Condition::LongLived(seconds) => long_lived(values, seconds),
        Condition::WriteBursts(factor) => {
            let (p99, _) = values.window(Measure::BlockWriteP99Ms, device)?;
            let (mean, _) = values.window(Measure::BlockWriteMs, device)?;
            (p99 >= f64::from(factor) * mean).then(|| {
                Some(format!(
                    "write p99 {p99:.1} ms is {:.0} times the write mean of {mean:.1} ms",
                    p99 / mean.max(f64::MIN_POSITIVE)
                ))
            })
        }
    }
}

/// At least half the window's failed connects found no local port: says how many.
fn lack_of_port(values: &WindowValues<'_>) -> Option<String> {
    let now = values.workload.signals.connections.as_ref()?;
    let start = values.start.connections.as_deref();
    let failed = now
        .failures()
        .saturating_sub(start.map_or(0, ConnectionReport::failures));
    let no_port =
        (now.failed.port_exhaustion).saturating_sub(start.map_or(0, |s| s.failed.port_exhaustion));
    (failed > 0 && no_port * 2 >= failed).then(|| {
        format!("{no_port} of {failed} failed connects found no free local port (EADDRNOTAVAIL)")
    })
}

/// The median duration of the connections that ended in the window is at least
/// `seconds`: says how long.
fn long_lived(values: &WindowValues<'_>, seconds: u32) -> Option<Option<String>> {
    let now = values.workload.signals.connections.as_ref()?;
    let start = values.start.connections.as_ref();
    let ended = match start {
        Some(s) => histogram::since(&now.duration_histogram, &s.duration_histogram),
        None => now.duration_histogram,
    };
    let median_s = histogram::quantile_ms(&ended, 0.5)? / 1000.0;
    (median_s >= f64::from(seconds)).then(|| {
        Some(format!(
            "the connections that ended lasted {median_s:.0} s (median): long enough for a \
             middlebox to forget them while idle"
        ))
    })
}

/// `32768 60999` -> 28232.
fn port_range_size(range: &str) -> Option<u64> {
    let mut ends = range.split_whitespace().map(str::parse::<u64>);
    let (low, high) = (ends.next()?.ok()?, ends.next()?.ok()?);
    high.checked_sub(low).map(|d| d + 1)
}

/// On a non-rotational device, requests wait in the scheduler's queue at least as long
/// as on the device; and the scheduler follows the guides or not, as the rule asks.
fn queue_dominates(
    values: &WindowValues<'_>,
    device: &str,
    place: &Place,
    scheduler_followed: bool,
) -> Option<Option<String>> {
    if place.sibling("queue/rotational")? != "0" {
        return None;
    }
    let scheduler = place.sibling("queue/scheduler")?;
    let followed = knob_named("queue/scheduler")?
        .recommendation
        .followed_by(&scheduler)?;
    if followed != scheduler_followed {
        return None;
    }
    let (queue, _) = values.window(Measure::BlockQueueMs, Some(device))?;
    let (service, _) = values.window(Measure::BlockServiceMs, Some(device))?;
    (queue >= service).then(|| {
        Some(format!(
            "requests on {device} (non-rotational, scheduler {scheduler}) wait {queue:.2} ms \
             in the queue against {service:.2} ms on the device"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(port_range_size("32768 60999"), Some(28232));
        assert_eq!(port_range_size("40000 40009"), Some(10));
        assert_eq!(port_range_size("5 1"), None);
        assert_eq!(port_range_size("x"), None);
    }
}
