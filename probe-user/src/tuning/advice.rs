//! What the knob table says about advice: the symptom that makes `tuneprobe advise`
//! recommend a knob, the threshold and why, the value to recommend and the prediction
//! the change is then judged on. Rules are data in [`super::table::KNOBS`], beside the
//! knob and its measures; `crate::advise` evaluates them.

use crate::signals::measure::Measure;

/// When a knob is advised: `symptom` over the window at or above `threshold`, with at
/// least `min_load` of its load, and `also` true where the workload lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rule {
    pub symptom: Measure,
    /// In the symptom's own unit (a ratio, ms).
    pub threshold: f64,
    /// Why that threshold, in words a reviewer can check.
    pub threshold_why: &'static str,
    /// Less load than this over the window (attempts, datagrams, periods, requests) is
    /// too little to call a symptom: a handful of events is noise, not a pattern.
    pub min_load: f64,
    pub also: Condition,
    pub recommend: Recommend,
    /// The prediction: `symptom` lower by at least this share of its value.
    pub min_effect: f64,
}

/// A further condition, on the window's sections of the workload and on the settings
/// where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    None,
    /// At least half the failed connects found no free local port (EADDRNOTAVAIL).
    FailuresForLackOfPort,
    /// As `FailuresForLackOfPort`, and TIME_WAIT sockets hold at least half the
    /// namespace's local port range.
    TimeWaitHoldsPorts,
    /// Another knob at the same place has this value.
    SiblingIs(&'static str, &'static str),
    /// The device is not rotational and requests wait at least as long in the
    /// scheduler's queue as on the device; its scheduler follows the guides (for the
    /// queue depth) or does not (for the scheduler itself).
    QueueDominatesOnSsd {
        scheduler_followed: bool,
    },
    /// The connections that ended lasted at least this many seconds (the median): long
    /// enough for a middlebox to forget them while idle.
    LongLived(u32),
    /// Write latency comes in bursts: the write p99 at least this many times the
    /// write mean.
    WriteBursts(u32),
}

/// The value `advise` recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recommend {
    /// The guides' recommendation (the knob's `Recommendation`).
    Guide,
    /// This number, where the guides give a range, when the current one is higher.
    AtMost(u64),
    /// The current number times this factor.
    Times(u64),
    /// A CPU limit sized from the demand the container showed: the p95 over the
    /// window's intervals of CPU used plus time throttled per period, plus headroom.
    CpuLimitFromDemand,
}

/// Headroom over the p95 demand of a recommended CPU limit, as VPA and krr add over
/// their usage percentile.
pub(crate) const CPU_HEADROOM: f64 = 1.2;

pub(crate) const LISTEN_OVERFLOWS: Rule = Rule {
    symptom: Measure::ListenOverflowRatio,
    threshold: 0.01,
    threshold_why: "a connection attempt turned away costs its client a SYN \
        retransmission (1 s, then 3 s): 1 in 100 already shows in the client's p99",
    min_load: 100.0,
    also: Condition::None,
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

pub(crate) const RCVBUF_DROPS: Rule = Rule {
    symptom: Measure::RcvbufDropRatio,
    threshold: 0.001,
    threshold_why: "a datagram dropped at a full receive buffer is lost for good (a DNS \
        answer, a metric); a receiver that keeps up drops none, 1 in 1,000 is a pattern",
    min_load: 1000.0,
    also: Condition::None,
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

pub(crate) const TCP_RCVQ_DROPS: Rule = Rule {
    symptom: Measure::TcpRcvqDropRatio,
    threshold: 0.001,
    threshold_why: "a segment dropped or pruned at a full receive queue is sent again \
        after a timeout; 1 in 1,000 received segments is far above a healthy receiver's \
        none",
    min_load: 1000.0,
    also: Condition::None,
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

pub(crate) const BACKLOG_DROPS: Rule = Rule {
    symptom: Measure::BacklogDropRatio,
    threshold: 0.001,
    threshold_why: "the per-CPU input backlog drops packets before any socket sees them; \
        1 in 1,000 received packets is above what bursts on a healthy node cost",
    min_load: 1000.0,
    also: Condition::None,
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

/// Port exhaustion: failed connects, most of them for lack of a local port.
pub(crate) const PORT_EXHAUSTION: Rule = Rule {
    symptom: Measure::ConnectFailureRatio,
    threshold: 0.01,
    threshold_why: "a connect that finds no free local port fails in the application \
        (EADDRNOTAVAIL) without a packet sent; 1 in 100 attempts is a visible error rate",
    min_load: 100.0,
    also: Condition::FailuresForLackOfPort,
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

/// Port exhaustion by ports that closed connections still hold.
pub(crate) const TIME_WAIT_PORTS: Rule = Rule {
    also: Condition::TimeWaitHoldsPorts,
    ..PORT_EXHAUSTION
};

pub(crate) const RESETS: Rule = Rule {
    symptom: Measure::ResetRatio,
    threshold: 0.05,
    threshold_why: "a reset received ends the connection with an error in the \
        application; 1 in 20 connections is more than servers that close cleanly cause, \
        and on connections that lived for minutes it is the mark of a middlebox (a load \
        balancer, NAT, conntrack) that forgot them while idle",
    min_load: 20.0,
    // Middleboxes forget idle connections after minutes (AWS NLB 350 s, GCP 600 s):
    // resets that end short connections are the server's doing, not keepalive's.
    also: Condition::LongLived(300),
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

pub(crate) const THROTTLING: Rule = Rule {
    symptom: Measure::CpuThrottledRatio,
    threshold: 0.25,
    threshold_why: "kubernetes-mixin's CPUThrottlingHigh alerts at 25% of CFS periods \
        throttled: each throttled period stalls the container's threads until the next",
    min_load: 10.0,
    also: Condition::None,
    recommend: Recommend::CpuLimitFromDemand,
    min_effect: 0.5,
};

pub(crate) const SCHEDULER_QUEUE: Rule = Rule {
    symptom: Measure::BlockQueueMs,
    threshold: 1.0,
    threshold_why: "on a non-rotational device the scheduler has little to gain by \
        reordering; requests that wait a millisecond or more in its queue, as long as \
        on the device, lose more than it saves",
    min_load: 100.0,
    also: Condition::QueueDominatesOnSsd {
        scheduler_followed: false,
    },
    recommend: Recommend::Guide,
    min_effect: 0.25,
};

pub(crate) const QUEUE_DEPTH: Rule = Rule {
    also: Condition::QueueDominatesOnSsd {
        scheduler_followed: true,
    },
    recommend: Recommend::Times(2),
    ..SCHEDULER_QUEUE
};

pub(crate) const ATIME_WRITES: Rule = Rule {
    symptom: Measure::WritesPerRead,
    threshold: 0.5,
    threshold_why: "a read-mostly workload that writes once for every two reads or more \
        writes more than its reads explain; access-time updates are such writes, on a \
        mount without relatime (strictatime)",
    min_load: 100.0,
    also: Condition::SiblingIs("relatime", "off"),
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

pub(crate) const WRITEBACK_BURSTS: Rule = Rule {
    symptom: Measure::BlockWriteP99Ms,
    threshold: 100.0,
    threshold_why: "a write p99 of 100 ms, at least 5 times the mean, is writeback \
        flushing a backlog of dirty pages at once rather than the device being slow",
    min_load: 100.0,
    also: Condition::WriteBursts(5),
    recommend: Recommend::AtMost(5),
    min_effect: 0.25,
};

/// `rmem_default` has no guide value: four times the kernel's default of 208 KiB is
/// what a burst of a few thousand datagrams needs.
pub(crate) const RCVBUF_DROPS_DEFAULT: Rule = Rule {
    recommend: Recommend::Times(4),
    ..RCVBUF_DROPS
};

/// A conntrack table at its limit: new connections evict unconfirmed entries or are
/// dropped. Doubling costs about 300 bytes of kernel memory per added entry.
pub(crate) const CONNTRACK_FULL: Rule = Rule {
    symptom: Measure::ConntrackFullRatio,
    threshold: 0.001,
    threshold_why: "a table below its limit evicts and drops nothing, so any of it shows         the limit reached; 1 per 1,000 received packets is a table full for more than a         moment, and each one is a connection that lost its entry (a NAT mapping) or         never got one",
    min_load: 1000.0,
    also: Condition::None,
    recommend: Recommend::Times(2),
    min_effect: 0.5,
};

/// NodeLocal DNSCache's address, where pods that use it send their queries.
pub(crate) const NODE_LOCAL_DNS: &str = "169.254.20.10";

/// The p99 of the DNS latency: advised on (`nodelocaldns`) and alerted on, per resolver.
pub(crate) const DNS_LATENCY: Rule = Rule {
    symptom: Measure::DnsLatencyP99Ms,
    threshold: 100.0,
    threshold_why: "a cluster resolver answers from its cache in a millisecond or two, and \
        every new connection waits for its lookup; Coroot's DNS latency check fires at \
        100 ms (on the p95): a p99 that high is a resolver overloaded or throttled, or \
        lookups going upstream that its cache should answer",
    // A p99 of fewer answers is little more than the slowest one.
    min_load: 10.0,
    also: Condition::None,
    recommend: Recommend::Guide,
    min_effect: 0.5,
};

/// A threshold on a symptom that no knob of the table is the fix for: alerted on
/// (`deploy/prometheus/alerts.yaml`, generated by `crate::fleet::alerts`), never
/// advised. In the terms of a [`Rule`], over the alert's window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Threshold {
    pub threshold: f64,
    pub threshold_why: &'static str,
    pub min_load: f64,
}

/// DNS queries without a response within the timeout, per query.
pub(crate) const DNS_TIMEOUTS: Threshold = Threshold {
    threshold: 0.01,
    threshold_why: "a query without an answer costs its client the resolver timeout \
        (5 s by default in resolv.conf) before it tries again: 1 in 100 queries puts that \
        wait in the client's p99",
    min_load: 100.0,
};
