//! `cargo xtask install` and `cargo xtask uninstall`: the binary, a commented policy, the
//! environment file and the systemd unit, in the places an operator expects them.
//!
//! `--root DIR` stages everything under DIR (a package build, a test): the paths written into
//! the files stay those of the real system, and systemctl is never run.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{cargo, run_checked, target_dir};

/// The unit as shipped; `ExecStart=`/`ExecReload=` name [`UNIT_BIN`], rewritten for `--prefix`.
const UNIT: &str = include_str!("../../packaging/imfw.service");
const UNIT_BIN: &str = "/usr/local/sbin/imfw";
const ENV_FILE: &str = include_str!("../../packaging/imfw.default");
const POLICY: &str = include_str!("../../userspace/policy/default.yaml");

const UNIT_PATH: &str = "/etc/systemd/system/imfw.service";
const POLICY_PATH: &str = "/etc/imfw/policy.yaml";
const CONFIG_DIR: &str = "/etc/imfw";
const ENV_PATH: &str = "/etc/default/imfw";
const STATE_DIR: &str = "/var/lib/imfw";

#[derive(Args)]
pub struct InstallOptions {
    /// Installation prefix: the binary goes to PREFIX/sbin/imfw.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage under this directory (DESTDIR) instead of the live system; systemctl is not run.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Install this binary instead of building the release one.
    #[arg(long)]
    bin: Option<PathBuf>,
}

#[derive(Args)]
pub struct UninstallOptions {
    /// The prefix given to install.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// The staging directory given to install.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Also remove the policy (/etc/imfw), the environment file and the state (/var/lib/imfw:
    /// the compliance archive and its key).
    #[arg(long)]
    purge: bool,
}

/// Where the files go: final paths (written into the unit) and staged paths (written to).
pub struct Layout {
    root: Option<PathBuf>,
    prefix: PathBuf,
}

impl Layout {
    pub fn new(root: Option<PathBuf>, prefix: PathBuf) -> Result<Self> {
        if !prefix.is_absolute() {
            bail!(
                "--prefix must be an absolute path, not {}",
                prefix.display()
            );
        }
        Ok(Layout { root, prefix })
    }

    /// The binary's path on the running system.
    pub fn bin(&self) -> PathBuf {
        self.prefix.join("sbin/imfw")
    }

    /// Where a path of the running system is written: under `--root` when staging.
    pub fn staged(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(r) => r.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    /// The unit with this layout's binary path.
    pub fn unit_text(&self) -> String {
        UNIT.replace(UNIT_BIN, &self.bin().to_string_lossy())
    }
}

pub fn install(opts: &InstallOptions) -> Result<()> {
    let layout = Layout::new(opts.root.clone(), opts.prefix.clone())?;
    let bin = release_bin(opts.bin.as_deref())?;
    for line in install_files(&layout, &bin)? {
        println!("install: {line}");
    }
    if layout.root.is_none() {
        daemon_reload()?;
        println!(
            "install: next: set IMFW_IFACES in {ENV_PATH}, review {POLICY_PATH} (`imfw check --policy {POLICY_PATH}`), \
             then `systemctl enable --now imfw`"
        );
    }
    Ok(())
}

/// The binary to install or package: `given`, else the release build (built now).
pub fn release_bin(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b.to_path_buf());
    }
    println!("xtask: building the release binary");
    run_checked(cargo().args(["build", "--release", "-p", "imfw"])).context("release build")?;
    Ok(target_dir().join("release/imfw"))
}

pub fn uninstall(opts: &UninstallOptions) -> Result<()> {
    let layout = Layout::new(opts.root.clone(), opts.prefix.clone())?;
    if layout.root.is_none() && systemd_running() {
        // Stop before the binary goes.
        println!("uninstall: systemctl disable --now imfw.service");
        let st = Command::new("systemctl")
            .args(["disable", "--now", "imfw.service"])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            println!("uninstall: (imfw.service was not loaded or not running)");
        }
    }
    let bin = layout.staged(&layout.bin());
    if layout.root.is_none() && bin.is_file() {
        // A stopped imfw keeps enforcing from its pins (a restart must leave no gap); an
        // uninstall removes the program from the interfaces too.
        println!("uninstall: {} unload", bin.display());
        if !Command::new(&bin).arg("unload").status().is_ok_and(|s| s.success()) {
            bail!("`{} unload` failed: the program may still be attached; nothing was removed", bin.display());
        }
    }
    for line in uninstall_files(&layout, opts.purge)? {
        println!("uninstall: {line}");
    }
    if layout.root.is_none() {
        daemon_reload()?;
    }
    Ok(())
}

/// Writes the files and says what it did, one line each. The binary and the unit are
/// replaced; the policy and the environment file are the operator's and never overwritten.
pub fn install_files(layout: &Layout, bin: &Path) -> Result<Vec<String>> {
    if !bin.is_file() {
        bail!("no imfw binary at {}", bin.display());
    }
    let mut done = Vec::new();
    let bin_to = layout.staged(&layout.bin());
    replace_file(
        &bin_to,
        &fs::read(bin).with_context(|| format!("reading {}", bin.display()))?,
        0o755,
    )?;
    done.push(format!("installed {}", bin_to.display()));
    let unit_to = layout.staged(Path::new(UNIT_PATH));
    replace_file(&unit_to, layout.unit_text().as_bytes(), 0o644)?;
    done.push(format!("installed {}", unit_to.display()));
    for (path, text, mode) in [(POLICY_PATH, POLICY, 0o644), (ENV_PATH, ENV_FILE, 0o644)] {
        let to = layout.staged(Path::new(path));
        if to.exists() {
            done.push(format!("kept existing {} (not overwritten)", to.display()));
        } else {
            replace_file(&to, text.as_bytes(), mode)?;
            done.push(format!("installed {}", to.display()));
        }
    }
    Ok(done)
}

/// Removes the binary and the unit (and with `purge` the configuration and the state), and
/// says what it removed and what it kept.
pub fn uninstall_files(layout: &Layout, purge: bool) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for path in [layout.bin(), PathBuf::from(UNIT_PATH)] {
        done.push(remove(&layout.staged(&path))?);
    }
    for path in [CONFIG_DIR, ENV_PATH, STATE_DIR] {
        let p = layout.staged(Path::new(path));
        if purge {
            done.push(remove(&p)?);
        } else if p.exists() {
            done.push(format!("kept {} (--purge removes it)", p.display()));
        }
    }
    Ok(done)
}

fn remove(path: &Path) -> Result<String> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(format!("removed {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(format!("{} was not there", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Writes `bytes` beside `path` and renames it over: a running binary is replaced, not
/// rewritten in place (which fails with ETXTBSY), and no reader sees half a file.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-new",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Whether systemd is the running init (sd_booted(3): /run/systemd/system exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn daemon_reload() -> Result<()> {
    if systemd_running() {
        println!("xtask: systemctl daemon-reload");
        run_checked(Command::new("systemctl").arg("daemon-reload"))
    } else {
        println!("xtask: systemd is not PID 1 here: no systemctl daemon-reload");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(name: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    #[test]
    fn install_and_uninstall_under_a_root() {
        let t = tmp("install");
        let root = t.0.join("root");
        let bin = t.0.join("imfw-built");
        fs::write(&bin, b"#!/bin/sh\necho imfw\n").unwrap();
        let layout = Layout::new(Some(root.clone()), PathBuf::from("/opt/imfw")).unwrap();

        let done = install_files(&layout, &bin).unwrap();
        assert_eq!(done.len(), 4, "{done:?}");
        let bin_at = root.join("opt/imfw/sbin/imfw");
        assert_eq!(fs::read(&bin_at).unwrap(), fs::read(&bin).unwrap());
        assert_eq!(
            fs::metadata(&bin_at).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let unit = fs::read_to_string(root.join("etc/systemd/system/imfw.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/opt/imfw/sbin/imfw run --policy /etc/imfw/policy.yaml"),
            "{unit}"
        );
        assert!(
            unit.contains("ExecReload=/opt/imfw/sbin/imfw reload"),
            "{unit}"
        );
        assert!(
            !unit.contains(UNIT_BIN),
            "the default binary path is left in the unit"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/imfw/policy.yaml")).unwrap(),
            POLICY
        );
        assert!(fs::read_to_string(root.join("etc/default/imfw"))
            .unwrap()
            .contains("IMFW_IFACES="));

        // The operator's policy and settings survive a second install; the binary is replaced.
        fs::write(root.join("etc/imfw/policy.yaml"), "version: 1\n# mine\n").unwrap();
        fs::write(root.join("etc/default/imfw"), "IMFW_IFACES=lan0,wan0\n").unwrap();
        fs::write(&bin, b"#!/bin/sh\necho imfw 2\n").unwrap();
        let again = install_files(&layout, &bin).unwrap();
        assert_eq!(
            again
                .iter()
                .filter(|l| l.starts_with("kept existing"))
                .count(),
            2,
            "{again:?}"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/imfw/policy.yaml")).unwrap(),
            "version: 1\n# mine\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/default/imfw")).unwrap(),
            "IMFW_IFACES=lan0,wan0\n"
        );
        assert_eq!(fs::read(&bin_at).unwrap(), b"#!/bin/sh\necho imfw 2\n");
        assert!(
            fs::read_dir(root.join("opt/imfw/sbin")).unwrap().count() == 1,
            "a temporary file was left behind"
        );

        // Uninstall keeps configuration and state; --purge removes them.
        fs::create_dir_all(root.join("var/lib/imfw/archive")).unwrap();
        let removed = uninstall_files(&layout, false).unwrap();
        assert!(!bin_at.exists() && !root.join("etc/systemd/system/imfw.service").exists());
        assert!(
            root.join("etc/imfw/policy.yaml").exists() && root.join("etc/default/imfw").exists()
        );
        assert!(root.join("var/lib/imfw/archive").exists());
        assert_eq!(
            removed.iter().filter(|l| l.starts_with("removed")).count(),
            2,
            "{removed:?}"
        );
        assert_eq!(
            removed.iter().filter(|l| l.starts_with("kept")).count(),
            3,
            "{removed:?}"
        );
        let purged = uninstall_files(&layout, true).unwrap();
        assert!(
            !root.join("etc/imfw").exists()
                && !root.join("etc/default/imfw").exists()
                && !root.join("var/lib/imfw").exists()
        );
        assert_eq!(
            purged.iter().filter(|l| l.starts_with("removed")).count(),
            3,
            "{purged:?}"
        );
    }

    #[test]
    fn a_missing_binary_or_relative_prefix_is_refused() {
        let t = tmp("install-bad");
        let layout = Layout::new(Some(t.0.clone()), PathBuf::from("/usr/local")).unwrap();
        let e = install_files(&layout, &t.0.join("nope")).unwrap_err();
        assert!(format!("{e:#}").contains("no imfw binary"), "{e:#}");
        assert!(
            fs::read_dir(&t.0).unwrap().next().is_none(),
            "something was installed"
        );
        assert!(Layout::new(None, PathBuf::from("usr/local")).is_err());
    }

    #[test]
    fn the_shipped_unit_names_the_default_binary_path() {
        // `unit_text` rewrites this path; the unit must use it in ExecStart= and ExecReload=.
        assert!(UNIT.contains(&format!("ExecStart={UNIT_BIN} run ")));
        assert!(UNIT.contains(&format!("ExecReload={UNIT_BIN} reload ")));
    }
}
