//! The real OTLP receiver of `tests/tests/otlp.rs`: Debian 13's VictoriaMetrics, fetched
//! through a private apt configuration (as vm-test fetches its kernels: the machine's
//! sources, lists and dpkg stay as they are) and unpacked below
//! `~/.local/share/tuneprobe`, not installed.
//!
//! Not Prometheus: Debian 13's `prometheus` (2.53.3+ds1) is built with its OTLP
//! receiver patched out until the Collector's Go modules are in Debian (#1080354; sid's
//! 3.5 as well), and Debian 12's VictoriaMetrics (1.79) predates OTLP ingestion (1.92).

use std::path::{Path, PathBuf};

use crate::vmtest::{Arch, PrivateApt, debian_mirror, extract_debs};

pub const PACKAGE: &str = "victoria-metrics";
pub const SUITE: &str = "trixie";

/// Where the package is unpacked (`usr/bin/victoria-metrics` below it); the test reads
/// the same path.
pub fn dir(home: &Path) -> PathBuf {
    home.join(format!(".local/share/tuneprobe/{PACKAGE}-{SUITE}"))
}

/// Fetches and unpacks the package unless it already is; says so in one line on stderr.
pub fn ensure(home: &Path) -> anyhow::Result<bool> {
    let target = dir(home);
    if target.join(".extracted").exists() {
        return Ok(false);
    }
    let what = format!("{PACKAGE} ({SUITE}) unpacked into {}", target.display());
    crate::setup::timed(&format!("fetching {what}"), || {
        let work = home.join(format!(".local/share/tuneprobe/apt-{SUITE}"));
        let arch = if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        let apt = PrivateApt::new(&work, SUITE, &debian_mirror(), arch)?;
        apt.update()?;
        let debs = work.join("debs");
        let _ = std::fs::remove_dir_all(&debs);
        std::fs::create_dir_all(&debs)?;
        apt.download(&[PACKAGE], &debs)?;
        let _ = std::fs::remove_dir_all(&target);
        extract_debs(&debs, &[PACKAGE], &target)?;
        // The lists are read again next time (they age); 70 MB less.
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    })?;
    Ok(true)
}
