//! Doing something inside another network namespace: on a thread of its own that joins
//! the namespace, so the rest of the process stays where it is.

use std::{fs, io, os::fd::AsRawFd as _, path::Path};

/// Runs `f` on a new thread inside the network namespace at `netns` (`/run/netns/NAME`,
/// `/proc/PID/ns/net`) and returns its result.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = fs::File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on this thread only, with a valid namespace descriptor.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}
