//! Block IO per workload: the block request tracepoints time each request from insert
//! to issue (queue) and issue to complete (service) per (blkio cgroup, device,
//! operation), as log-linear histograms.

use std::{collections::HashMap, fmt::Write as _, path::PathBuf};

use probe_common::{
    BlockKey, BlockStats, LatencyHistogram, block_io::BLOCK_IO_MAP, block_io::BlockEvent,
    trace::TraceKind,
};
use serde::Serialize;

use super::{
    endpoints,
    histogram::{self, LatencySummary},
    record::TraceContext,
    source::{Attribution, Dead, Owner, Settings, Shared, Source, delete_entries},
};
use crate::{
    kernel::{
        devices, layout,
        layout::FieldPath,
        loader::{Hook, MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, IO_BUCKETS, Labels, prometheus_histogram, with},
        parts::{Cell, Detail, TopColumn, bars, or_dash, truncate_left},
    },
    workloads::{cgroup::Hierarchy, identity::Identity},
};

/// The kernel fields only this signal reads: `(struct, dotted path)`.
const REQUEST_QUEUE: layout::FieldPath = ("request", "q");
const QUEUE_DISK: layout::FieldPath = ("request_queue", "disk");
/// Older kernels (5.10), whose `request_queue` has no `disk`: the request names its disk.
const REQUEST_RQ_DISK: layout::FieldPath = ("request", "rq_disk");
const DISK_MAJOR: layout::FieldPath = ("gendisk", "major");
const DISK_FIRST_MINOR: layout::FieldPath = ("gendisk", "first_minor");
const REQUEST_CMD_FLAGS: layout::FieldPath = ("request", "cmd_flags");
const REQUEST_DATA_LEN: layout::FieldPath = ("request", "__data_len");
const REQUEST_START_TIME: layout::FieldPath = ("request", "start_time_ns");
const REQUEST_BIO: layout::FieldPath = ("request", "bio");
const BIO_BLKG: layout::FieldPath = ("bio", "bi_blkg");
const BLKG_BLKCG: layout::FieldPath = ("blkcg_gq", "blkcg");
const BLKCG_CGROUP: layout::FieldPath = ("blkcg", "css.cgroup");

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BlockReport {
    pub device: String,
    /// `read`, `write`, `flush`, `discard` or `other`.
    pub op: String,
    /// The device's IO scheduler now (`none`, `mq-deadline`, ...), if it has one.
    pub scheduler: Option<String>,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Issue -> complete.
    pub service_ms: LatencySummary,
    /// Insert -> issue, over the requests that went through a scheduler queue.
    pub queue_ms: LatencySummary,
    /// The distributions behind the summaries, for the exporter.
    #[serde(skip)]
    pub service_histogram: LatencyHistogram,
    #[serde(skip)]
    pub queue_histogram: LatencyHistogram,
}

/// A workload's service (or queue) histograms summed over operations, on one device or
/// on all.
pub fn total(reports: &[BlockReport], device: Option<&str>, queue: bool) -> LatencyHistogram {
    total_of(reports, device, None, queue)
}

/// As [`total`], of one operation (`write`) or of all.
pub fn total_of(
    reports: &[BlockReport],
    device: Option<&str>,
    op: Option<&str>,
    queue: bool,
) -> LatencyHistogram {
    let mut total = LatencyHistogram::ZERO;
    for b in reports
        .iter()
        .filter(|b| device.is_none_or(|d| d == b.device) && op.is_none_or(|o| o == b.op))
    {
        let h = if queue {
            &b.queue_histogram
        } else {
            &b.service_histogram
        };
        histogram::add(&mut total, h);
    }
    total
}

/// Requests of `op` on one device or on all.
pub fn requests_of(reports: &[BlockReport], device: Option<&str>, op: &str) -> u64 {
    reports
        .iter()
        .filter(|b| device.is_none_or(|d| d == b.device) && b.op == op)
        .map(|b| b.requests)
        .sum()
}

/// Metric families the measures are exported in.
pub const SERVICE_SECONDS: &str = "tuneprobe_block_service_seconds";
pub const QUEUE_SECONDS: &str = "tuneprobe_block_queue_seconds";
/// Block requests completed with an error, by device and operation.
pub const ERRORS: &str = "tuneprobe_block_errors_total";
/// `SERVICE_SECONDS`'s `_count`: the completed requests.
pub const SERVICE_REQUESTS: &str = "tuneprobe_block_service_seconds_count";

/// The measures of the signal `verify` judges, per device.
pub mod measures {
    use super::{QUEUE_SECONDS, SERVICE_REQUESTS, SERVICE_SECONDS};
    use crate::signals::declaration::{Counter, Declaration, Exported};

    const BLOCK: &str = "block_rq_issue/complete per request, on the device";
    const SERVICE: Counter = Counter::of(SERVICE_SECONDS);
    const WRITES: Counter = Counter::only(SERVICE_SECONDS, "op", &["write"]);

    pub const SERVICE_MS: Declaration = Declaration::judged(
        "mean block request service time (issue to complete), ms",
        Some("block_requests"),
        BLOCK,
        Exported::mean(SERVICE),
    )
    .per_device();
    pub const SERVICE_P99_MS: Declaration = Declaration::judged(
        "p99 of the block service time, ms",
        Some("block_requests"),
        BLOCK,
        Exported::p99(SERVICE),
    )
    .per_device();
    pub const QUEUE_MS: Declaration = Declaration::judged(
        "mean time a block request waited in the scheduler (insert to issue), ms",
        Some("block_requests"),
        "block_rq_insert/issue per request, on the device",
        Exported::mean(Counter::of(QUEUE_SECONDS)),
    )
    .per_device();
    pub const WRITE_MS: Declaration = Declaration::judged(
        "mean service time of block write requests, ms",
        Some("block_writes"),
        BLOCK,
        Exported::mean(WRITES),
    )
    .per_device();
    pub const WRITE_P99_MS: Declaration = Declaration::judged(
        "p99 of the block write service time, ms (writeback bursts)",
        Some("block_writes"),
        BLOCK,
        Exported::p99(WRITES),
    )
    .per_device();
    pub const WRITES_PER_READ: Declaration = Declaration::judged(
        "block write requests per read request (access-time updates)",
        Some("block_reads"),
        BLOCK,
        Exported::ratio(
            Counter::only(SERVICE_REQUESTS, "op", &["write"]),
            Counter::only(SERVICE_REQUESTS, "op", &["read"]),
        ),
    )
    .per_device();
}

/// What the block programs read to key a request by device, operation and cgroup.
const REQUEST_FIELDS: &[FieldPath] = &[
    REQUEST_QUEUE,
    QUEUE_DISK,
    DISK_MAJOR,
    DISK_FIRST_MINOR,
    REQUEST_CMD_FLAGS,
    REQUEST_DATA_LEN,
    REQUEST_START_TIME,
    REQUEST_BIO,
    BIO_BLKG,
    BLKG_BLKCG,
    BLKCG_CGROUP,
    layout::CGROUP_KN,
    layout::KERNFS_NODE_ID,
];

const fn program(name: &'static str, min_args: u32, needs: &'static [FieldPath]) -> ProgramSpec {
    ProgramSpec {
        name,
        signal: <BlockIo as Source>::NAME,
        hook: Hook::BtfTracePoint {
            tracepoint: name,
            min_args,
        },
        needs,
    }
}

pub struct BlockIo {
    sys_root: PathBuf,
}

impl Source for BlockIo {
    const NAME: &'static str = "block_io";
    const TRACE_NAME: &'static str = "block";
    const LAYOUT: Option<layout::Resolve> = Some(layout);
    const PROGRAMS: &'static [ProgramSpec] = &[
        program("block_rq_insert", 1, REQUEST_FIELDS),
        program("block_rq_issue", 1, REQUEST_FIELDS),
        program("block_rq_merge", 1, &[]),
        // (rq, error, nr_bytes)
        program("block_rq_complete", 3, REQUEST_FIELDS),
    ];
    type Counters = HashMap<BlockKey, BlockStats>;
    type Section = Vec<BlockReport>;

    fn new(settings: &Settings) -> Self {
        Self {
            sys_root: settings.sys_root.clone(),
        }
    }

    fn read(probe: &Probe) -> Result<Self::Counters, MapError> {
        probe.read_hash(BLOCK_IO_MAP)
    }

    fn cgroups(counters: &Self::Counters) -> Vec<(Hierarchy, u64)> {
        counters
            .keys()
            .map(|k| (Hierarchy::Blkio, k.cgroup_id))
            .collect()
    }

    fn collect_garbage(
        &mut self,
        probe: &mut Probe,
        now: &Self::Counters,
        baseline: &mut Self::Counters,
        dead: &Dead,
    ) -> Result<Vec<(&'static str, u64)>, MapError> {
        Ok(vec![delete_entries::<_, BlockStats, _>(
            probe,
            BLOCK_IO_MAP,
            now,
            baseline,
            |k| dead.cgroup_gone(Hierarchy::Blkio, k.cgroup_id),
        )?])
    }

    fn report(
        &self,
        probe: &Probe,
        now: &Self::Counters,
        baseline: &Self::Counters,
        _shared: &Shared,
        out: &mut dyn Attribution<Vec<BlockReport>>,
    ) {
        let block_ops = probe.block_ops();
        let mut keys: Vec<&BlockKey> = now.keys().collect();
        keys.sort_by_key(|k| (k.cgroup_id, k.dev, k.op));
        for key in keys {
            let stats = &now[key];
            let before = baseline.get(key).copied().unwrap_or(BlockStats::ZERO);
            let service = histogram::since(&stats.service, &before.service);
            if service.count == 0 {
                continue;
            }
            let queue = histogram::since(&stats.queue, &before.queue);
            let device = devices::name(&self.sys_root, key.dev);
            let report = BlockReport {
                scheduler: devices::scheduler(&self.sys_root, &device),
                device,
                op: block_ops.name(key.op).to_string(),
                requests: service.count,
                // Shared values are read while the kernel adds to them: never underflow.
                bytes: stats.bytes.saturating_sub(before.bytes),
                errors: stats.errors.saturating_sub(before.errors),
                service_ms: LatencySummary::of(&service),
                queue_ms: LatencySummary::of(&queue),
                service_histogram: service,
                queue_histogram: queue,
            };
            let owner = Owner::Cgroup {
                hierarchy: Hierarchy::Blkio,
                id: key.cgroup_id,
                netns: None,
            };
            out.slot(owner).section.push(report);
        }
    }

    fn metrics(block: &Vec<BlockReport>, labels: &Labels, f: &mut Families) {
        for b in block {
            let l = with(labels, &[("device", &b.device), ("op", &b.op)]);
            f.add(
                SERVICE_SECONDS,
                "Block request issue to complete; the count is the completed requests.",
                l.clone(),
                prometheus_histogram(&b.service_histogram, IO_BUCKETS),
            );
            f.add(
                QUEUE_SECONDS,
                "Block request insert to issue, for requests that went through a scheduler queue.",
                l.clone(),
                prometheus_histogram(&b.queue_histogram, IO_BUCKETS),
            );
            f.counter(
                "tuneprobe_block_bytes_total",
                "Bytes completed by block requests.",
                l.clone(),
                b.bytes as f64,
            );
            f.counter(
                ERRORS,
                "Block requests completed with an error.",
                l,
                b.errors as f64,
            );
        }
    }

    const TRACE_KIND: TraceKind = TraceKind::Block;
    const TRACE_HIERARCHY: Hierarchy = Hierarchy::Blkio;
    type Event = BlockEvent;
    type TraceFields = TraceFields;

    fn trace_fields(event: &BlockEvent, context: &mut TraceContext<'_>) -> TraceFields {
        let device = context.device(event.dev);
        TraceFields::of(event, device, context.probe.block_ops().name(event.op))
    }

    fn trace_detail(fields: &TraceFields) -> String {
        fields.detail()
    }

    fn trace_latency_ms(fields: &TraceFields) -> Option<f64> {
        Some(fields.service_ms + fields.queue_ms)
    }

    const TOP_COLUMNS: &'static [TopColumn] = &[TopColumn {
        name: "block-p99",
        title: "BLOCK p99",
        width: 16,
    }];

    /// The device with the slowest p99 service time over the interval, and that p99.
    fn top_cells(now: &Vec<BlockReport>, before: &Vec<BlockReport>, _seconds: f64) -> Vec<Cell> {
        let mut worst: Option<(&str, f64)> = None;
        for b in now {
            let earlier = before.iter().find(|e| e.device == b.device && e.op == b.op);
            let delta = match earlier {
                Some(e) => histogram::since(&b.service_histogram, &e.service_histogram),
                None => b.service_histogram,
            };
            if let Some(p99) = histogram::quantile_ms(&delta, 0.99)
                && worst.is_none_or(|(_, w)| p99 > w)
            {
                worst = Some((&b.device, p99));
            }
        }
        vec![Cell::ms(worst.map(|(d, _)| d), worst.map(|(_, p99)| p99))]
    }

    fn top_detail(section: &Vec<BlockReport>, detail: &mut Detail) {
        let mut devices: Vec<&str> = section.iter().map(|b| b.device.as_str()).collect();
        devices.sort_unstable();
        devices.dedup();
        for device in devices {
            detail.histograms.push((
                format!("block service time on {device}"),
                bars(&total(section, Some(device), false)),
            ));
        }
    }

    fn table(rows: &[(&Identity, &Vec<BlockReport>)]) -> String {
        let mut out = String::new();
        let rows = rows.iter().flat_map(|(w, b)| b.iter().map(move |b| (w, b)));
        for (i, (workload, b)) in rows.enumerate() {
            if i == 0 {
                let _ = writeln!(
                    out,
                    "{:<50} {:<10} {:<7} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
                    "WORKLOAD",
                    "DEVICE",
                    "OP",
                    "REQS",
                    "MB",
                    "MEAN ms",
                    "P50 ms",
                    "P99 ms",
                    "QUEUE ms"
                );
            }
            let _ = writeln!(
                out,
                "{:<50} {:<10} {:<7} {:>8} {:>10.1} {:>9} {:>9} {:>9} {:>9}",
                truncate_left(&workload.display_name(), 50),
                b.device,
                b.op,
                b.requests,
                b.bytes as f64 / 1e6,
                or_dash(b.service_ms.mean, 3),
                or_dash(b.service_ms.p50, 3),
                or_dash(b.service_ms.p99, 3),
                or_dash(b.queue_ms.mean, 3),
            );
        }
        out
    }
}

/// A completed request as `trace` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceFields {
    pub device: String,
    pub op: &'static str,
    pub bytes: u64,
    pub service_ms: f64,
    pub queue_ms: f64,
    pub error: bool,
}

impl TraceFields {
    /// `device` named from sysfs, `op` from the kernel's BTF.
    pub fn of(e: &BlockEvent, device: String, op: &'static str) -> Self {
        Self {
            device,
            op,
            bytes: e.bytes,
            service_ms: endpoints::ms(e.service_ns),
            queue_ms: endpoints::ms(e.queue_ns),
            error: e.error != 0,
        }
    }

    pub fn detail(&self) -> String {
        format!(
            "{} {} {}B service={:.3}ms queue={:.3}ms{}",
            self.device,
            self.op,
            self.bytes,
            self.service_ms,
            self.queue_ms,
            if self.error { " ERROR" } else { "" }
        )
    }
}

/// The block programs' layout: a request's disk, size, start time and cgroup.
fn layout(r: &mut layout::Resolver) -> layout::Global {
    let (queue_disk, request_has_rq_disk) = request_disk(r);
    let layout = probe_common::block_io::BlockLayout {
        request_queue: r.offset(REQUEST_QUEUE),
        queue_disk,
        request_has_rq_disk,
        disk_major: r.offset(DISK_MAJOR),
        disk_first_minor: r.offset(DISK_FIRST_MINOR),
        request_cmd_flags: r.offset(REQUEST_CMD_FLAGS),
        request_data_len: r.offset(REQUEST_DATA_LEN),
        request_start_time_ns: r.offset(REQUEST_START_TIME),
        request_bio: r.offset(REQUEST_BIO),
        bio_blkg: r.offset(BIO_BLKG),
        blkg_blkcg: r.offset(BLKG_BLKCG),
        blkcg_cgroup: r.offset(BLKCG_CGROUP),
    };
    layout::Global::of(probe_common::block_io::BlockLayout::GLOBAL, &layout)
}

/// Where a request's disk is: `request.q->disk` where BTF has it, else `request.rq_disk`
/// (5.10). Returns the offset of the last field read, and 1 if it is `rq_disk`.
fn request_disk(r: &mut layout::Resolver) -> (u32, u32) {
    let btf = r.btf;
    match btf.field_offset(QUEUE_DISK.0, QUEUE_DISK.1) {
        Ok(offset) => (offset.bytes, 0),
        Err(queue_err) => match btf.field_offset(REQUEST_RQ_DISK.0, REQUEST_RQ_DISK.1) {
            Ok(offset) => (offset.bytes, 1),
            Err(err) => {
                r.missing(QUEUE_DISK, format!("{queue_err}; nor {err}"));
                (0, 0)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    /// Its layout from this kernel's BTF: every field placed, each where BTF says.
    #[test]
    fn layout_resolves_from_the_running_kernel() {
        let (btf, l): (_, probe_common::block_io::BlockLayout) =
            crate::kernel::layout::resolved_alone(super::layout);
        let at = |ty: &str, path: &str| btf.field_offset(ty, path).unwrap().bytes;
        // 6.18: the disk is the request queue's.
        assert_eq!(l.request_has_rq_disk, 0);
        assert_eq!(l.queue_disk, at("request_queue", "disk"));
        assert_eq!(
            l.blkcg_cgroup,
            at("blkcg", "css") + at("cgroup_subsys_state", "cgroup")
        );
    }
}
