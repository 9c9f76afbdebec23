//! The value to recommend, when the change takes effect, and the command that proves
//! it did what the prediction says.

use super::{Advice, Evidence, Prediction, place::Place, squeeze, symptoms::WindowValues};
use crate::{
    report::Workload,
    signals::measure::Measure,
    tuning::{Applies, CPU_HEADROOM, Knob, Recommend, Recommendation, Rule, Scope},
    verify::stats,
};

/// The value to set; `None` when the knob already has it (or better), or when nothing
/// can be computed.
pub(super) fn value(
    knob: &Knob,
    rule: &Rule,
    place: &Place,
    values: &WindowValues<'_>,
) -> Option<String> {
    let current = place.current.as_str();
    let number = current.parse::<u64>().ok();
    match rule.recommend {
        Recommend::Guide => {
            if knob.recommendation.followed_by(current) == Some(true) {
                return None;
            }
            guide_value(knob.recommendation)
        }
        Recommend::AtMost(most) => (number? > most).then(|| most.to_string()),
        Recommend::Times(factor) => number.map(|n| (n * factor).to_string()),
        Recommend::CpuLimitFromDemand => cpu_limit(place, values),
    }
}

/// The one value the guides' recommendation names.
fn guide_value(recommendation: Recommendation) -> Option<String> {
    match recommendation {
        Recommendation::Exactly(value) => Some(value.to_string()),
        Recommendation::AtLeast(min) => Some(min.to_string()),
        Recommendation::OneOf(values) => values.first().map(ToString::to_string),
        Recommendation::Set => Some("on".to_string()),
        Recommendation::Between(..) | Recommendation::None => None,
    }
}

/// A quota from the demand the container showed: per interval, CPU used plus time
/// throttled per period (what it would have run unthrottled), its p95 over the window,
/// times the headroom, rounded up to a millisecond. `None` when that is no raise.
fn cpu_limit(place: &Place, values: &WindowValues<'_>) -> Option<String> {
    let used = values.per_interval(Measure::CpuUsageMsPerPeriod);
    let throttled = values.per_interval(Measure::CpuThrottledMsPerPeriod);
    let demand: Vec<f64> = used
        .iter()
        .zip(&throttled)
        .filter_map(|(u, t)| Some((*u)? + (*t)?))
        .collect();
    if demand.is_empty() {
        return None;
    }
    let quota_us = (quantile(&demand, 0.95) * CPU_HEADROOM).ceil() as u64 * 1000;
    let current_us: u64 = place.current.split_whitespace().next()?.parse().ok()?;
    if quota_us <= current_us {
        return None;
    }
    Some(match place.knob.as_str() {
        "cpu.max" => format!("{quota_us} {}", place.period_us?),
        _ => quota_us.to_string(),
    })
}

/// The `q` quantile by linear interpolation between order statistics.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = q * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// The advice, with its prediction, when it takes effect and the command proving it.
pub(super) fn advice(
    knob: &Knob,
    rule: &Rule,
    place: Place,
    recommended: String,
    evidence: Evidence,
    workload: &Workload,
) -> Advice {
    let prediction = Prediction {
        measure: rule.symptom,
        direction: "lower",
        min_effect: rule.min_effect.max(stats::MIN_RELATIVE_EFFECT),
    };
    let verify_command = verify_command(&place, &recommended, &prediction);
    Advice {
        knob: place.knob.clone(),
        scope: place.scope,
        workloads: vec![workload.identity.clone()],
        evidence,
        current: place.current.clone(),
        takes_effect: takes_effect(knob, &place),
        why: squeeze(knob.why),
        notes: notes(&place, &recommended),
        target: place.target,
        recommended,
        prediction,
        verify_command,
    }
}

fn takes_effect(knob: &Knob, place: &Place) -> String {
    match (place.scope, knob.applies) {
        (Scope::Mount, _) => "at once, on remounting".into(),
        (Scope::Resolver, _) => "for pods that query the cache: new pods once the kubelet's \
                                 clusterDNS (or the pod's dnsConfig) names it"
            .into(),
        (Scope::Cgroup, _) => "at once (in Kubernetes, through the container's CPU limit, \
                               which the kubelet writes to the cgroup)"
            .into(),
        (_, Applies::AtListen) => "when the listener calls listen() again (restart it)".into(),
        (_, Applies::NewSockets) => "for sockets created after the change".into(),
        (_, Applies::AtOnce) => "at once".into(),
    }
}

/// `verify` with the change and the prediction: `--apply` where `verify` can write the
/// knob, `--exec` with a remount for a mount option.
fn verify_command(place: &Place, recommended: &str, prediction: &Prediction) -> String {
    let expect = format!(
        "--expect {}:{}:{:.0}%",
        prediction.measure.name(),
        prediction.direction,
        prediction.min_effect * 100.0
    );
    // Advice on a mount option is only given on a strictatime mount, which the undo
    // restores.
    if place.scope == Scope::Resolver {
        return format!("tuneprobe verify --exec 'kubectl apply -f nodelocaldns.yaml' {expect}");
    }
    if let Some(mountpoint) = &place.mountpoint {
        return format!(
            "tuneprobe verify --exec 'mount -o remount,{knob} {mountpoint}' --revert-with \
             'mount -o remount,strictatime {mountpoint}' {expect}",
            knob = place.knob,
        );
    }
    let target = place
        .target
        .as_ref()
        .map_or_else(String::new, |t| format!(" {} {}", t.option, t.value));
    format!(
        "tuneprobe verify --apply '{}={recommended}'{target} {expect}",
        place.knob
    )
}

/// What a user should know before making the change.
fn notes(place: &Place, recommended: &str) -> Vec<String> {
    let mut notes = Vec::new();
    if place.scope == Scope::Cgroup {
        let quota_us: f64 = recommended
            .split_whitespace()
            .next()
            .and_then(|q| q.parse().ok())
            .unwrap_or(0.0);
        let period_us = place.period_us.unwrap_or(100_000) as f64;
        let millicores = (quota_us / period_us * 1000.0).ceil();
        notes.push(format!(
            "in the pod spec: resources.limits.cpu: {millicores}m; runtimes that size \
             their thread pools from the CPU count (Go's GOMAXPROCS, the JVM's \
             -XX:ActiveProcessorCount) should follow the limit, not the node's cores"
        ));
    }
    if let Some(resolver) = &place.resolver {
        notes.push(format!(
            "a resolver change, not a sysctl: deploy NodeLocal DNSCache \
             (kubernetes.io/docs/tasks/administer-cluster/nodelocaldns) and point pods at \
             {} instead of {resolver}; judge the rollout across nodes with `fleet verify \
             --signal dns_latency_p99_ms`",
            crate::tuning::NODE_LOCAL_DNS
        ));
    }
    if place.scope == Scope::Node {
        notes.push("a node-wide sysctl: it changes every workload on the node".into());
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert!((quantile(&[100.0, 10.0, 20.0], 0.95) - 92.0).abs() < 1e-9);
        assert_eq!(quantile(&[7.0], 0.95), 7.0);
    }

    #[test]
    fn guide_values() {
        assert_eq!(
            guide_value(Recommendation::AtLeast(65535)).as_deref(),
            Some("65535")
        );
        assert_eq!(
            guide_value(Recommendation::OneOf(&["none", "mq-deadline"])).as_deref(),
            Some("none")
        );
        assert_eq!(guide_value(Recommendation::Between(5, 30)), None);
    }
}
