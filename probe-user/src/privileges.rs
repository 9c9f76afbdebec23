//! Least privilege at run time: once the programs are loaded and attached, tuneprobe
//! keeps only the capabilities its remaining work needs, in every set (effective,
//! permitted, inheritable, ambient and the bounding set), and sets `no_new_privs`, so
//! that a bug in the long-running part (parsers of pod-controlled input, the HTTP
//! server) cannot load programs, write kernel memory or regain what was given up.
//!
//! Capabilities are per thread: call [`keep_only`] before starting any other thread.

use std::collections::HashSet;

use caps::{CapSet, Capability};

/// What `keep_only` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Capabilities kept (those asked for that the process had).
    pub kept: Vec<Capability>,
    /// Capabilities given up.
    pub dropped: Vec<Capability>,
    /// What stays in the bounding set: only `kept` with CAP_SETPCAP, else all it held.
    /// Nothing there can be used or regained: the other sets are empty of it and
    /// `no_new_privs` is set.
    pub bounding: Vec<Capability>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrivilegeError {
    #[error("reading capabilities: {0}")]
    Read(caps::errors::CapsError),
    #[error("dropping {capability} from the bounding set: {source}")]
    Bounding {
        capability: Capability,
        source: caps::errors::CapsError,
    },
    #[error("setting the {set:?} capability set: {source}")]
    Set {
        set: CapSet,
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Keeps `keep` (where held) and drops every other capability from this thread for
/// good.
pub(crate) fn keep_only(keep: &[Capability]) -> Result<Dropped, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(PrivilegeError::Read)?;
    let keep: HashSet<Capability> = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. A
    // container with a short capability list (the DaemonSet keeps four) has no
    // CAP_SETPCAP: its bounding set then stays, and that is no way back in, because
    // every other set is cleared below and `no_new_privs` stops an exec from gaining
    // file capabilities or a set-uid.
    let bounding = caps::read(None, CapSet::Bounding).map_err(PrivilegeError::Read)?;
    let mut bounding_kept: Vec<Capability> = keep.iter().copied().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for capability in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *capability).map_err(|source| {
                PrivilegeError::Bounding {
                    capability: *capability,
                    source,
                }
            })?;
        }
    } else {
        bounding_kept = bounding.iter().copied().collect();
    }
    bounding_kept.sort_by_key(caps::Capability::index);
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivilegeError::Set {
        set: CapSet::Ambient,
        source,
    })?;
    let none = HashSet::new();
    for (set, target) in [
        (CapSet::Inheritable, &none),
        (CapSet::Effective, &keep),
        (CapSet::Permitted, &keep),
    ] {
        caps::set(None, set, target).map_err(|source| PrivilegeError::Set { set, source })?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(caps::Capability::index);
    let mut dropped: Vec<Capability> = permitted
        .into_iter()
        .filter(|c| !kept.contains(c))
        .collect();
    dropped.sort_by_key(caps::Capability::index);
    Ok(Dropped {
        kept,
        dropped,
        bounding: bounding_kept,
    })
}

/// What each long-running mode still needs after attaching.
pub(crate) mod needs {
    use caps::Capability::{self, *};

    /// Reading other processes' `/proc/PID/ns/net` and `/proc/PID/net/*` (`snapshot`,
    /// `top`, and `trace`, which reads `/proc/kallsyms` before it drops CAP_SYSLOG).
    pub(crate) const OBSERVE: &[Capability] = &[CAP_SYS_PTRACE];
    /// `serve` also reads each network namespace's sysctls and listeners (setns needs
    /// CAP_SYS_ADMIN; without it only the host namespace's are read).
    pub(crate) const SERVE: &[Capability] = &[CAP_SYS_PTRACE, CAP_SYS_ADMIN];
    /// `verify` writes knobs: net sysctls need CAP_NET_ADMIN, others CAP_SYS_ADMIN, and
    /// cgroup and sysfs files may not be root's.
    pub(crate) const VERIFY: &[Capability] = &[
        CAP_SYS_PTRACE,
        CAP_SYS_ADMIN,
        CAP_NET_ADMIN,
        CAP_DAC_OVERRIDE,
    ];
}

/// Whether reading the maps of programs already loaded still needs `CAP_BPF` (or
/// `CAP_SYS_ADMIN`): before 5.19, `kernel.unprivileged_bpf_disabled` refused every
/// `bpf()` call of a process without it, reads of its own maps included; since 5.19 it
/// only guards creating maps and loading programs.
pub(crate) fn map_reads_need_cap_bpf(release: &str, unprivileged_bpf_disabled: &str) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version < (5, 19) && unprivileged_bpf_disabled.trim() != "0"
}

/// `keep`, plus what reading the maps needs on this kernel.
fn with_map_reads(keep: &[Capability]) -> Vec<Capability> {
    let mut keep = keep.to_vec();
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    if map_reads_need_cap_bpf(
        &read("/proc/sys/kernel/osrelease"),
        &read("/proc/sys/kernel/unprivileged_bpf_disabled"),
    ) {
        // CAP_BPF exists since 5.8; before it, CAP_SYS_ADMIN is what bpf() asks for.
        // Only what the process holds is kept.
        keep.extend([Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]);
        log::info!(
            "this kernel (before 5.19, unprivileged BPF disabled) refuses map reads \
             without CAP_BPF: keeping it"
        );
    }
    keep
}

/// Drops what a mode no longer needs; a failure is reported, not fatal (tuneprobe keeps
/// working with what it has).
pub(crate) fn after_attach(keep: &[Capability]) {
    match keep_only(&with_map_reads(keep)) {
        Ok(done) => log::info!(
            "capabilities kept: {:?}; dropped: {:?}; bounding set: {:?}",
            done.kept,
            done.dropped,
            done.bounding
        ),
        Err(err) => log::warn!("could not drop capabilities: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_setpcap_every_set_but_the_bounding_one_is_cleared() {
        use Capability::*;
        let outcome = std::thread::spawn(|| {
            let before = caps::read(None, CapSet::Permitted).unwrap();
            if !before.contains(&CAP_SETPCAP) {
                return None;
            }
            // The DaemonSet's four, as the container runtime hands them over.
            let four: HashSet<Capability> = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_PTRACE]
                .into_iter()
                .collect();
            for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
                caps::set(None, set, &four).unwrap();
            }
            let done = keep_only(&[CAP_SYS_PTRACE, CAP_SYS_ADMIN]).unwrap();
            let sets: Vec<HashSet<Capability>> = [
                CapSet::Effective,
                CapSet::Permitted,
                CapSet::Inheritable,
                CapSet::Ambient,
            ]
            .into_iter()
            .map(|set| caps::read(None, set).unwrap())
            .collect();
            Some((done, sets))
        })
        .join()
        .unwrap();
        let Some((done, sets)) = outcome else {
            return; // not root: nothing to give up
        };
        assert_eq!(done.kept, vec![CAP_SYS_PTRACE]);
        assert_eq!(done.dropped, vec![CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF]);
        assert_eq!(sets[0], HashSet::from([CAP_SYS_PTRACE]), "effective");
        assert_eq!(sets[1], HashSet::from([CAP_SYS_PTRACE]), "permitted");
        assert!(
            sets[2].is_empty() && sets[3].is_empty(),
            "inheritable, ambient"
        );
        // Without CAP_SETPCAP the bounding set is left as it was.
        assert!(done.bounding.contains(&CAP_BPF));
    }

    #[test]
    fn map_reads_need_cap_bpf_only_before_5_19_with_unprivileged_bpf_off() {
        assert!(map_reads_need_cap_bpf("5.10.0-32-amd64\n", "2\n"));
        assert!(map_reads_need_cap_bpf("5.15.0-1050-aws", "1"));
        assert!(!map_reads_need_cap_bpf("5.10.0-32-amd64", "0"));
        assert!(!map_reads_need_cap_bpf("5.19.0", "2"));
        assert!(!map_reads_need_cap_bpf("6.1.0-57-amd64", "2"));
        assert!(!map_reads_need_cap_bpf("6.18.0", "2"));
    }

    #[test]
    fn a_thread_keeps_only_what_it_asked_for() {
        // On a thread of its own: capabilities are per thread, the test runner's stay.
        let outcome = std::thread::spawn(|| {
            let before = caps::read(None, CapSet::Permitted).unwrap();
            let done = keep_only(&[Capability::CAP_SYS_PTRACE]).unwrap();
            let effective = caps::read(None, CapSet::Effective).unwrap();
            let bounding = caps::read(None, CapSet::Bounding).unwrap();
            (before, done, effective, bounding)
        })
        .join()
        .unwrap();
        let (before, done, effective, bounding) = outcome;
        if before.contains(&Capability::CAP_SYS_PTRACE) {
            assert_eq!(done.kept, vec![Capability::CAP_SYS_PTRACE]);
            assert_eq!(effective.len(), 1);
            assert!(!bounding.contains(&Capability::CAP_BPF));
            assert!(
                done.dropped.contains(&Capability::CAP_BPF)
                    || !before.contains(&Capability::CAP_BPF)
            );
        } else {
            // Not root: nothing to keep, nothing left.
            assert!(done.kept.is_empty() && effective.is_empty());
        }
    }
}
