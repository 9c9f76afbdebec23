//! Loop devices.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::sh;

/// A loop device with direct IO over a file full of data (holes would be read without
/// any IO reaching the backing disk). Detached, and its file deleted, on drop.
pub struct LoopDevice {
    file: PathBuf,
    /// `/dev/loopN`.
    pub device: String,
}

impl LoopDevice {
    /// Writes `megabytes` to `file` (which the drop deletes) and binds a device to it.
    pub fn create(file: PathBuf, megabytes: usize) -> anyhow::Result<Self> {
        // Assigned before any step can fail: the drop removes what exists.
        let mut device = Self {
            file,
            device: String::new(),
        };
        fs::write(&device.file, vec![0x5au8; megabytes << 20])
            .with_context(|| format!("writing {}", device.file.display()))?;
        let file = device.file.to_str().context("a UTF-8 backing file name")?;
        device.device = sh(&["losetup", "--find", "--show", "--direct-io=on", file])?
            .trim()
            .to_string();
        Ok(device)
    }

    /// `loop3` for `/dev/loop3`.
    pub fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }

    /// `/sys/block/loopN/queue/scheduler`.
    pub fn scheduler_file(&self) -> PathBuf {
        PathBuf::from(format!("/sys/block/{}/queue/scheduler", self.name()))
    }

    /// `MAJ:MIN` of the disk holding the backing file: what a throttle must limit.
    pub fn backing_device(&self) -> anyhow::Result<String> {
        let file = self.file.to_str().context("a UTF-8 backing file name")?;
        Ok(sh(&["findmnt", "-n", "-o", "MAJ:MIN", "-T", file])?
            .trim()
            .to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.device.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.device]).status();
        }
        let _ = fs::remove_file(&self.file);
    }
}
