//! Builds the kernel programs (`probe-ebpf`) for the bpf target with the pinned nightly
//! and bpf-linker, so `cargo build -p probe-user` yields one self-contained binary.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// Kept in step with `xtask`'s `NIGHTLY`; `cargo xtask setup` installs it.
const NIGHTLY: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "probe-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(NIGHTLY)).with_context(|| {
        format!("building the eBPF programs needs {NIGHTLY} with rust-src and bpf-linker: run `cargo xtask setup`")
    })
}
