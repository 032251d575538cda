//! Prerequisites of the build and the root tests, checked and installed idempotently: one
//! line per thing checked, and nothing is installed that is already there.
use std::{
    env,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::run_checked;

/// Debian packages: LLVM 22 for bpf-linker, iproute2/ethtool/tcpdump for the lab, python3
/// for the accuracy scorer, ngircd, mosquitto and prosody (real IRC, MQTT and XMPP servers,
/// with mosquitto's clients) for the content-policy tests, libndpi-bin (ndpiReader, the
/// reference classifier of `bench`), systemd (systemd-analyze, which checks the unit), bpftool
/// (the pinned-state tests read links and maps), systemd-container (systemd-nspawn, which boots
/// a systemd in a container for the unit's test under a real service manager).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "tcpdump",
    "python3",
    "ngircd",
    "mosquitto",
    "mosquitto-clients",
    "prosody",
    "libndpi-bin",
    "systemd",
    "bpftool",
    "systemd-container",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Checks (and installs where missing) everything `test` and `demo` need.
pub fn ensure() -> Result<()> {
    ensure_root()?;
    ensure_debian_packages()?;
    ensure_bpf_linker()?;
    ensure_rust_src()?;
    Ok(())
}

fn ensure_root() -> Result<()> {
    // /proc/self is owned by the process's effective uid.
    let euid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if euid != 0 {
        bail!(
            "must run as root (effective uid is {euid}): the tests create network namespaces \
             and attach XDP programs; try `sudo -E env PATH=\"$PATH\" cargo xtask ...`"
        );
    }
    println!("prereq: running as root: yes");
    Ok(())
}

fn debian_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn ensure_debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in DEBIAN_PACKAGES {
        let ok = debian_installed(pkg)?;
        println!(
            "prereq: debian package {pkg}: {}",
            if ok { "installed" } else { "missing" }
        );
        if !ok {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("prereq: installing {}", missing.join(" "));
    run_checked(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update")?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")?;
    Ok(())
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|d| d.join(program)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    })
}

fn ensure_bpf_linker() -> Result<()> {
    if let Some(p) = on_path("bpf-linker") {
        println!("prereq: bpf-linker: {}", p.display());
        return Ok(());
    }
    println!("prereq: bpf-linker: missing, installing with cargo install (LLVM 22)");
    run_checked(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("cargo install bpf-linker")?;
    if on_path("bpf-linker").is_none() {
        bail!(
            "bpf-linker was installed but is not on PATH ({:?})",
            env::var_os("PATH")
        );
    }
    Ok(())
}

/// Clippy for the lint gate of `cargo xtask test` (in rustup's default profile, but not in
/// its minimal one).
pub fn ensure_clippy() -> Result<()> {
    let present = crate::cargo()
        .args(["clippy", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        println!("prereq: clippy: installed");
        return Ok(());
    }
    println!("prereq: clippy: missing, installing");
    run_checked(Command::new("rustup").args(["component", "add", "clippy"]))
        .context("rustup component add clippy")
}

fn ensure_rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .stderr(Stdio::null())
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        println!("prereq: nightly toolchain: missing, installing with rust-src");
        return run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context("rustup toolchain install nightly");
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    if listed.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("prereq: nightly rust-src: installed");
        return Ok(());
    }
    println!("prereq: nightly rust-src: missing, installing");
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("rustup component add rust-src")
}
