//! `tuneprobe trace`: turns the programs' ring-buffer records into named events.
//!
//! Records are checked here (never trusted to be well formed: a short or unknown record
//! is an error that is counted, not a crash), attributed to workloads through the
//! collector, as `snapshot` does, decoded by their signal's module, and rendered as JSON
//! or one text line.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use probe_common::trace::{
    BlockEvent, DnsEvent, DropEvent, RetransmitEvent, ThrottleEvent, TraceHeader, TraceKind,
};
use serde::Serialize;

use crate::{
    kernel::devices,
    report::Workload,
    signals::{Signal, block_io, cpu_throttle, dns, drops, tcp_retransmit},
    window::Collector,
    workloads::cgroup::Hierarchy,
};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {len} bytes, expected {expected}")]
    Size {
        kind: TraceKind,
        len: usize,
        expected: usize,
    },
}

/// One ring-buffer record.
#[derive(Debug, Clone)]
pub enum Record {
    Retransmit(RetransmitEvent),
    Drop(DropEvent),
    Dns(Box<DnsEvent>),
    Block(BlockEvent),
    Throttle(ThrottleEvent),
}

impl Record {
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() < size_of::<TraceHeader>() {
            return Err(RecordError::Short(bytes.len()));
        }
        let kind = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let kind = TraceKind::from_u32(kind).ok_or(RecordError::UnknownKind(kind))?;
        Ok(match kind {
            TraceKind::Retransmit => Self::Retransmit(read(kind, bytes)?),
            TraceKind::Drop => Self::Drop(read(kind, bytes)?),
            TraceKind::Dns => Self::Dns(Box::new(read(kind, bytes)?)),
            TraceKind::Block => Self::Block(read(kind, bytes)?),
            TraceKind::Throttle => Self::Throttle(read(kind, bytes)?),
        })
    }

    pub fn header(&self) -> &TraceHeader {
        match self {
            Self::Retransmit(e) => &e.header,
            Self::Drop(e) => &e.header,
            Self::Dns(e) => &e.header,
            Self::Block(e) => &e.header,
            Self::Throttle(e) => &e.header,
        }
    }
}

/// Copies a `#[repr(C)]` integer-only struct out of the record.
fn read<T: aya::Pod>(kind: TraceKind, bytes: &[u8]) -> Result<T, RecordError> {
    if bytes.len() != size_of::<T>() {
        return Err(RecordError::Size {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: the length matches, `T` is plain old data (any bit pattern is valid), and
    // the read tolerates any alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub use crate::kernel::symbols::Symbols;

/// One event as `trace --json` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceEvent {
    pub signal: &'static str,
    /// RFC 3339, microseconds, UTC.
    pub time: String,
    pub cgroup_id: Option<u64>,
    pub cgroup_path: Option<String>,
    pub netns: Option<u32>,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    #[serde(flatten)]
    pub fields: Fields,
}

/// The signal's own fields (each signal module defines its own).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Fields {
    Retransmit(tcp_retransmit::TraceFields),
    Drop(drops::TraceFields),
    Dns(dns::TraceFields),
    Block(block_io::TraceFields),
    Throttle(cpu_throttle::TraceFields),
}

impl Fields {
    fn detail(&self) -> String {
        match self {
            Self::Retransmit(f) => f.detail(),
            Self::Drop(f) => f.detail(),
            Self::Dns(f) => f.detail(),
            Self::Block(f) => f.detail(),
            Self::Throttle(f) => f.detail(),
        }
    }
}

impl TraceEvent {
    /// Latency-like value of the event in milliseconds, for `--min-latency`.
    pub fn latency_ms(&self) -> Option<f64> {
        match &self.fields {
            Fields::Dns(f) => Some(f.latency_ms),
            Fields::Block(f) => Some(f.service_ms + f.queue_ms),
            Fields::Throttle(f) => Some(f.stall_ms),
            Fields::Retransmit(_) | Fields::Drop(_) => None,
        }
    }

    /// The workload as one word: `namespace/pod/container`, else the cgroup path, else
    /// the network namespace.
    pub fn workload_label(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => match &self.container {
                Some(c) => format!("{ns}/{pod}/{c}"),
                None => format!("{ns}/{pod}"),
            },
            _ => match (&self.cgroup_path, self.netns) {
                (Some(path), _) => path.clone(),
                (None, Some(netns)) => format!("netns:{netns}"),
                (None, None) => "-".to_string(),
            },
        }
    }

    /// One line for people: time, signal, workload, details.
    pub fn to_line(&self) -> String {
        let time = self.time.get(11..23).unwrap_or(&self.time);
        format!(
            "{time} {:<11} {} {}",
            self.signal,
            self.workload_label(),
            self.fields.detail()
        )
    }
}

/// Names and renders records. Workload names are cached per cgroup for a second, so a
/// burst of events costs one lookup.
pub struct Decoder {
    symbols: Symbols,
    sys_root: std::path::PathBuf,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to date kernel timestamps.
    realtime_offset_ns: i128,
    names: HashMap<(Hierarchy, u64, u32), Workload>,
    devices: HashMap<u32, String>,
}

impl Decoder {
    pub fn new(symbols: Symbols) -> Self {
        Self {
            symbols,
            sys_root: std::path::PathBuf::from("/sys"),
            realtime_offset_ns: realtime_offset_ns(),
            names: HashMap::new(),
            devices: HashMap::new(),
        }
    }

    /// Forget cached names (call after the collector rescans).
    pub fn refresh(&mut self) {
        self.names.clear();
        self.realtime_offset_ns = realtime_offset_ns();
    }

    pub fn event(&mut self, collector: &mut Collector, record: &Record) -> TraceEvent {
        let header = *record.header();
        let hierarchy = match record {
            Record::Block(_) => Hierarchy::Blkio,
            Record::Throttle(_) => Hierarchy::Cpu,
            _ => Hierarchy::Unified,
        };
        let netns = (header.netns != 0).then_some(header.netns);
        let workload = self
            .names
            .entry((hierarchy, header.cgroup_id, header.netns))
            .or_insert_with(|| collector.workload_of(hierarchy, header.cgroup_id, netns))
            .clone();
        let fields = match record {
            Record::Retransmit(e) => Fields::Retransmit(tcp_retransmit::TraceFields::of(e)),
            Record::Drop(e) => Fields::Drop(drops::TraceFields::of(
                e,
                collector
                    .probe()
                    .drop_reasons()
                    .name_of(e.reason, e.location),
                self.symbols.name(e.location),
            )),
            Record::Dns(e) => Fields::Dns(dns::TraceFields::of(e)),
            Record::Block(e) => {
                let device = self
                    .devices
                    .entry(e.dev)
                    .or_insert_with(|| devices::name(&self.sys_root, e.dev))
                    .clone();
                let op = collector.probe().block_ops().name(e.op);
                Fields::Block(block_io::TraceFields::of(e, device, op))
            }
            Record::Throttle(e) => Fields::Throttle(cpu_throttle::TraceFields::of(e)),
        };
        let kind = TraceKind::from_u32(header.kind).unwrap_or(TraceKind::Drop);
        TraceEvent {
            signal: Signal::of_trace_kind(kind).trace_name(),
            time: self.wall_time(header.time_ns),
            cgroup_id: workload
                .cgroup_id
                .or((header.cgroup_id != 0).then_some(header.cgroup_id)),
            cgroup_path: workload.cgroup_path,
            netns: workload.netns.or(netns),
            pod_uid: workload.pod_uid,
            container_id: workload.container_id,
            namespace: workload.namespace,
            pod: workload.pod,
            container: workload.container,
            fields,
        }
    }

    fn wall_time(&self, monotonic_ns: u64) -> String {
        let ns = i128::from(monotonic_ns) + self.realtime_offset_ns;
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
        humantime::format_rfc3339_micros(time).to_string()
    }
}

fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_before_use() {
        assert!(matches!(Record::parse(&[0; 8]), Err(RecordError::Short(8))));
        let mut bytes = vec![0u8; size_of::<ThrottleEvent>()];
        bytes[0] = 9;
        assert!(matches!(
            Record::parse(&bytes),
            Err(RecordError::UnknownKind(9))
        ));
        bytes[0] = TraceKind::Throttle as u8;
        assert!(matches!(Record::parse(&bytes), Ok(Record::Throttle(_))));
        bytes[0] = TraceKind::Dns as u8;
        assert!(matches!(
            Record::parse(&bytes),
            Err(RecordError::Size { .. })
        ));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let event = TraceEvent {
            signal: "dns",
            time: "2026-01-01T00:00:00.000000Z".to_string(),
            cgroup_id: Some(7),
            cgroup_path: None,
            netns: None,
            pod_uid: None,
            container_id: None,
            namespace: Some("shop".to_string()),
            pod: Some("api".to_string()),
            container: None,
            fields: Fields::Dns(dns::TraceFields {
                qname: Some("a.test".to_string()),
                qtype: Some("A".to_string()),
                rcode: Some("NOERROR".to_string()),
                latency_ms: 1.5,
                resolver: "10.0.0.1".to_string(),
                transport: "udp",
                decode_error: None,
            }),
        };
        let json = serde_json::to_value(&event).unwrap();
        for field in [
            "signal",
            "time",
            "cgroup_id",
            "pod_uid",
            "container_id",
            "namespace",
            "pod",
            "container",
            "qname",
            "qtype",
            "rcode",
            "latency_ms",
            "resolver",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(json["qname"], "a.test");
        assert!(
            event
                .to_line()
                .contains("a.test A NOERROR 1.500ms via 10.0.0.1/udp")
        );
    }
}
