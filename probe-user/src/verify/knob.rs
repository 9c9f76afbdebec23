//! Knobs read and written where they live: a sysctl (in a network namespace or the
//! node's), a cgroup file, a block device's queue attribute.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Where a knob is changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// A global sysctl.
    Node,
    /// A sysctl inside a network namespace (a file such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`).
    Netns(PathBuf),
    /// A file of a cgroup directory.
    Cgroup(PathBuf),
    /// `/sys/block/NAME/...`.
    Device(String),
}

/// A knob (of the table or not) at one target: read and write it as users name it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KnobAt {
    pub name: String,
    pub target: Target,
}

impl KnobAt {
    fn path(&self) -> PathBuf {
        match &self.target {
            Target::Node | Target::Netns(_) => {
                Path::new("/proc/sys").join(self.name.replace('.', "/"))
            }
            Target::Cgroup(dir) => dir.join(&self.name),
            Target::Device(device) => Path::new("/sys/block").join(device).join(&self.name),
        }
    }

    fn in_namespace<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        match &self.target {
            Target::Netns(ns) => crate::workloads::netns::run_in(ns, f),
            _ => f(),
        }
    }

    pub(crate) fn read(&self) -> io::Result<String> {
        let path = self.path();
        self.in_namespace(move || {
            let raw = fs::read_to_string(&path)?;
            // `queue/scheduler` lists every scheduler with the active one in brackets.
            Ok(crate::kernel::devices::active_scheduler(&raw)
                .unwrap_or_else(|| raw.trim().to_string()))
        })
    }

    pub(crate) fn write(&self, value: &str) -> io::Result<()> {
        let path = self.path();
        let value = value.to_string();
        self.in_namespace(move || fs::write(&path, value))
    }
}
