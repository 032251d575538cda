//! `cargo xtask demo`: the lab with real traffic through imfw, summarised as a table.
use anyhow::{Context as _, Result};
use clap::Args;

use crate::{cargo, prereq, run_checked, target_dir, workspace_root};

#[derive(Args)]
pub struct Options {
    /// The policy imfw enforces on the gateway (relative to the workspace root).
    #[arg(long, default_value = "userspace/policy/default.yaml")]
    policy: String,
}

pub fn run(opts: &Options) -> Result<()> {
    prereq::ensure()?;
    println!("xtask: building imfw and the demo");
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "imfw",
        "-p",
        "imfw-tests",
        "--bins",
    ]))
    .context("release build")?;
    let release = target_dir().join("release");
    let policy = workspace_root().join(&opts.policy);
    run_checked(
        std::process::Command::new(release.join("imfw-demo"))
            .current_dir(workspace_root())
            .arg("--imfw")
            .arg(release.join("imfw"))
            .arg("--policy")
            .arg(&policy),
    )
    .context("demo failed")
}
