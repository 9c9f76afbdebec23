//! `cargo xtask build`: the release binary, kernel programs embedded.

use std::process::Command;

use crate::{run_to_stderr, workspace_root};

pub fn release() -> anyhow::Result<()> {
    run_to_stderr(
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args(["build", "--release", "--package", "probe-user"]),
    )
}
