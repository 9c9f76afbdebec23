//! The signals, one module each, registered in one list (`registry!` below).
//!
//! A signal module implements [`Source`]: its kernel programs, how its maps are read,
//! windowed and garbage-collected, which cgroups its keys name, its section of a
//! workload (`snapshot --json`) and its metric families. The registry turns the list
//! into the types the rest of the agent works with: [`Sections`] (every signal's
//! section of a workload), [`Counters`] (every signal's maps at one instant) and
//! [`Sources`] (every signal's window state), all statically dispatched.

pub mod block_io;
pub mod cpu_throttle;
pub mod declaration;
pub mod dns;
pub mod drops;
pub mod endpoints;
pub mod histogram;
pub mod measure;
pub mod record;
pub mod source;
pub mod tcp_connections;
pub mod tcp_retransmit;

use probe_common::trace::{TraceHeader, TraceKind};
use serde::{Serialize, Serializer};

use self::record::{RecordError, TraceContext};
pub use self::source::{
    Attribution, Dead, NetnsLoad, Owner, Settings, Shared, SignalError, Slot, Source,
};
use crate::{
    kernel::{
        layout::Resolve,
        loader::{LoadError, LoadOptions, MapError, Probe, ProgramSpec},
    },
    output::{
        families::{Families, Labels},
        parts::{Cell, Detail, TopColumn},
    },
    workloads::{
        cgroup::{CgroupPaths, Hierarchy},
        identity::Identity,
    },
};

/// Resolves owners to workloads: implemented by the window, which names them.
pub trait Workloads {
    /// The sections of `owner`'s workload, and its cgroup path.
    fn sections(&mut self, owner: Owner) -> (&mut Sections, Option<&str>);
}

/// One signal's view of [`Workloads`].
struct Field<'a, W: ?Sized, S> {
    workloads: &'a mut W,
    field: fn(&mut Sections) -> &mut S,
}

impl<W: Workloads + ?Sized, S> Attribution<S> for Field<'_, W, S> {
    fn slot(&mut self, owner: Owner) -> Slot<'_, S> {
        let (sections, path) = self.workloads.sections(owner);
        Slot {
            section: (self.field)(sections),
            path,
        }
    }
}

/// Wraps a map error of signal `S` while `doing` something to its maps.
fn failed<S: Source>(doing: &'static str) -> impl Fn(MapError) -> SignalError {
    move |source| SignalError {
        doing,
        signal: S::NAME,
        source,
    }
}

macro_rules! registry {
    ($($field:ident: $source:ty => $variant:ident),+ $(,)?) => {
        /// The signals tuneprobe measures; each kernel program feeds one. Its names are
        /// its module's ([`Source::NAME`], [`Source::TRACE_NAME`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Signal {
            $($variant,)+
        }

        impl Signal {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The name in `probes[].signal`, `check` and the `signal` label of
            /// `tuneprobe_probe_attached`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => <$source as Source>::NAME,)+
                }
            }

            /// The name `trace` takes on its command line and prints in its events.
            pub const fn trace_name(self) -> &'static str {
                match self {
                    $(Self::$variant => <$source as Source>::TRACE_NAME,)+
                }
            }

            /// The kind of its `trace` records.
            pub const fn trace_kind(self) -> TraceKind {
                match self {
                    $(Self::$variant => <$source as Source>::TRACE_KIND,)+
                }
            }
        }

        /// One checked ring-buffer record.
        #[derive(Debug, Clone)]
        pub struct Record {
            pub header: TraceHeader,
            event: Event,
        }

        #[derive(Debug, Clone)]
        enum Event {
            $($variant(Box<<$source as Source>::Event>),)+
        }

        /// A signal's own fields of a `trace` event.
        #[derive(Debug, Clone, Serialize, PartialEq)]
        #[serde(untagged)]
        pub enum Fields {
            $($variant(<$source as Source>::TraceFields),)+
        }

        impl Record {
            /// Checks and copies a record: never trusted to be well formed, a short or
            /// unknown record is an error, not a crash.
            pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
                let header = record::header(bytes)?;
                let kind = TraceKind::from_u32(header.kind)
                    .ok_or(RecordError::UnknownKind(header.kind))?;
                let event = match Signal::of_trace_kind(kind) {
                    $(Some(Signal::$variant) => Event::$variant(record::read(kind, bytes)?),)+
                    None => return Err(RecordError::UnknownKind(header.kind)),
                };
                Ok(Self { header, event })
            }

            pub const fn signal(&self) -> Signal {
                match self.event {
                    $(Event::$variant(_) => Signal::$variant,)+
                }
            }

            /// The hierarchy of the header's cgroup id.
            pub const fn hierarchy(&self) -> Hierarchy {
                match self.event {
                    $(Event::$variant(_) => <$source as Source>::TRACE_HIERARCHY,)+
                }
            }

            pub fn fields(&self, context: &mut TraceContext<'_>) -> Fields {
                match &self.event {
                    $(Event::$variant(event) => {
                        Fields::$variant(<$source as Source>::trace_fields(event, context))
                    })+
                }
            }
        }

        impl Fields {
            pub fn detail(&self) -> String {
                match self {
                    $(Self::$variant(fields) => <$source as Source>::trace_detail(fields),)+
                }
            }

            pub fn latency_ms(&self) -> Option<f64> {
                match self {
                    $(Self::$variant(fields) => <$source as Source>::trace_latency_ms(fields),)+
                }
            }
        }

        /// Every signal's section of one workload (`tcp`, `drops`, ... in the JSON).
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        pub struct Sections {
            $(pub $field: <$source as Source>::Section,)+
        }

        /// Every signal's kernel maps at one instant.
        #[derive(Debug, Clone, Default)]
        pub struct Counters {
            $($field: <$source as Source>::Counters,)+
        }

        /// Every signal's state over a window.
        pub struct Sources {
            $($field: $source,)+
        }

        mod field {
            use super::*;
            $(pub(super) fn $field(s: &mut Sections) -> &mut <$source as Source>::Section {
                &mut s.$field
            })+
        }

        /// `top`'s columns after the workload's, signal by signal.
        pub fn top_columns() -> Vec<TopColumn> {
            let mut all = Vec::new();
            $(all.extend(<$source as Source>::TOP_COLUMNS);)+
            all
        }

        /// `snapshot`'s tables, signal by signal (empty where a signal saw nothing).
        pub fn tables(workloads: &[(&Identity, &Sections)]) -> Vec<String> {
            vec![$(<$source as Source>::table(
                &workloads.iter().map(|(w, s)| (*w, &s.$field)).collect::<Vec<_>>(),
            ),)+]
        }

        /// Every kernel program, signal by signal.
        pub fn programs() -> Vec<&'static ProgramSpec> {
            let mut all = Vec::new();
            $(all.extend(<$source as Source>::PROGRAMS);)+
            all
        }

        /// The signals' own layout globals, to resolve from BTF at load time.
        pub fn layouts() -> Vec<Resolve> {
            [$(<$source as Source>::LAYOUT),+].into_iter().flatten().collect()
        }

        impl Sections {
            /// Last touches once every workload is known (namespace totals).
            pub fn complete(&mut self, shared: &Shared, netns: Option<u32>) {
                $(<$source as Source>::complete(shared, netns, &mut self.$field);)+
            }

            /// Every signal's `top` cells over an interval, in [`top_columns`]' order.
            pub fn top_cells(&self, before: &Self, seconds: f64) -> Vec<Cell> {
                let mut all = Vec::new();
                $(all.extend(<$source as Source>::top_cells(&self.$field, &before.$field, seconds));)+
                all
            }

            /// Every signal's part of `top`'s detail view.
            pub fn top_detail(&self, detail: &mut Detail) {
                $(<$source as Source>::top_detail(&self.$field, detail);)+
            }

            /// Every signal's metric families for this workload.
            pub fn metrics(&self, labels: &Labels, families: &mut Families) {
                $(<$source as Source>::metrics(&self.$field, labels, families);)+
            }
        }

        impl Sources {
            pub fn new(settings: &Settings) -> Self {
                Self { $($field: <$source as Source>::new(settings),)+ }
            }

            pub fn read(probe: &Probe) -> Result<Counters, SignalError> {
                Ok(Counters {
                    $($field: <$source as Source>::read(probe)
                        .map_err(failed::<$source>("reading"))?,)+
                })
            }

            /// The cgroup ids the keys carry.
            pub fn cgroups(counters: &Counters) -> Vec<(Hierarchy, u64)> {
                let mut all = Vec::new();
                $(all.extend(<$source as Source>::cgroups(&counters.$field));)+
                all
            }

            /// Counts per network namespace.
            pub fn netns_counts(counters: &Counters) -> Vec<(u32, u64)> {
                let mut all = Vec::new();
                $(all.extend(<$source as Source>::netns_counts(&counters.$field));)+
                all
            }

            pub fn tick(&mut self, probe: &mut Probe, cpu_paths: &mut CgroupPaths) -> Result<(), SignalError> {
                $(self.$field.tick(probe, cpu_paths).map_err(failed::<$source>("upkeep of"))?;)+
                Ok(())
            }

            /// Deletes dead workloads' entries; the deleted count per map.
            pub fn collect_garbage(
                &mut self,
                probe: &mut Probe,
                now: &Counters,
                baseline: &mut Counters,
                dead: &Dead,
            ) -> Result<Vec<(&'static str, u64)>, SignalError> {
                let mut all = Vec::new();
                $(all.extend(
                    self.$field
                        .collect_garbage(probe, &now.$field, &mut baseline.$field, dead)
                        .map_err(failed::<$source>("collecting garbage in"))?,
                );)+
                Ok(all)
            }

            pub fn forget(&mut self, hierarchy: Hierarchy, path: &str) {
                $(self.$field.forget(hierarchy, path);)+
            }

            /// Every signal's counts over the window, into `workloads`.
            pub fn report<W: Workloads>(
                &self,
                probe: &Probe,
                now: &Counters,
                baseline: &Counters,
                shared: &Shared,
                workloads: &mut W,
            ) {
                $(self.$field.report(
                    probe,
                    &now.$field,
                    &baseline.$field,
                    shared,
                    &mut Field { workloads: &mut *workloads, field: field::$field },
                );)+
            }
        }
    };
}

// The signals, in the order of a workload's JSON, the probe list, `snapshot`'s tables and
// `top`'s columns: the section's
// name, the module's source, the signal's name in Rust. Adding one is its module and a
// line here.
registry! {
    tcp: tcp_retransmit::TcpRetransmit => TcpRetransmit,
    drops: drops::Drops => Drops,
    dns: dns::Dns => Dns,
    block: block_io::BlockIo => BlockIo,
    cpu: cpu_throttle::CpuThrottle => CpuThrottle,
    connections: tcp_connections::TcpConnections => TcpConnections,
}

impl Signal {
    pub fn of_trace_kind(kind: TraceKind) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.trace_kind() == kind)
    }

    /// The signal `trace` calls `name`.
    pub fn of_trace_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.trace_name() == name)
    }

    /// The signal called `name` in the JSON.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Probe {
    /// Loads every signal's programs and attaches each one this kernel supports. Here,
    /// next to the list of signals: the loader knows how to load any program, the
    /// registry which programs there are.
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_programs(options, &programs(), &layouts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_match_the_json() {
        for (i, signal) in Signal::ALL.iter().enumerate() {
            assert_eq!(serde_json::to_value(signal).unwrap(), signal.name());
            assert_eq!(Signal::of_trace_kind(signal.trace_kind()), Some(*signal));
            assert_eq!(Signal::of_trace_name(signal.trace_name()), Some(*signal));
            assert_eq!(Signal::named(signal.name()), Some(*signal));
            for other in &Signal::ALL[i + 1..] {
                assert_ne!(signal.name(), other.name());
                assert_ne!(signal.trace_name(), other.trace_name());
                assert_ne!(signal.trace_kind(), other.trace_kind());
            }
        }
        // Every record kind the kernel side writes belongs to a signal.
        for &kind in TraceKind::ALL {
            assert!(Signal::of_trace_kind(kind).is_some(), "{kind:?}");
        }
    }

    #[test]
    fn every_program_of_every_signal_is_in_the_object() {
        let object = crate::kernel::loader::object_programs().unwrap();
        for spec in programs() {
            assert!(
                object.contains(&spec.name.to_string()),
                "{} not in {object:?}",
                spec.name
            );
        }
    }
}
