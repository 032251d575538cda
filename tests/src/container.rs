//! A real systemd booted as PID 1 in a container (`systemd-nspawn --boot`), on a throwaway
//! overlay of the host's own root: no image to download, the host's systemd, and a network
//! namespace of the test's.
//!
//! Why this shape (all found on the test machine, whose PID 1 is not systemd):
//! - `systemd-nspawn --directory=/` refuses the host's root ("Spawning container on root
//!   directory is not supported"), with `--volatile=overlay` too; `--volatile=state` fails
//!   ("/dev is pre-mounted and pre-populated"); `--volatile=yes` keeps only the host's /usr
//!   (an empty /etc: no passwd, no unit files); `--ephemeral` copies the whole tree first. So
//!   the container's root is an overlayfs with `/` as its lower layer and a tmpfs as its
//!   upper one: the host's files as they are, and every write (the installed unit, policy and
//!   binary, the container's /var) lands in the tmpfs.
//! - The overlay, the tmpfs and a bpffs are mounted by a `unshare --mount` wrapper that then
//!   execs nspawn: they exist only in that private mount namespace, so they all go when the
//!   container does, also when the test itself is killed. The test reaches the container's
//!   files through `/proc/LEADER/root` and runs commands there with `nsenter`.
//! - `--boot -- systemd.unit=basic.target`: systemd reads its "kernel command line" from its
//!   own arguments in a container; booting only to basic.target keeps the host's enabled
//!   services (databases, chat servers) from starting in there.
//! - `--network-namespace-path`: the container's network is a [`Netns`] of the test, removed
//!   by its guard (which also kills every process left in it).
//! - What imfw.service needs beyond nspawn's defaults, each found missing by a failed start:
//!   `CAP_BPF` and `CAP_PERFMON` (not in nspawn's default bounding set, and a unit's
//!   `CapabilityBoundingSet=` can only keep what its manager has); `CAP_NET_ADMIN` (the
//!   redirect device map and the attach need it; nspawn adds it for `--private-network` or
//!   `--network-veth` only, not for a namespace given by path); `bpf(2)` in the system call filter (nspawn's allow list leaves it out: map
//!   creation fails with EPERM); and a bpffs at /sys/fs/bpf (nspawn mounts /sys read-only
//!   and puts nothing there): one of the test's own, so the pins die with the container.
//!   Nothing else: no devices, no cgroup options (nspawn mirrors the host's hierarchy), no
//!   `CAP_SYS_RESOURCE` (BPF memory is charged to the cgroup).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    netns::Netns,
    util::{next_seq, output_within, tail, Output, TempDir},
};

/// How long the container's systemd may take to reach a steady state.
pub const BOOT_LIMIT: Duration = Duration::from_secs(90);
/// How long a command inside may run (`systemctl start` waits for READY: the unit allows
/// 120 s).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(150);
/// How long the container may take to go after its PID 1 is killed.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Mounts the overlay root and the bpffs in the private mount namespace, copies the staged
/// files over the root, and execs systemd-nspawn (the pid stays the same throughout).
/// `$1` the work directory, `$2` the staged tree, `$3` the machine name, `$4` the netns path.
const WRAPPER: &str = r#"set -eu
w=$1
mount -t tmpfs -o mode=0755 imfw-boot "$w/rw"
mkdir "$w/rw/upper" "$w/rw/work"
mount -t overlay -o "lowerdir=/,upperdir=$w/rw/upper,workdir=$w/rw/work" imfw-boot "$w/root"
mount -t bpf imfw-boot "$w/bpf"
cp -a "$2/." "$w/root/"
exec systemd-nspawn --quiet --directory="$w/root" --machine="$3" \
    --register=no --keep-unit --link-journal=no --console=pipe \
    --network-namespace-path="$4" \
    --capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN --system-call-filter=bpf \
    --bind="$w/bpf:/sys/fs/bpf" \
    --boot -- systemd.unit=basic.target
"#;

/// A booted container. Killed (its PID 1, which takes every process inside along) on drop;
/// its mounts go with its mount namespace.
#[derive(Debug)]
pub struct Container {
    nspawn: Option<Child>,
    leader: i32,
    machine: String,
    log: PathBuf,
    // Last: removed once the container is gone.
    dir: TempDir,
}

impl Container {
    /// Boots a container in `ns` with the files of `stage` (a tree laid out like `/`) copied
    /// over its root, and waits until its systemd has finished starting up.
    pub fn boot(ns: &Netns, stage: &Path) -> Result<Self> {
        require_nspawn()?;
        let dir = TempDir::new("imfw-boot")?;
        for d in ["rw", "root", "bpf"] {
            fs::create_dir(dir.path().join(d))?;
        }
        let machine = format!("imfw-{}-{}", std::process::id(), next_seq());
        let log = dir.path().join("nspawn.log");
        let log_file = fs::File::create(&log)?;
        let netns_path = Path::new("/run/netns").join(ns.name());
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                WRAPPER,
                "imfw-boot",
            ])
            .arg(dir.path())
            .arg(stage)
            .arg(&machine)
            .arg(&netns_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting unshare + systemd-nspawn")?;
        let mut c = Container {
            nspawn: Some(child),
            leader: 0,
            machine,
            log,
            dir,
        };
        c.wait_booted()
            .with_context(|| format!("booting {}; nspawn said:\n{}", c.machine, c.log_tail()))?;
        Ok(c)
    }

    fn wait_booted(&mut self) -> Result<()> {
        let deadline = Instant::now() + BOOT_LIMIT;
        // The leader: the systemd that nspawn forked into the new namespaces.
        while self.leader == 0 {
            self.check_alive()?;
            if let Some(pid) = self.nspawn_pid().and_then(child_named_systemd) {
                self.leader = pid;
            } else if Instant::now() >= deadline {
                bail!("no systemd in the container within {BOOT_LIMIT:?}");
            } else {
                thread::sleep(Duration::from_millis(50));
            }
        }
        // Then its state: `--wait` blocks through "starting"; before the manager listens on
        // its private socket the call fails and is repeated.
        let mut last = String::new();
        loop {
            self.check_alive()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the container's systemd did not finish starting within {BOOT_LIMIT:?}; last: {last}");
            }
            match self.exec_within(&["systemctl", "is-system-running", "--wait"], left) {
                Ok(out) => {
                    let state = out.stdout.trim().to_string();
                    match state.as_str() {
                        "running" => return Ok(()),
                        // A host unit that cannot work in a container: not ours to judge, but
                        // shown when the test fails.
                        "degraded" => {
                            eprintln!(
                                "container {}: degraded; failed units:\n{}",
                                self.machine,
                                self.exec(&["systemctl", "--failed", "--no-pager", "--plain"])
                                    .map(|o| o.stdout)
                                    .unwrap_or_default()
                            );
                            return Ok(());
                        }
                        _ => last = format!("{state} {}", out.stderr.trim()),
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn nspawn_pid(&self) -> Option<i32> {
        self.nspawn.as_ref().map(|c| c.id().cast_signed())
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self
            .nspawn
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.nspawn = None;
            bail!("systemd-nspawn exited ({st})");
        }
        Ok(())
    }

    /// The machine name given to nspawn.
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// The host pid of the container's PID 1.
    pub fn leader(&self) -> i32 {
        self.leader
    }

    /// The host path of `path` inside the container (through `/proc/LEADER/root`).
    pub fn path(&self, path: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.leader)).join(path.trim_start_matches('/'))
    }

    /// Runs `cmd` inside the container (all its namespaces, its root), bounded by
    /// [`COMMAND_LIMIT`].
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        self.exec_within(cmd, COMMAND_LIMIT)
    }

    fn exec_within(&self, cmd: &[&str], limit: Duration) -> Result<Output> {
        if self.leader == 0 {
            bail!("the container has no PID 1 yet");
        }
        output_within(
            Command::new("nsenter")
                .args(["--target", &self.leader.to_string(), "--all", "--"])
                .args(cmd)
                // The host's PATH may name directories the container's tools are not in.
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .env("SYSTEMD_PAGER", "")
                .env("SYSTEMD_COLORS", "0"),
            limit,
        )
    }

    /// As [`Container::exec`], and fails unless the command exits 0; returns stdout.
    pub fn run(&self, cmd: &[&str]) -> Result<String> {
        let out = self.exec(cmd)?;
        if !out.status.success() {
            bail!(
                "`{}` in {} exited {}: {}",
                cmd.join(" "),
                self.machine,
                out.status,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// `systemctl show UNIT -p P1,P2,...` as a map.
    pub fn show(&self, unit: &str, props: &[&str]) -> Result<BTreeMap<String, String>> {
        let text = self.run(&["systemctl", "show", unit, "-p", &props.join(",")])?;
        let map: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for p in props {
            if !map.contains_key(*p) {
                return Err(anyhow!("systemctl show {unit} gave no {p}: {text}"));
            }
        }
        Ok(map)
    }

    /// The journal of `unit` inside the container ("" when unreadable), for checks and
    /// failure messages.
    pub fn journal(&self, unit: &str) -> String {
        self.exec(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-monotonic",
            "-u",
            unit,
        ])
        .map(|o| o.stdout)
        .unwrap_or_default()
    }

    /// The last lines nspawn printed (the container's console).
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGKILL to a pid namespace's init kills every process in it; nspawn then exits and
        // its mount namespace (overlay, tmpfs, bpffs with the pins) goes away.
        let leader = if self.leader > 0 {
            Some(self.leader)
        } else {
            self.nspawn_pid().and_then(child_named_systemd)
        };
        if let Some(pid) = leader {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.nspawn.take() {
            let deadline = Instant::now() + STOP_LIMIT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // nspawn's own bookkeeping directory, left when /run is not a tmpfs.
        let _ = fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&self.machine));
        let _ = &self.dir;
    }
}

/// Fails with a clear message when systemd-nspawn is missing.
pub fn require_nspawn() -> Result<()> {
    let found = ["/usr/bin/systemd-nspawn", "/bin/systemd-nspawn"]
        .iter()
        .any(|p| Path::new(p).is_file());
    if !found {
        bail!(
            "systemd-nspawn not found: install the systemd-container package (`cargo xtask test` does)"
        );
    }
    Ok(())
}

/// The pid of a child of `parent` whose command is `systemd` (scanning /proc: children files
/// need CONFIG_PROC_CHILDREN).
fn child_named_systemd(parent: i32) -> Option<i32> {
    let entries = fs::read_dir("/proc").ok()?;
    for e in entries.flatten().take(1_000_000) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split at the
        // last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let parent_pid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if parent_pid == Some(parent) && comm == "systemd" {
            return Some(pid);
        }
    }
    None
}
