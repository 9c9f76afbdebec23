//! Block device names and IO schedulers, from sysfs.

use std::{fs, path::Path};

use probe_common::block_io::MINOR_BITS;

/// `(major, minor)` from the programs' packed device number.
pub fn split_dev(dev: u32) -> (u32, u32) {
    (dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1))
}

/// The kernel's name for a device (`vda`, `loop3`, `nvme0n1`), from
/// `/sys/dev/block/MAJ:MIN`; `MAJ:MIN` when sysfs does not know it (device removed).
pub fn name(sys: &Path, dev: u32) -> String {
    let (major, minor) = split_dev(dev);
    let link = sys.join(format!("dev/block/{major}:{minor}"));
    fs::read_link(&link)
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// The active IO scheduler (`[mq-deadline] none` -> `mq-deadline`), if the device has one.
pub fn scheduler(sys: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(sys.join(format!("block/{name}/queue/scheduler"))).ok()?;
    active_scheduler(&text)
}

pub fn active_scheduler(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|s| s.strip_prefix('[').and_then(|s| s.strip_suffix(']')))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_active_scheduler() {
        assert_eq!(
            active_scheduler("none [mq-deadline] kyber bfq\n").as_deref(),
            Some("mq-deadline")
        );
        assert_eq!(active_scheduler("[none] \n").as_deref(), Some("none"));
        assert_eq!(active_scheduler("none\n"), None);
    }

    #[test]
    fn names_devices_of_this_machine() {
        // The root filesystem's disk exists on every machine that runs these tests.
        let st_dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata("/").unwrap());
        let dev = (libc::major(st_dev) << MINOR_BITS) | libc::minor(st_dev);
        let root_disk = name(Path::new("/sys"), dev);
        assert!(!root_disk.contains(':'), "{root_disk}");
        assert_eq!(
            name(Path::new("/sys"), (4095 << MINOR_BITS) | 4095),
            "4095:4095"
        );
        assert_eq!(split_dev((254 << MINOR_BITS) | 16), (254, 16));
    }
}
