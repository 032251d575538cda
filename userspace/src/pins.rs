//! The pinned state of `imfw run` on a BPF filesystem, so that enforcement outlives the
//! controller: a stopped, crashed or upgrading `imfw run` leaves the program attached, and the
//! next start adopts the state and swaps its program in.
//!
//! ```text
//! DIR/layout             u32 array: LAYOUT_VERSION of the adopted maps (pinned last)
//! DIR/maps/IMFW_*        the program's maps (those in `ADOPTED` are reused by the next start)
//! DIR/progs/imfw_*       the four programs of the running build
//! DIR/jump/<prog id>     the inspector jump table of the build whose main program has that id
//! DIR/links/IFACE:MODE   one XDP link per interface (`:` never occurs in an interface name)
//! ```
//!
//! The jump table has a pin of its own per build because the kernel empties a program array
//! once no pin or descriptor refers to it: the new table is pinned before any link is
//! switched, the old one unpinned only after.

use std::{
    ffi::CString,
    fs,
    io::ErrorKind,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{Array, Map, MapData, MapInfo};
use imfw_common::maps::LAYOUT_VERSION;

use crate::dataplane::AttachMode;

/// Where `imfw run` pins its state unless told otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/imfw";
/// Where a BPF filesystem is mounted by convention (systemd mounts it at boot).
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// `statfs` magic number of a BPF filesystem (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What a map must look like to be adopted; compared field by field with the pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// One pinned XDP link.
#[derive(Clone, Debug)]
pub struct PinnedLinkFile {
    pub iface: String,
    pub mode: AttachMode,
    pub path: PathBuf,
}

/// What a pin directory held when `imfw run` started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing pinned: a fresh start.
    Nothing,
    /// A compatible state: its maps in `ADOPTED` are reused.
    Compatible,
}

/// The pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    pub fn prog_path(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(name)
    }

    pub fn jump_path(&self, prog_id: u32) -> PathBuf {
        self.root.join("jump").join(prog_id.to_string())
    }

    pub fn link_path(&self, iface: &str, mode: AttachMode) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{iface}:{}", mode.name()))
    }

    fn layout_path(&self) -> PathBuf {
        self.root.join("layout")
    }

    /// Makes sure the directory lies on a BPF filesystem and exists. When it is under
    /// /sys/fs/bpf and nothing is mounted there, a bpffs is mounted; but not from a private
    /// mount namespace (`ip netns exec`, some containers) when the pins must outlive this
    /// process: a mount made there vanishes with it, and the program with it.
    pub fn prepare(&self, pins_outlive_process: bool) -> Result<()> {
        let anchor = nearest_existing(&self.root);
        if !on_bpffs(&anchor) {
            let mount = Path::new(BPFFS_MOUNT);
            if !(self.root.starts_with(mount) && mount.starts_with(&anchor)) {
                bail!(
                    "pin directory {}: {} is not on a BPF filesystem; mount one (`mount -t bpf bpf {BPFFS_MOUNT}`) or choose a --pin-dir under a bpffs mount",
                    self.root.display(),
                    anchor.display()
                );
            }
            if pins_outlive_process && !mount_namespace_is_inits() {
                bail!(
                    "no BPF filesystem is mounted at {BPFFS_MOUNT}, and this process cannot show that its mount namespace is the host's (`ip netns exec` and containers have their own): a bpffs it mounted could vanish with it, and the pinned program with it. Mount one where the host sees it (`mount -t bpf bpf {BPFFS_MOUNT}`; systemd does at boot) and give --pin-dir under it, or run with --detach-on-exit"
                );
            }
            mount_bpffs(mount)?;
            log::info!("mounted a BPF filesystem at {BPFFS_MOUNT}");
        }
        for sub in ["maps", "progs", "jump", "links"] {
            let d = self.root.join(sub);
            fs::create_dir_all(&d)
                .with_context(|| format!("creating the pin directory {}", d.display()))?;
        }
        Ok(())
    }

    /// Takes the directory's lock for as long as the returned descriptor lives: two
    /// controllers on one pin directory would swap programs under each other.
    pub fn lock(&self) -> Result<OwnedFd> {
        let f = fs::File::open(&self.root)
            .with_context(|| format!("opening {}", self.root.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "another imfw process is using the pin directory {}: stop it first",
                    self.root.display()
                );
            }
            return Err(anyhow!(e)).with_context(|| format!("locking {}", self.root.display()));
        }
        Ok(OwnedFd::from(f))
    }

    /// Whether anything is pinned under the directory.
    pub fn is_empty(&self) -> bool {
        pinned_files(&self.root).is_empty()
    }

    /// Looks at the pinned state and says whether it can be adopted with maps shaped as
    /// `expected`. Anything incompatible is refused here, before anything changes: a layout
    /// stamp of another version, an adopted map missing or of another shape, pins without a
    /// stamp while links are pinned. The error says how to start over.
    ///
    /// Pins without a stamp and without links are what a first start that failed before
    /// its commit leaves (its jump table, say): nothing enforces from them and they hold no
    /// state to adopt, so they are removed and the start is a fresh one.
    pub fn inspect(&self, expected: &[(&'static str, MapSpec)]) -> Result<Found> {
        if self.is_empty() {
            return Ok(Found::Nothing);
        }
        if !self.layout_path().exists() && self.links().is_empty() {
            let leftovers = pinned_files(&self.root);
            for f in &leftovers {
                remove_pin(f)?;
            }
            log::warn!(
                "removed {} pins an unfinished start left in {} (no links, no layout stamp)",
                leftovers.len(),
                self.root.display()
            );
            return Ok(Found::Nothing);
        }
        let unload = format!(
            "`imfw unload --pin-dir {}` removes the pinned state (and with it the flow table: established flows are classified again, mid-stream)",
            self.root.display()
        );
        let version = match read_layout(&self.layout_path()) {
            Ok(v) => v,
            Err(e) => bail!(
                "{} holds pins but no readable layout stamp ({e:#}): not imfw's, or left by an interrupted first start; refusing to adopt them. {unload}",
                self.root.display()
            ),
        };
        if version != LAYOUT_VERSION {
            bail!(
                "the pinned state in {} has map layout {version}, this imfw uses layout {LAYOUT_VERSION}: it cannot adopt it. {unload}",
                self.root.display()
            );
        }
        let mut problems = Vec::new();
        for (name, want) in expected {
            let path = self.map_path(name);
            let info = match MapInfo::from_pin(&path) {
                Ok(i) => i,
                Err(e) => {
                    problems.push(format!("{name}: cannot open {}: {e}", path.display()));
                    continue;
                }
            };
            let have = MapSpec {
                map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
            };
            for (what, h, w) in [
                ("map type", have.map_type, want.map_type),
                ("key size", have.key_size, want.key_size),
                ("value size", have.value_size, want.value_size),
                ("max entries", have.max_entries, want.max_entries),
                ("flags", have.flags, want.flags),
            ] {
                if h != w {
                    let hint = if *name == imfw_common::maps::FLOWS && what == "max entries" {
                        format!(" (give --flows {h} to keep it)")
                    } else {
                        String::new()
                    };
                    problems.push(format!(
                        "{name}: pinned {what} {h}, this imfw needs {w}{hint}"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            bail!(
                "the pinned maps in {} are incompatible with this imfw, nothing was changed:\n  {}\n{unload}",
                self.root.display(),
                problems.join("\n  ")
            );
        }
        Ok(Found::Compatible)
    }

    /// Pins the layout stamp (last, once everything else is pinned).
    pub fn write_layout(&self) -> Result<()> {
        let path = self.layout_path();
        if read_layout(&path).is_ok_and(|v| v == LAYOUT_VERSION) {
            return Ok(());
        }
        let mut a: Array<MapData, u32> =
            Array::create(1, 0).map_err(|e| anyhow!("creating the layout stamp: {e}"))?;
        a.set(0, LAYOUT_VERSION, 0)
            .map_err(|e| anyhow!("writing the layout stamp: {e}"))?;
        remove_pin(&path)?;
        a.pin(&path)
            .map_err(|e| anyhow!("pinning {}: {e}", path.display()))
    }

    /// The pinned links, by interface.
    pub fn links(&self) -> Vec<PinnedLinkFile> {
        let Ok(dir) = fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (iface, mode) = name.rsplit_once(':')?;
                let mode = match mode {
                    "native" => AttachMode::Native,
                    "generic" => AttachMode::Generic,
                    _ => return None,
                };
                Some(PinnedLinkFile {
                    iface: iface.to_owned(),
                    mode,
                    path: e.path(),
                })
            })
            .collect()
    }

    /// Jump tables pinned for builds other than `keep`.
    pub fn other_jumps(&self, keep: u32) -> Vec<PathBuf> {
        let Ok(dir) = fs::read_dir(self.root.join("jump")) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) != Some(keep))
            .map(|e| e.path())
            .collect()
    }

    /// Detaches every pinned link and removes every pin and the directory: a real uninstall.
    /// Returns one line per thing removed.
    pub fn remove_all(&self) -> Result<Vec<String>> {
        if !on_bpffs(&self.root) {
            bail!(
                "{} is not on a BPF filesystem: nothing of imfw's can be pinned there",
                self.root.display()
            );
        }
        let mut done = Vec::new();
        for l in self.links() {
            done.push(detach_pinned_link(&l.path, &l.iface)?);
        }
        let files = pinned_files(&self.root);
        let mut maps = 0;
        let mut other = 0;
        for f in &files {
            remove_pin(f)?;
            if f.parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "maps")
            {
                maps += 1;
            } else {
                other += 1;
            }
        }
        if !files.is_empty() {
            done.push(format!(
                "removed {maps} map pins and {other} program, jump table and layout pins"
            ));
        }
        for sub in ["maps", "progs", "jump", "links"] {
            let _ = fs::remove_dir(self.root.join(sub));
        }
        match fs::remove_dir(&self.root) {
            Ok(()) => done.push(format!("removed {}", self.root.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| format!("removing {}", self.root.display()))
            }
        }
        Ok(done)
    }
}

/// Removes a pin; a pin that is not there is no error.
pub fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("removing the pin {}", path.display())),
    }
}

/// Detaches the link pinned at `path` (`BPF_LINK_DETACH`: the interface loses the program
/// even while a descriptor elsewhere still refers to the link) and removes the pin.
pub fn detach_pinned_link(path: &Path, iface: &str) -> Result<String> {
    let fd = obj_get(path)?;
    let info = link_info(&fd).ok();
    let detached = link_detach(&fd);
    remove_pin(path)?;
    let what = info.map_or_else(String::new, |i| {
        format!(" (link {}, program {})", i.id, i.prog_id)
    });
    match detached {
        Ok(()) => Ok(format!("detached the XDP program from {iface}{what}")),
        // The interface is gone; the link was already dead.
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
            Ok(format!("removed the dead link of {iface}{what}"))
        }
        Err(e) => Err(anyhow!("detaching the link of {iface}{what}: {e}")),
    }
}

fn read_layout(path: &Path) -> Result<u32> {
    let data = MapData::from_pin(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let map = Map::from_map_data(data).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let a: Array<_, u32> = Array::try_from(map).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    a.get(&0, 0).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The pins of the layout above, and only those: nothing else under `root` is touched.
fn pinned_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["maps", "progs", "jump", "links"] {
        let Ok(rd) = fs::read_dir(root.join(sub)) else {
            continue;
        };
        out.extend(
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .map(|e| e.path()),
        );
    }
    let layout = root.join("layout");
    if layout.exists() {
        out.push(layout);
    }
    out
}

fn nearest_existing(p: &Path) -> PathBuf {
    let mut cur = p;
    loop {
        if cur.exists() {
            return cur.to_path_buf();
        }
        match cur.parent() {
            Some(parent) => cur = parent,
            None => return PathBuf::from("/"),
        }
    }
}

fn on_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; c is NUL-terminated.
    let st = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &raw mut st) != 0 {
            return false;
        }
        st
    };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on 64-bit Linux, i32 on 32-bit"
    )]
    let kind = i64::from(st.f_type);
    kind == BPF_FS_MAGIC
}

/// Whether this process provably shares init's mount namespace, so that a mount it makes
/// outlives it (unknown, e.g. /proc/1 unreadable, counts as no).
fn mount_namespace_is_inits() -> bool {
    matches!((fs::read_link("/proc/self/ns/mnt"), fs::read_link("/proc/1/ns/mnt")), (Ok(a), Ok(b)) if a == b)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated strings; no data argument.
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
        return Err(anyhow!(std::io::Error::last_os_error()))
            .with_context(|| format!("mounting a BPF filesystem at {}", at.display()));
    }
    Ok(())
}

// The few bpf(2) commands aya 0.14 does not offer: the interface of a link, and a forced
// link detach.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// What the kernel says about an XDP link.
#[derive(Clone, Copy, Debug)]
pub struct LinkFacts {
    pub id: u32,
    pub prog_id: u32,
    /// 0 once the interface is gone (a dead link).
    pub ifindex: u32,
}

/// `bpf(2)` with `attr`, a repr(C) attribute struct of the command.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is the command's attribute struct, fully initialised; the kernel reads at
    // most the size it is given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `BPF_OBJ_GET`: a descriptor for the object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)
        .with_context(|| format!("opening the pin {}", path.display()))?;
    let fd = i32::try_from(fd).context("a descriptor out of range")?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_OBJ_GET_INFO_BY_FD` on an XDP link.
pub fn link_info(fd: &OwnedFd) -> Result<LinkFacts> {
    // struct bpf_link_info: type, id, prog_id, then the union at offset 16, whose xdp member
    // starts with ifindex. The buffer is larger than the struct and zeroed, as the kernel
    // requires of the tail.
    let mut info = [0u32; 64];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd().cast_unsigned(),
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading a link's information")?;
    let (kind, id, prog_id, ifindex) = (info[0], info[1], info[2], info[4]);
    if kind != BPF_LINK_TYPE_XDP {
        bail!("link {id} is not an XDP link (type {kind})");
    }
    Ok(LinkFacts {
        id,
        prog_id,
        ifindex,
    })
}

fn link_detach(fd: &OwnedFd) -> std::io::Result<()> {
    let mut attr: [u32; 2] = [fd.as_raw_fd().cast_unsigned(), 0];
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}
