//! Where the node's own files are.
//!
//! On the node, and in the DaemonSet (which mounts the node's cgroup hierarchy, BTF,
//! pod log directory and runtime socket at the paths they have on the node), that is
//! `/`. In a `kubectl debug node/NAME --profile=sysadmin` session the container has a
//! `/sys/fs/cgroup`, `/var/log/pods` and `/run` of its own and the node's filesystem is
//! mounted at `/host`: `--host-root /host` makes tuneprobe take all of them from there.
//! `/proc` stays the container's: such sessions share the node's PID namespace.
//!
//! Set once at start-up, before anything looks at the node (a node fact, like the
//! hostname, so it is not threaded through every reader).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

static ROOT: OnceLock<PathBuf> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum HostRootError {
    #[error("--host-root {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("the host root was already set to {0}")]
    AlreadySet(PathBuf),
}

/// Sets the node's root directory; only the first call counts.
pub fn set_root(dir: &Path) -> Result<(), HostRootError> {
    if !dir.is_dir() {
        return Err(HostRootError::NotADirectory(dir.to_path_buf()));
    }
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    ROOT.set(dir)
        .map_err(|_| HostRootError::AlreadySet(root().to_path_buf()))
}

/// The node's root directory (`/` unless [`set_root`] said otherwise).
pub fn root() -> &'static Path {
    ROOT.get().map_or(Path::new("/"), PathBuf::as_path)
}

/// `path` (absolute, as on the node) as this process reaches it.
pub fn path(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    root().join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether `mountpoint` (as this process sees it) is on the node's side of the host
/// root: with the default root, every mount is.
pub fn is_under_root(mountpoint: &Path) -> bool {
    mountpoint.starts_with(root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_root_leaves_paths_alone() {
        // Unit tests never set a root: the default is the node's own `/`.
        assert_eq!(path("/var/log/pods"), PathBuf::from("/var/log/pods"));
        assert!(is_under_root(Path::new("/sys/fs/cgroup")));
    }
}
