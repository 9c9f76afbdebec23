//! The signals, one module each, registered in one list ([`registry!`] below).
//!
//! A signal module implements [`Source`]: its kernel programs, how its maps are read,
//! windowed and garbage-collected, which cgroups its keys name, its section of a
//! workload (`snapshot --json`) and its metric families. The registry turns the list
//! into the types the rest of the agent works with: [`Sections`] (every signal's
//! section of a workload), [`Counters`] (every signal's maps at one instant) and
//! [`Sources`] (every signal's window state), all statically dispatched.

pub mod block_io;
pub mod cpu_throttle;
pub mod dns;
pub mod drops;
pub mod endpoints;
pub mod histogram;
pub mod measure;
pub mod signal;
pub mod source;
pub mod tcp_retransmit;

use anyhow::Context as _;
use serde::Serialize;

pub use self::{
    signal::Signal,
    source::{Attribution, Dead, NetnsLoad, Owner, Settings, Shared, Slot, Source},
};
use crate::{
    kernel::loader::{LoadError, LoadOptions, Probe, ProgramSpec},
    views::families::{Families, Labels},
    workloads::cgroup::{CgroupPaths, Hierarchy},
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

macro_rules! registry {
    ($($field:ident: $source:ty),+ $(,)?) => {
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
            $(pub fn $field(s: &mut Sections) -> &mut <$source as Source>::Section {
                &mut s.$field
            })+
        }

        /// Every kernel program, signal by signal.
        pub fn programs() -> Vec<&'static ProgramSpec> {
            let mut all = Vec::new();
            $(all.extend(<$source as Source>::PROGRAMS);)+
            all
        }

        impl Sections {
            /// Last touches once every workload is known (namespace totals).
            pub fn complete(&mut self, shared: &Shared, netns: Option<u32>) {
                $(<$source as Source>::complete(shared, netns, &mut self.$field);)+
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

            pub fn read(probe: &Probe) -> anyhow::Result<Counters> {
                Ok(Counters {
                    $($field: <$source as Source>::read(probe).with_context(|| {
                        format!("reading the {} maps", <$source as Source>::SIGNAL.name())
                    })?,)+
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

            pub fn tick(&mut self, probe: &mut Probe, cpu_paths: &mut CgroupPaths) -> anyhow::Result<()> {
                $(self.$field.tick(probe, cpu_paths)?;)+
                Ok(())
            }

            /// Deletes dead workloads' entries; the deleted count per map.
            pub fn collect_garbage(
                &mut self,
                probe: &mut Probe,
                now: &Counters,
                baseline: &mut Counters,
                dead: &Dead,
            ) -> anyhow::Result<Vec<(&'static str, u64)>> {
                let mut all = Vec::new();
                $(all.extend(self.$field.collect_garbage(probe, &now.$field, &mut baseline.$field, dead)?);)+
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

// The signals, in the order of a workload's JSON and of the probe list. Adding one is
// its module and a line here.
registry! {
    tcp: tcp_retransmit::TcpRetransmit,
    drops: drops::Drops,
    block: block_io::BlockIo,
    cpu: cpu_throttle::CpuThrottle,
    dns: dns::Dns,
}

impl Probe {
    /// Loads every signal's programs and attaches each one this kernel supports. Here,
    /// next to the list of signals: the loader knows how to load any program, the
    /// registry which programs there are.
    pub fn load(options: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_programs(options, &programs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
