//! The lab that the integration tests (`tests/`) and the benchmark and soak
//! (`xtask/src/bench/`) build on the real kernel: two network namespaces joined by a veth
//! pair, nftables tables in them, loop devices, cgroup directories and child processes.
//!
//! Every object removes itself on drop, so a failing test, a failing stage or Ctrl-C
//! leaves nothing behind; callers give every object a unique name ([`unique`]), so runs
//! in parallel never touch what they did not create. Errors are [`anyhow`] errors: xtask
//! passes them on, the tests' fixtures panic with them.

mod block;
mod cgroup;
mod netns;
mod process;

use std::{
    fs,
    process::Command,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

pub use self::{
    block::LoopDevice,
    cgroup::{CgroupTree, Leftovers},
    netns::{
        NetnsPair, NftTable, PairSpec, enter as enter_netns, run_in as run_in_netns,
        spawn_in as spawn_in_netns,
    },
    process::{Proc, kill_and_reap},
};

/// Runs a command to completion and returns its stdout; fails with its output if it
/// fails.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A short name unique to this call: a random part (a killed earlier run may have left
/// names behind) and a counter (calls within this run).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", random_hex(6))
}

/// `len` random lowercase hex digits.
pub fn random_hex(len: usize) -> String {
    let mut out = String::new();
    while out.len() < len {
        let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
        out.extend(uuid.chars().filter(char::is_ascii_hexdigit));
    }
    out.truncate(len);
    out
}

static INTERRUPT: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// From now on the lab's waits ([`Proc::wait`], the link coming up) end early with an
/// error once `flag` is set (xtask sets it on Ctrl-C and SIGTERM).
pub fn stop_waiting_on(flag: Arc<AtomicBool>) {
    let _ = INTERRUPT.set(flag);
}

/// Whether the flag given to [`stop_waiting_on`] is set.
pub fn interrupted() -> bool {
    INTERRUPT.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Sleeps for `duration`, failing early once [`interrupted`].
pub fn pause(duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    loop {
        ensure!(!interrupted(), "interrupted");
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
