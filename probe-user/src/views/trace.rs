//! `tuneprobe trace`: turns the programs' ring-buffer records into named events.
//!
//! Records are decoded here (never trusted to be well formed: a short or unknown record
//! is an error that is counted, not a crash), attributed to workloads through the
//! collector, as `snapshot` does, and rendered as JSON or one text line.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    path::Path,
    time::{Duration, SystemTime},
};

use probe_common::trace::{
    BlockEvent, DnsEvent, DropEvent, Endpoints, RetransmitEvent, ThrottleEvent, TraceHeader,
    TraceKind,
};
use serde::Serialize;

use crate::{
    kernel::devices,
    report::Workload,
    signals::{
        Signal,
        dns::{rcode_name, wire as dnswire},
    },
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

/// Kernel text symbols from `/proc/kallsyms`, to name the function that dropped a packet.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (address, name), sorted by address.
    sorted: Vec<(u64, String)>,
}

impl Symbols {
    /// Reads `path`; empty when unreadable or when the kernel hides addresses
    /// (`kptr_restrict`): locations are then shown as bare addresses.
    pub fn load(path: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::default();
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut sorted: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                // Text symbols only: a drop location is a return address in code.
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_string()))
            })
            .collect();
        sorted.sort_unstable();
        Self { sorted }
    }

    /// `function+0xoffset`, or the address in hex if no symbol covers it.
    pub fn name(&self, address: u64) -> String {
        let index = self.sorted.partition_point(|(a, _)| *a <= address);
        match index.checked_sub(1).map(|i| &self.sorted[i]) {
            Some((start, name)) if address > 0 => format!("{name}+0x{:x}", address - start),
            _ => format!("0x{address:x}"),
        }
    }
}

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

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Fields {
    Retransmit {
        saddr: Option<String>,
        daddr: Option<String>,
        sport: u16,
        dport: u16,
        state: String,
        failed: bool,
        segments: u32,
    },
    Drop {
        reason: String,
        location: String,
        protocol: Option<String>,
        saddr: Option<String>,
        daddr: Option<String>,
        sport: Option<u16>,
        dport: Option<u16>,
    },
    Dns {
        qname: Option<String>,
        qtype: Option<String>,
        rcode: Option<String>,
        latency_ms: f64,
        resolver: String,
        transport: &'static str,
        /// Why the captured message could not be decoded (then the names are null).
        decode_error: Option<String>,
    },
    Block {
        device: String,
        op: &'static str,
        bytes: u64,
        service_ms: f64,
        queue_ms: f64,
        error: bool,
    },
    Throttle {
        stall_ms: f64,
        tid: u32,
    },
}

impl TraceEvent {
    /// Latency-like value of the event in milliseconds, for `--min-latency`.
    pub fn latency_ms(&self) -> Option<f64> {
        match &self.fields {
            Fields::Dns { latency_ms, .. } => Some(*latency_ms),
            Fields::Block {
                service_ms,
                queue_ms,
                ..
            } => Some(service_ms + queue_ms),
            Fields::Throttle { stall_ms, .. } => Some(*stall_ms),
            _ => None,
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
        let detail = match &self.fields {
            Fields::Retransmit {
                saddr,
                daddr,
                sport,
                dport,
                state,
                failed,
                segments,
            } => format!(
                "{} -> {} {state} segs={segments}{}",
                endpoint(saddr, Some(*sport)),
                endpoint(daddr, Some(*dport)),
                if *failed { " FAILED" } else { "" }
            ),
            Fields::Drop {
                reason,
                location,
                protocol,
                saddr,
                daddr,
                sport,
                dport,
            } => format!(
                "{reason} at {location} {} {} -> {}",
                protocol.as_deref().unwrap_or("-"),
                endpoint(saddr, *sport),
                endpoint(daddr, *dport)
            ),
            Fields::Dns {
                qname,
                qtype,
                rcode,
                latency_ms,
                resolver,
                transport,
                decode_error,
            } => match decode_error {
                None => format!(
                    "{} {} {} {latency_ms:.3}ms via {resolver}/{transport}",
                    qname.as_deref().unwrap_or("-"),
                    qtype.as_deref().unwrap_or("-"),
                    rcode.as_deref().unwrap_or("-"),
                ),
                Some(err) => format!("(undecodable: {err}) {latency_ms:.3}ms via {resolver}"),
            },
            Fields::Block {
                device,
                op,
                bytes,
                service_ms,
                queue_ms,
                error,
            } => format!(
                "{device} {op} {bytes}B service={service_ms:.3}ms queue={queue_ms:.3}ms{}",
                if *error { " ERROR" } else { "" }
            ),
            Fields::Throttle { stall_ms, tid } => format!("tid {tid} stalled {stall_ms:.3}ms"),
        };
        format!(
            "{time} {:<11} {} {detail}",
            self.signal,
            self.workload_label()
        )
    }
}

fn endpoint(address: &Option<String>, port: Option<u16>) -> String {
    match (address, port) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.clone(),
        (None, _) => "?".to_string(),
    }
}

/// TCP states (`include/net/tcp_states.h`, part of the user ABI).
pub fn tcp_state_name(state: u32) -> String {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        other => return format!("STATE{other}"),
    }
    .to_string()
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        58 => "icmpv6".to_string(),
        other => other.to_string(),
    }
}

fn address(bytes: [u8; 16]) -> String {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4).to_string(),
        None => IpAddr::V6(v6).to_string(),
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
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
            Record::Retransmit(e) => Fields::Retransmit {
                saddr: known(&e.endpoints).then(|| address(e.endpoints.saddr)),
                daddr: known(&e.endpoints).then(|| address(e.endpoints.daddr)),
                sport: e.endpoints.sport,
                dport: e.endpoints.dport,
                state: tcp_state_name(e.state),
                failed: e.failed != 0,
                segments: e.segments,
            },
            Record::Drop(e) => {
                let has = known(&e.endpoints);
                let ports = has && matches!(e.endpoints.protocol, 6 | 17);
                Fields::Drop {
                    reason: collector.probe().drop_reasons().name(e.reason),
                    location: self.symbols.name(e.location),
                    protocol: has.then(|| protocol_name(e.endpoints.protocol)),
                    saddr: has.then(|| address(e.endpoints.saddr)),
                    daddr: has.then(|| address(e.endpoints.daddr)),
                    sport: ports.then_some(e.endpoints.sport),
                    dport: ports.then_some(e.endpoints.dport),
                }
            }
            Record::Dns(e) => {
                let captured = (e.captured as usize).min(e.message.len());
                let decoded = dnswire::decode(&e.message[..captured]);
                let (qname, qtype, rcode, decode_error) = match decoded {
                    Ok(q) => (
                        Some(q.qname),
                        Some(dnswire::qtype_name(q.qtype)),
                        Some(rcode_name(q.rcode)),
                        None,
                    ),
                    Err(err) => (None, None, None, Some(err.to_string())),
                };
                Fields::Dns {
                    qname,
                    qtype,
                    rcode,
                    latency_ms: ms(e.latency_ns),
                    resolver: address(e.resolver),
                    transport: if e.proto == 6 { "tcp" } else { "udp" },
                    decode_error,
                }
            }
            Record::Block(e) => Fields::Block {
                device: self
                    .devices
                    .entry(e.dev)
                    .or_insert_with(|| devices::name(&self.sys_root, e.dev))
                    .clone(),
                op: collector.probe().block_ops().name(e.op),
                bytes: e.bytes,
                service_ms: ms(e.service_ns),
                queue_ms: ms(e.queue_ns),
                error: e.error != 0,
            },
            Record::Throttle(e) => Fields::Throttle {
                stall_ms: ms(e.stall_ns),
                tid: e.pid,
            },
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

fn known(endpoints: &Endpoints) -> bool {
    endpoints.family != 0
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
    fn symbols_name_the_enclosing_function() {
        let symbols = Symbols::parse(
            "ffffffff81000000 T _stext\nffffffff81a00000 t tcp_v4_rcv\n\
             ffffffff81a00800 T udp_rcv\nffffffff81b00000 D some_data\n",
        );
        assert_eq!(symbols.name(0xffffffff81a00010), "tcp_v4_rcv+0x10");
        assert_eq!(symbols.name(0xffffffff81a00800), "udp_rcv+0x0");
        assert_eq!(symbols.name(0x10), "0x10");
        // Hidden addresses (kptr_restrict) give no symbols: bare addresses remain.
        let hidden = Symbols::parse("0000000000000000 T _stext\n");
        assert_eq!(hidden.name(0xffffffff81a00010), "0xffffffff81a00010");
    }

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
            fields: Fields::Dns {
                qname: Some("a.test".to_string()),
                qtype: Some("A".to_string()),
                rcode: Some("NOERROR".to_string()),
                latency_ms: 1.5,
                resolver: "10.0.0.1".to_string(),
                transport: "udp",
                decode_error: None,
            },
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
