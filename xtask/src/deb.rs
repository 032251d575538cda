//! `cargo xtask deb`: a Debian package of the same files `cargo xtask install` puts in place
//! (binary in /usr/sbin, the unit, the commented policy and the unit's settings as conffiles),
//! with maintainer scripts that reload systemd, and on removal stop the service and unload
//! the pinned program so that nothing stays attached to the interfaces.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{
    install::{install_files, release_bin, Layout},
    run_checked, target_dir,
};

#[derive(Args)]
pub struct DebOptions {
    /// Package this binary instead of building the release one.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where the .deb goes (default: target/debian).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The files dpkg must never overwrite silently: the operator's policy and settings.
const CONFFILES: &str = "/etc/imfw/policy.yaml\n/etc/default/imfw\n";

const POSTINST: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
echo 'imfw: set IMFW_IFACES in /etc/default/imfw, check /etc/imfw/policy.yaml, then: systemctl enable --now imfw'
";

/// Removal (not upgrade) stops the service and unloads the pinned program: a stopped imfw
/// keeps enforcing by design, which an uninstall must not leave behind. An upgrade keeps it
/// running; the new binary adopts the pinned state at its restart.
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now imfw.service || true
    fi
    /usr/sbin/imfw unload || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/imfw /etc/imfw
fi
";

pub fn run(opts: &DebOptions) -> Result<()> {
    let bin = release_bin(opts.bin.as_deref())?;
    let out = opts.out.clone().unwrap_or_else(|| target_dir().join("debian"));
    let deb = build(&bin, &out, &architecture()?)?;
    println!("xtask: built {}", deb.display());
    println!("xtask: install with `apt install {}`; remove with `apt remove imfw` (`apt purge imfw` also removes /etc/imfw and /var/lib/imfw)", deb.display());
    Ok(())
}

/// dpkg's name for this machine's architecture.
fn architecture() -> Result<String> {
    let out = Command::new("dpkg").arg("--print-architecture").output().context("running dpkg --print-architecture (is this Debian?)")?;
    if !out.status.success() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Stages the package tree under `out` and builds `imfw_VERSION_ARCH.deb` there.
pub fn build(bin: &Path, out: &Path, arch: &str) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let stage = out.join(format!("imfw_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let layout = Layout::new(Some(stage.clone()), PathBuf::from("/usr"))?;
    install_files(&layout, bin)?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let size_kb = dir_size(&stage)? / 1024 + 1;
    let control = format!(
        "Package: imfw\nVersion: {version}\nArchitecture: {arch}\nMaintainer: imfw developers <imfw@example.org>\n\
         Section: net\nPriority: optional\nInstalled-Size: {size_kb}\nDepends: libc6\n\
         Description: instant-messaging firewall in XDP\n \
         Classifies IM flows by protocol fingerprint in an XDP program on any port, drops,\n \
         redirects, monitors or allows them per app and client network, and archives the\n \
         monitored conversations. Runs as the systemd service imfw.\n"
    );
    for (name, text, mode) in [
        ("control", control.as_str(), 0o644),
        ("conffiles", CONFFILES, 0o644),
        ("postinst", POSTINST, 0o755),
        ("prerm", PRERM, 0o755),
        ("postrm", POSTRM, 0o755),
    ] {
        let p = debian.join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    }
    let deb = out.join(format!("imfw_{version}_{arch}.deb"));
    run_checked(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb))
        .context("dpkg-deb --build")?;
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A package of a stand-in binary holds the files where install puts them, marks the
    /// operator's files as conffiles, and its removal script unloads the program.
    #[test]
    fn the_package_holds_the_installed_files_and_its_scripts() {
        assert!(Command::new("dpkg-deb").arg("--version").output().is_ok(), "dpkg-deb is missing: this test needs a Debian machine");
        let dir = std::env::temp_dir().join(format!("imfw-deb-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("imfw-stand-in");
        fs::write(&bin, b"#!/bin/sh\nexit 0\n").unwrap();
        let deb = build(&bin, &dir.join("out"), "amd64").unwrap();
        let listing = Command::new("dpkg-deb").arg("-c").arg(&deb).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for path in ["./usr/sbin/imfw", "./etc/systemd/system/imfw.service", "./etc/imfw/policy.yaml", "./etc/default/imfw"] {
            assert!(listing.lines().any(|l| l.ends_with(path)), "{path} missing from:\n{listing}");
        }
        assert!(listing.contains("-rwxr-xr-x root/root"), "the binary is executable and owned by root:\n{listing}");
        let conffiles = Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&conffiles.stdout), CONFFILES);
        let prerm = Command::new("dpkg-deb").arg("-I").arg(&deb).arg("prerm").output().unwrap();
        assert!(String::from_utf8_lossy(&prerm.stdout).contains("/usr/sbin/imfw unload"));
        let unit = Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb).output().unwrap();
        assert!(String::from_utf8_lossy(&unit.stdout).contains("ExecStart=/usr/sbin/imfw run"), "the unit names the packaged binary");
        fs::remove_dir_all(&dir).unwrap();
    }
}
