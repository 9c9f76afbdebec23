//! Builds the kernel programs (`probe-ebpf`) for the bpf target with the pinned nightly
//! and bpf-linker, so `cargo build -p probe-user` yields one self-contained binary.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The kernel programs' toolchain file, the one declaration of the pinned nightly
/// (`cargo xtask setup` installs what it names).
const TOOLCHAIN_FILE: &str = include_str!("../probe-ebpf/rust-toolchain.toml");

fn main() -> anyhow::Result<()> {
    let nightly = TOOLCHAIN_FILE
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(key, _)| key.trim() == "channel")
        .map(|(_, value)| value.trim().trim_matches('"'))
        .context("probe-ebpf/rust-toolchain.toml names no channel")?;
    let ebpf = Package {
        name: "probe-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Custom(nightly)).with_context(|| {
        format!("building the eBPF programs needs {nightly} with rust-src and bpf-linker: run `cargo xtask setup`")
    })
}
