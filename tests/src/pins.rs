//! Pinned state for `imfw run --pin-dir`: a BPF filesystem of the test's own (bpffs is global,
//! not per network namespace, and each mount is a separate instance), and what the kernel
//! says about the links and maps pinned there (through `bpftool`).
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::{
    netns::Netns,
    util::{output_within, TempDir},
};

/// A bpffs mounted on a temporary directory, in the test's mount namespace: `imfw run`
/// started later under `ip netns exec` sees it too. Unmounted on drop, which frees every
/// pin left in it (and detaches the links they held).
#[derive(Debug)]
pub struct BpfFs {
    dir: TempDir,
}

impl BpfFs {
    pub fn new() -> Result<Self> {
        let dir = TempDir::new("imfw-bpffs")?;
        let target = CString::new(dir.path().as_os_str().as_bytes())?;
        // SAFETY: NUL-terminated strings, no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting a bpffs at {}: {}",
                dir.path().display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(BpfFs { dir })
    }

    /// A pin directory on this bpffs (not created: `imfw run` creates it).
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.path().join("imfw")
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.dir.path().as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; a lazy unmount has no other precondition.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// What the kernel says about a pinned XDP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub id: u64,
    pub prog_id: u64,
}

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = output_within(
        Command::new("bpftool").arg("-j").args(args),
        Duration::from_secs(10),
    )
    .context("running bpftool (install the bpftool package)")?;
    if !out.status.success() {
        bail!(
            "bpftool {} exited {}: {}",
            args.join(" "),
            out.status,
            out.stderr.trim()
        );
    }
    serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("bpftool {} printed {:?}", args.join(" "), out.stdout))
}

/// `bpftool link show pinned PATH`.
pub fn link_facts(path: &Path) -> Result<LinkFacts> {
    let v = bpftool_json(&["link", "show", "pinned", &path.to_string_lossy()])?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("no {k} in {v}"))
    };
    Ok(LinkFacts {
        id: field("id")?,
        prog_id: field("prog_id")?,
    })
}

/// The tag of program `id`: the kernel's hash of its instructions, so two loads of the same
/// code share it and a rebuilt program with other code has another.
pub fn prog_tag(id: u64) -> Result<String> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    v.get("tag")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no tag in {v}"))
}

/// The id of the map pinned at `path`.
pub fn map_id(path: &Path) -> Result<u64> {
    let v = bpftool_json(&["map", "show", "pinned", &path.to_string_lossy()])?;
    v.get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("no id in {v}"))
}

/// Creates and pins a map with `bpftool map create` (to plant an incompatible one).
pub fn create_map(
    path: &Path,
    kind: &str,
    key: u32,
    value: u32,
    entries: u32,
    name: &str,
) -> Result<()> {
    let out = output_within(
        Command::new("bpftool").args([
            "map",
            "create",
            &path.to_string_lossy(),
            "type",
            kind,
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
            "entries",
            &entries.to_string(),
            "name",
            name,
        ]),
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!(
            "bpftool map create exited {}: {}",
            out.status,
            out.stderr.trim()
        );
    }
    Ok(())
}

/// The id of the XDP program attached to `ifname` in `ns`, if any.
pub fn xdp_prog_id(ns: &Netns, ifname: &str) -> Result<Option<u64>> {
    let text = ns.ip(&["-d", "link", "show", "dev", ifname])?;
    let Some(at) = text.find("prog/xdp id ") else {
        return Ok(None);
    };
    let rest = &text[at + "prog/xdp id ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(Some(
        digits
            .parse()
            .with_context(|| format!("XDP program id in {text:?}"))?,
    ))
}

/// Every pin below `dir`, as paths relative to it, sorted.
pub fn pins_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// `imfw unload --pin-dir DIR` with the binary under test; returns its stdout.
pub fn unload(bin: &Path, dir: &Path) -> Result<String> {
    let out = output_within(
        Command::new(bin).arg("unload").arg("--pin-dir").arg(dir),
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        bail!("imfw unload exited {}: {}", out.status, out.stderr.trim());
    }
    Ok(out.stdout)
}
