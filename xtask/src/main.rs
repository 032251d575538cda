//! Project tasks: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! The root tests and the demo change kernel state (network namespaces, XDP programs), so
//! everything here expects to run as root, one test at a time.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;

mod bench;
mod deb;
mod demo;
mod install;
mod prereq;
mod test;

/// imfw development tasks.
#[derive(Parser)]
#[command(name = "xtask", about)]
enum Cli {
    /// Install what is missing, build the release binary, run every test (root tests one at
    /// a time) and, when the labelled captures are present, score the classifier.
    Test(test::Options),
    /// Build the lab (client, gateway, server and recorder namespaces), run imfw on the
    /// gateway, send real IM and web traffic through it and print what got through.
    Demo(demo::Options),
    /// Measure: cost per packet in XDP against reference programs, new flows and scaling, the
    /// controller's content path. A table on stdout, `target/bench/results.json` and SVG
    /// charts; targets are reported as met or not met, never as a failure.
    Bench(bench::Options),
    /// Build the release binary and install it (PREFIX/sbin/imfw), the systemd unit
    /// (/etc/systemd/system/imfw.service), a commented policy (/etc/imfw/policy.yaml) and the
    /// unit's settings (/etc/default/imfw); the last two are never overwritten.
    Install(install::InstallOptions),
    /// Remove the binary and the unit (stopping the service first); the policy, settings and
    /// state (/var/lib/imfw) stay unless --purge.
    Uninstall(install::UninstallOptions),
    /// Build a Debian package (target/debian/imfw_VERSION_ARCH.deb) of the same files, binary
    /// in /usr/sbin; removing it stops the service and unloads the pinned program.
    Deb(deb::DebOptions),
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    // Child processes (cargo, cargo install, bpf-linker found by aya-build) must see
    // ~/.cargo/bin even when the caller's PATH lacks it. Set before any thread exists.
    add_cargo_bin_to_path();
    match Cli::parse() {
        Cli::Test(opts) => test::run(&opts),
        Cli::Demo(opts) => demo::run(&opts),
        Cli::Bench(opts) => bench::run(&opts),
        Cli::Install(opts) => install::install(&opts),
        Cli::Uninstall(opts) => install::uninstall(&opts),
        Cli::Deb(opts) => deb::run(&opts),
    }
}

/// The workspace root (this crate's parent directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where cargo puts build outputs: `CARGO_TARGET_DIR` when set, else `<root>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

fn cargo_home_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
}

fn add_cargo_bin_to_path() {
    let Some(bin) = cargo_home_bin() else { return };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut parts = vec![bin];
    parts.extend(env::split_paths(&path));
    if let Ok(joined) = env::join_paths(parts) {
        // Called from `run` before any thread is started, so nothing reads the environment
        // concurrently.
        env::set_var("PATH", joined);
    }
}

/// The cargo that runs this xtask (so the same toolchain builds everything).
pub(crate) fn cargo() -> Command {
    let cargo: OsString = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio and fails unless it exits 0.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}
