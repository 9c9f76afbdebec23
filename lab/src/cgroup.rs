//! Cgroup directories, removed with everything below them.

use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// What the drop of a [`CgroupTree`] does with processes still inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// SIGKILL them (a test's workloads).
    Kill,
    /// Move them to the parent cgroup (they are not the lab's to end).
    MoveToParent,
}

/// A cgroup directory that the caller fills (sub-cgroups, limits, processes); on drop it
/// is removed with all its sub-cgroups, deepest first, after the processes left in them
/// are dealt with as [`Leftovers`] says.
pub struct CgroupTree {
    dir: PathBuf,
    leftovers: Leftovers,
}

impl CgroupTree {
    /// Creates `dir`, which must not exist yet (its parent must).
    pub fn create(dir: PathBuf, leftovers: Leftovers) -> anyhow::Result<Self> {
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, leftovers })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Deals with the processes in `dir` (not below it).
    fn evacuate(&self, dir: &Path) {
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
            return;
        };
        let parent = dir.parent().map(|p| p.join("cgroup.procs"));
        for pid in procs.lines() {
            match (self.leftovers, &parent) {
                (Leftovers::Kill, _) => {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: plain syscall.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                (Leftovers::MoveToParent, Some(parent)) => {
                    let _ = fs::write(parent, pid);
                }
                (Leftovers::MoveToParent, None) => {}
            }
        }
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(dir);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        // 5 s for the whole tree, but at least 1 s for each directory.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in dirs {
            let give_up = deadline.max(Instant::now() + Duration::from_secs(1));
            loop {
                self.evacuate(&dir);
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // A process just killed or moved still counts for a moment.
                    Err(_) if Instant::now() < give_up => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        eprintln!("tuneprobe-lab: could not remove {}: {e}", dir.display());
                        break;
                    }
                }
            }
        }
    }
}
