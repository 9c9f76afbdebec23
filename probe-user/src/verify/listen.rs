//! Knobs applied later than at once: at `listen()` (which listeners still have the old
//! backlog), or only to sockets created after the change.

use std::path::Path;

use crate::kernel::sockdiag::{self, Listener};

use super::{judge::WorkloadVerdict, stats::Verdict};
use crate::tuning::{self, Applies};

/// For knobs applied at `listen()`: shows each verdict's listeners and says "restart
/// needed" where a listener still has a backlog the new value would not give it.
/// `listeners_of` reads the listeners of a network namespace (by inode).
pub(crate) fn explain_listen_backlogs(
    knob: &str,
    old: &str,
    new: &str,
    verdicts: &mut [WorkloadVerdict],
    mut listeners_of: impl FnMut(u32) -> Option<Vec<Listener>>,
) {
    if tuning::knob_named(knob).is_none_or(|k| k.applies != Applies::AtListen) {
        return;
    }
    let (Ok(old), Ok(new)) = (old.trim().parse::<u32>(), new.trim().parse::<u32>()) else {
        return;
    };
    for verdict in verdicts {
        let Some(listeners) = verdict.workload.netns.and_then(&mut listeners_of) else {
            continue;
        };
        // Capped by the old value: exactly the old cap while the new one is higher, or
        // above the new cap while it is lower. Either way `listen()` has not run since.
        let stale: Vec<&Listener> = listeners
            .iter()
            .filter(|l| (new > old && l.backlog == old) || (new < old && l.backlog > new))
            .collect();
        if !stale.is_empty() {
            let addresses: Vec<String> = stale
                .iter()
                .map(|l| format!("{} (backlog {})", l.address, l.backlog))
                .collect();
            verdict.notes.push(format!(
                "restart needed: {} of {} listeners still have the backlog of the old \
                 {knob}={old}: {}. The kernel applies {knob} when the application calls \
                 listen()",
                stale.len(),
                listeners.len(),
                addresses.join(", ")
            ));
        }
        verdict.listeners = listeners;
    }
}

/// For knobs applied to new sockets only: a verdict of no change may be the workload's
/// sockets predating the change, which says so.
pub(crate) fn explain_new_sockets(knob: &str, verdicts: &mut [WorkloadVerdict]) {
    if tuning::knob_named(knob).is_none_or(|k| k.applies != Applies::NewSockets) {
        return;
    }
    for verdict in verdicts {
        if verdict.comparison.verdict == Verdict::NoSignificantChange {
            verdict.notes.push(format!(
                "{knob} applies to sockets created after the change: sockets the workload \
                 opened before it keep the old value until it opens new ones"
            ));
        }
    }
}

/// Reads listeners of a namespace through any live process in it.
pub(crate) fn listeners_by_netns(
    proc_root: &Path,
) -> impl FnMut(u32) -> Option<Vec<Listener>> + '_ {
    let processes = crate::workloads::procfs::processes(proc_root);
    move |inode| {
        let process = processes.iter().find(|p| p.netns == inode)?;
        sockdiag::tcp_listeners_in(&sockdiag::netns_of_pid(proc_root, process.pid)).ok()
    }
}
