//! Loads the embedded programs, adapts them to the running kernel and attaches each one
//! on its own: a program this kernel cannot run is reported, the others keep working.

use std::{collections::HashMap, ffi::CString, hash::Hash, io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use log::{debug, warn};
use probe_common::{OverflowSlot, overflow::MAP_OVERFLOWS_MAP};
use serde::Serialize;

use crate::kernel::{
    btf::{Btf, BtfError, VMLINUX_BTF},
    layout::{self, BlockOps, DropReasons, FieldPath},
    symbols::{KALLSYMS, Symbols},
};

/// The object `probe-user/build.rs` built from `probe-ebpf`.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

/// One kernel program: where it hooks, and what it needs from this kernel.
#[derive(Debug)]
pub struct ProgramSpec {
    /// The program's function name in `probe-ebpf`.
    pub name: &'static str,
    /// The signal it feeds, by name (the loader loads any program; the signals know
    /// which are theirs).
    pub signal: &'static str,
    pub hook: Hook,
    /// Kernel fields it reads.
    pub needs: &'static [FieldPath],
}

/// Where a program attaches.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// A BTF tracepoint; `min_args` is how many arguments the program reads
    /// unconditionally.
    BtfTracePoint {
        tracepoint: &'static str,
        min_args: u32,
    },
    /// A `cgroup_skb` program on the root of the cgroup v2 hierarchy: it sees the
    /// packets of every socket on the node.
    CgroupSkb(CgroupSkbAttachType),
}

/// Whether one program runs, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeStatus {
    pub name: String,
    pub signal: &'static str,
    pub attached: bool,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no BTF at {path} ({cause}); the kernel needs CONFIG_DEBUG_INFO_BTF, or pass --btf PATH"
    )]
    // Not `source`: the message already says it, and an error chain would say it twice.
    Btf { path: PathBuf, cause: BtfError },
    #[error(
        "permission denied loading eBPF programs: run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN ({0})"
    )]
    Permission(String),
    #[error("this kernel has no usable bpf() syscall: {0}")]
    NoBpf(String),
    #[error("loading the eBPF object failed: {0}")]
    Object(String),
    #[error("no program could be attached on this kernel: {0}")]
    NothingAttached(String),
}

/// Reading or changing a kernel map failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("map {0} missing from the object")]
    Missing(String),
    #[error("map {0} missing or already taken")]
    Taken(&'static str),
    #[error("map {name}")]
    Access {
        name: String,
        // Boxed: aya's error is large, and every read of the data path returns this.
        #[source]
        source: Box<aya::maps::MapError>,
    },
}

impl MapError {
    /// `Access` of map `name`, for `map_err`.
    pub fn access(name: &str) -> impl Fn(aya::maps::MapError) -> Self + '_ {
        move |source| Self::Access {
            name: name.to_string(),
            source: Box::new(source),
        }
    }
}

/// How to load the programs.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Kernel BTF; defaults to `/sys/kernel/btf/vmlinux`.
    pub btf_path: Option<PathBuf>,
    /// Capacity overrides for aggregation maps, by map name (the defaults are the
    /// `*_MAX_*` constants in `probe-common`).
    pub map_max_entries: Vec<(&'static str, u32)>,
    /// Ask the kernel to account each program's run time while tuneprobe runs
    /// (`BPF_ENABLE_STATS`; it costs a little on every program run, node-wide).
    pub bpf_stats: bool,
    /// Emit per-event records for `tuneprobe trace` into a ring buffer of this many
    /// bytes. `None` (everything but `trace`): the programs are loaded with emission
    /// off, which the verifier removes as dead code.
    pub trace: Option<(probe_common::trace::TraceConfig, u32)>,
}

/// The kernel's accounting of one program (zero unless run-time stats are enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// The loaded and attached programs, and the maps they aggregate into.
pub struct Probe {
    ebpf: Ebpf,
    statuses: Vec<ProbeStatus>,
    drop_reasons: DropReasons,
    block_ops: BlockOps,
    /// Held while run-time stats should stay enabled.
    _stats: Option<std::os::fd::OwnedFd>,
}

impl Probe {
    /// Loads `programs` into the kernel and attaches every one this kernel supports.
    pub fn load_programs(
        options: &LoadOptions,
        programs: &[&'static ProgramSpec],
        layouts: &[layout::Resolve],
    ) -> Result<Self, LoadError> {
        raise_memlock_rlimit();
        mount_tracefs_if_absent();

        let btf_path = btf_path(options);
        let btf_error = |cause| LoadError::Btf {
            path: btf_path.clone(),
            cause,
        };
        let btf = Btf::from_file(&btf_path).map_err(btf_error)?;
        let resolved = layout::resolve(&btf, layouts);
        // Before 5.17 `kfree_skb` passes no reason: drops are named by their location.
        let drop_reasons = if btf.tracepoint_args("kfree_skb").unwrap_or(0) < 3 {
            drop_locations(programs)
        } else {
            DropReasons::from_btf(&btf).unwrap_or_else(|err| {
                warn!("drop reasons will show as numbers: {err}");
                DropReasons::default()
            })
        };
        let block_ops = BlockOps::from_btf(&btf);
        let unsupported_reasons: Vec<Option<String>> = programs
            .iter()
            .map(|spec| unsupported(spec, &btf, &resolved))
            .collect();
        // Two parsed copies of the kernel's BTF at once were the agent's peak memory
        // (xtask bench): ours is done with before aya parses its own.
        drop(btf);
        let aya_btf = aya::Btf::parse_file(&btf_path, aya::Endianness::default())
            .map_err(|e| btf_error(BtfError::Malformed(e.to_string())))?;

        let mut loader = EbpfLoader::new();
        loader.btf(Some(&aya_btf));
        for global in &resolved.globals {
            loader.override_global(global.name, global.bytes.as_slice(), true);
        }
        for &(map, entries) in &options.map_max_entries {
            loader.map_max_entries(map, entries);
        }
        if let Some((config, ring_bytes)) = &options.trace {
            loader
                .override_global(probe_common::trace::TRACE_CONFIG_GLOBAL, config, true)
                .map_max_entries(probe_common::trace::TRACE_EVENTS_MAP, *ring_bytes);
        }
        let mut ebpf = loader
            .load(PROGRAMS_OBJECT)
            .map_err(|err| classify(&err, LoadError::Object))?;

        let statuses = attach_all(&mut ebpf, programs, unsupported_reasons, &aya_btf);
        if let Some(err) = nothing_attached(&statuses) {
            return Err(err);
        }
        let stats = options.bpf_stats.then(|| {
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|err| warn!("kernel run-time stats stay off: {err}"))
                .ok()
        });
        Ok(Self {
            ebpf,
            statuses,
            drop_reasons,
            block_ops,
            _stats: stats.flatten(),
        })
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }

    /// Run time and run count of every attached program, as the kernel accounts them.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.statuses
            .iter()
            .filter(|s| s.attached)
            .filter_map(|s| {
                let info = self.ebpf.program(&s.name)?.info().ok()?;
                Some(ProgramStats {
                    name: s.name.clone(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    pub fn drop_reasons(&self) -> &DropReasons {
        &self.drop_reasons
    }

    pub fn block_ops(&self) -> &BlockOps {
        &self.block_ops
    }

    /// A kernel map by name, to read or change it.
    pub fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map, MapError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| MapError::Missing(name.to_string()))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map, MapError> {
        self.ebpf
            .map(name)
            .ok_or_else(|| MapError::Missing(name.to_string()))
    }

    /// The trace ring buffer, handed over to its reader (once).
    pub fn take_trace_events(&mut self) -> Result<aya::maps::RingBuf<MapData>, MapError> {
        use probe_common::trace::TRACE_EVENTS_MAP;
        let map = self
            .ebpf
            .take_map(TRACE_EVENTS_MAP)
            .ok_or(MapError::Taken(TRACE_EVENTS_MAP))?;
        aya::maps::RingBuf::try_from(map).map_err(MapError::access(TRACE_EVENTS_MAP))
    }

    /// Trace records that did not fit in the ring buffer, per kind, summed over CPUs.
    pub fn trace_lost(&self) -> Result<Vec<(probe_common::trace::TraceKind, u64)>, MapError> {
        use probe_common::trace::{TRACE_LOST_MAP, TraceKind};
        let array = PerCpuArray::<&MapData, u64>::try_from(self.map(TRACE_LOST_MAP)?)
            .map_err(MapError::access(TRACE_LOST_MAP))?;
        TraceKind::ALL
            .iter()
            .map(|&kind| {
                let values = array
                    .get(&(kind as u32), 0)
                    .map_err(MapError::access(TRACE_LOST_MAP))?;
                Ok((kind, values.iter().sum()))
            })
            .collect()
    }

    /// Updates lost to full maps, per map name.
    pub fn map_overflows(&self) -> Result<Vec<(&'static str, u64)>, MapError> {
        let array = PerCpuArray::<&MapData, u64>::try_from(self.map(MAP_OVERFLOWS_MAP)?)
            .map_err(MapError::access(MAP_OVERFLOWS_MAP))?;
        OverflowSlot::ALL
            .iter()
            .map(|&slot| {
                let values = array
                    .get(&(slot as u32), 0)
                    .map_err(MapError::access(MAP_OVERFLOWS_MAP))?;
                Ok((slot.map_name(), values.iter().sum()))
            })
            .collect()
    }

    /// Deletes `keys` from the aggregation map `name` (a hash or per-CPU hash map with
    /// values of type `V`); returns how many were there.
    pub fn remove_entries<K, V>(&mut self, name: &str, keys: &[K]) -> Result<u64, MapError>
    where
        K: aya::Pod,
        V: aya::Pod,
    {
        let map = self.map_mut(name)?;
        let removed = if matches!(map, aya::maps::Map::PerCpuHashMap(_)) {
            let mut map = PerCpuHashMap::<&mut MapData, K, V>::try_from(map)
                .map_err(MapError::access(name))?;
            // ENOENT: the program or a previous pass removed it already.
            keys.iter().filter(|key| map.remove(key).is_ok()).count()
        } else {
            let mut map = aya::maps::HashMap::<&mut MapData, K, V>::try_from(map)
                .map_err(MapError::access(name))?;
            keys.iter().filter(|key| map.remove(key).is_ok()).count()
        };
        Ok(removed as u64)
    }

    /// Every entry of the hash map `name` (values shared by all CPUs).
    pub fn read_hash<K, V>(&self, name: &str) -> Result<HashMap<K, V>, MapError>
    where
        K: aya::Pod + Eq + Hash,
        V: aya::Pod,
    {
        let map = aya::maps::HashMap::<&MapData, K, V>::try_from(self.map(name)?)
            .map_err(MapError::access(name))?;
        map.iter()
            .map(|entry| entry.map_err(MapError::access(name)))
            .collect()
    }

    /// Every entry of the per-CPU hash map `name`, its CPUs' values summed by `add`.
    pub fn read_per_cpu<K, V>(
        &self,
        name: &str,
        add: impl Fn(&mut V, &V),
    ) -> Result<HashMap<K, V>, MapError>
    where
        K: aya::Pod + Eq + Hash,
        V: aya::Pod + Default,
    {
        let map = PerCpuHashMap::<&MapData, K, V>::try_from(self.map(name)?)
            .map_err(MapError::access(name))?;
        let mut out = HashMap::new();
        for entry in &map {
            let (key, per_cpu) = entry.map_err(MapError::access(name))?;
            let total = out.entry(key).or_insert_with(V::default);
            for value in per_cpu.iter() {
                add(total, value);
            }
        }
        Ok(out)
    }
}

/// Drop names on a kernel whose `kfree_skb` passes no reason (before 5.17): the
/// function that dropped the packet, from `/proc/kallsyms`. Read now, while tuneprobe
/// still holds `CAP_SYSLOG` (the kernel shows addresses to readers that had it at
/// `open`), and only when the drops program is loaded.
fn drop_locations(programs: &[&'static ProgramSpec]) -> DropReasons {
    let hooks_kfree_skb = |spec: &&&ProgramSpec| {
        matches!(
            spec.hook,
            Hook::BtfTracePoint {
                tracepoint: "kfree_skb",
                ..
            }
        )
    };
    if !programs.iter().any(|spec| hooks_kfree_skb(&spec)) {
        return DropReasons::default();
    }
    let symbols = Symbols::load(std::path::Path::new(KALLSYMS));
    if symbols.is_empty() {
        warn!(
            "this kernel's kfree_skb passes no drop reason and {KALLSYMS} shows no addresses (kptr_restrict, or no CAP_SYSLOG): drops are named by code address"
        );
    }
    DropReasons::by_location(symbols)
}

/// Why `spec` cannot run on this kernel, judged from BTF before trying.
fn unsupported(spec: &ProgramSpec, btf: &Btf, resolved: &layout::ResolvedLayout) -> Option<String> {
    match spec.hook {
        Hook::BtfTracePoint {
            tracepoint,
            min_args,
        } => match btf.tracepoint_args(tracepoint) {
            Err(err) => return Some(err.to_string()),
            Ok(args) if args < min_args => {
                return Some(format!(
                    "tracepoint {tracepoint} passes {args} arguments on this kernel, the program needs {min_args}"
                ));
            }
            Ok(_) => {}
        },
        Hook::CgroupSkb(_) => {
            if crate::workloads::cgroup::cgroup2_mount().is_none() {
                return Some("cgroup v2 is not mounted".to_string());
            }
        }
    }
    resolved.unavailable(spec.needs)
}

fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, btf: &aya::Btf) -> Result<(), String> {
    let program = ebpf
        .program_mut(spec.name)
        .ok_or_else(|| format!("program {} missing from the object", spec.name))?;
    match spec.hook {
        Hook::BtfTracePoint { tracepoint, .. } => {
            let program: &mut BtfTracePoint = program.try_into().map_err(|e| error_chain(&e))?;
            program
                .load(tracepoint, btf)
                .map_err(|e| format!("load: {}", error_chain(&e)))?;
            program
                .attach()
                .map_err(|e| format!("attach: {}", error_chain(&e)))?;
            debug!("attached {} to tp_btf/{tracepoint}", spec.name);
        }
        Hook::CgroupSkb(attach_type) => {
            let root =
                crate::workloads::cgroup::cgroup2_mount().ok_or("cgroup v2 is not mounted")?;
            let cgroup =
                std::fs::File::open(&root).map_err(|e| format!("open {}: {e}", root.display()))?;
            let program: &mut CgroupSkb = program.try_into().map_err(|e| error_chain(&e))?;
            program
                .load()
                .map_err(|e| format!("load: {}", error_chain(&e)))?;
            // On 5.7+ aya attaches with a bpf_link, which always coexists with other
            // programs on the cgroup and takes no flags (a multi flag is EINVAL there).
            program
                .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .map_err(|e| format!("attach: {}", error_chain(&e)))?;
            debug!(
                "attached {} to {} ({attach_type:?})",
                spec.name,
                root.display()
            );
        }
    }
    Ok(())
}

/// The error and its causes on one line, trimmed so a verifier log cannot flood a report.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // aya often repeats a cause's text in its wrapper; say it once.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let text = text.replace('\n', " ");
    const LIMIT: usize = 600;
    if text.len() <= LIMIT {
        return text;
    }
    let head: String = text.chars().take(200).collect();
    let tail: String = text
        .chars()
        .rev()
        .take(350)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head} … {tail}")
}

/// Maps permission and missing-syscall failures to the errors that say what to do.
fn classify(err: &aya::EbpfError, otherwise: fn(String) -> LoadError) -> LoadError {
    let text = error_chain(err);
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => return LoadError::Permission(text),
                Some(libc::ENOSYS) => return LoadError::NoBpf(text),
                _ => {}
            }
        }
        source = e.source();
    }
    otherwise(text)
}

/// The names of the programs in the embedded object, parsed without loading it (no
/// privileges needed).
pub fn object_programs() -> Result<Vec<String>, LoadError> {
    let ebpf = EbpfLoader::new()
        .btf(None)
        .load(PROGRAMS_OBJECT)
        .map_err(|err| LoadError::Object(error_chain(&err)))?;
    Ok(ebpf.programs().map(|(name, _)| name.to_string()).collect())
}

/// Where the kernel's BTF is read: the given path, else the node's or this /sys's.
fn btf_path(options: &LoadOptions) -> PathBuf {
    options.btf_path.clone().unwrap_or_else(|| {
        // The node's own, where a debug container's /sys may not show it.
        Some(crate::workloads::host::path(VMLINUX_BTF))
            .filter(|path| path.exists())
            .unwrap_or_else(|| PathBuf::from(VMLINUX_BTF))
    })
}

/// Attaches each program this kernel supports (`unsupported` says why not, in the order
/// of `programs`); each one's status, a warning for each that is off.
fn attach_all(
    ebpf: &mut Ebpf,
    programs: &[&'static ProgramSpec],
    unsupported: Vec<Option<String>>,
    btf: &aya::Btf,
) -> Vec<ProbeStatus> {
    programs
        .iter()
        .zip(unsupported)
        .map(|(spec, unsupported)| {
            let result = match unsupported {
                Some(reason) => Err(reason),
                None => attach(ebpf, spec, btf),
            };
            if let Err(reason) = &result {
                warn!("{} ({:?}) is off: {reason}", spec.name, spec.signal);
            }
            ProbeStatus {
                name: spec.name.to_string(),
                signal: spec.signal,
                attached: result.is_ok(),
                error: result.err(),
            }
        })
        .collect()
}

/// The error when no program attached: a permission problem, or every program's reason.
fn nothing_attached(statuses: &[ProbeStatus]) -> Option<LoadError> {
    if statuses.iter().any(|s| s.attached) {
        return None;
    }
    let reasons: Vec<String> = statuses
        .iter()
        .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("?")))
        .collect();
    let all = reasons.join("; ");
    if all.contains("Operation not permitted") || all.contains("Permission denied") {
        return Some(LoadError::Permission(all));
    }
    Some(LoadError::NothingAttached(all))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Later ones use memcg, and
/// root without CAP_SYS_RESOURCE cannot raise the limit: that is fine, not an error.
fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on kernels with memcg accounting",
            io::Error::last_os_error()
        );
    }
}

/// tracefs may be unmounted at boot. No program here needs it (all attach through BTF
/// tracepoints or cgroups), but classic tracepoints and tools looking at the node do:
/// failing to mount it is a warning that says so.
fn mount_tracefs_if_absent() {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|line| line.contains(" /sys/kernel/tracing ") && line.contains(" - tracefs "))
    });
    if mounted {
        return;
    }
    let (Ok(source), Ok(path), Ok(fstype)) = (
        CString::new("tracefs"),
        CString::new("/sys/kernel/tracing"),
        CString::new("tracefs"),
    ) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        // Expected in the DaemonSet (no CAP_SYS_ADMIN, no tracefs mount): not a warning
        // on every start, since nothing of tuneprobe's own depends on it.
        log::info!(
            "tracefs is not mounted and mounting it failed: {}; every signal still works (its programs attach through BTF tracepoints and cgroups, not tracefs)",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_trimmed_but_keep_both_ends() {
        let long = io::Error::other(format!("start {} end", "x".repeat(5000)));
        let text = error_chain(&long);
        assert!(text.len() < 700 && text.starts_with("start") && text.ends_with("end"));
    }
}
