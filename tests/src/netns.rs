//! Network namespaces owned by a guard, and code run inside them.
//!
//! Names are `imfw-<pid>-<n>-<role>`: unique per process and per namespace, so parallel runs
//! never collide, and the namespaces of a run that died without cleaning up can be told
//! apart (their pid is gone) and removed by [`remove_stale`].
use std::{
    fs::{self, File},
    os::fd::AsRawFd as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::util::{next_seq, run_ok};

const NETNS_DIR: &str = "/var/run/netns";

/// A unique namespace name for `role` (at most a few characters, e.g. `gw`).
pub fn unique_name(role: &str) -> String {
    format!("imfw-{}-{}-{role}", std::process::id(), next_seq())
}

/// A network namespace created by `ip netns add` and removed (with any process still in it)
/// on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`, brings its loopback up.
    pub fn new(name: &str) -> Result<Self> {
        run_ok(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with a fresh [`unique_name`] for `role`.
    pub fn with_role(role: &str) -> Result<Self> {
        Netns::new(&unique_name(role))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace: `ip netns exec NAME PROGRAM ARGS...`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `cmd[0] cmd[1..]` inside the namespace (bounded by 30 s); returns stdout.
    pub fn run(&self, cmd: &[&str]) -> Result<String> {
        let (program, args) = cmd.split_first().ok_or_else(|| anyhow!("empty command"))?;
        run_ok(self.command(program).args(args))
    }

    /// Writes a sysctl of this namespace (`key` like `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        // /proc/sys/net answers for the network namespace of the thread that opens it.
        in_netns(&self.name, || fs::write(&path, value))?
            .with_context(|| format!("writing {} in {}", path.display(), self.name))
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn enter_with<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.name, f)
    }

    /// Pids of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = run_ok(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    run_ok(Command::new("ip").args(["netns", "pids", name]))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process left in namespace `name` (children this crate started there, such
/// as an `imfw` whose guard could not stop it), and waits briefly for them to go.
fn kill_all_in(name: &str) {
    let pids = pids_in(name);
    for &pid in &pids {
        if pid > 1 && pid != std::process::id().cast_signed() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.is_empty() && !pids_in(name).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Removes namespaces left behind by runs of this crate that died (their pid no longer
/// exists), together with any process still inside them.
pub fn remove_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten().take(10_000) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("imfw-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(&name);
        let _ = run_ok(Command::new("ip").args(["netns", "del", &name]));
    }
}

/// Moves the calling thread into namespace `name`. Only for threads this crate spawned for
/// the purpose: the thread stays there until it ends.
pub fn enter(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid open fd; setns only changes the calling thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `name` and returns its result; a panic in `f`
/// is re-raised here. Sockets created by `f` stay in `name` wherever they are used later.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|s| {
        let h = s.spawn(|| -> Result<T> {
            enter(name)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Spawns a thread that enters namespace `name` and then runs `f`. Fails here when the
/// thread could not enter the namespace; the handle then never yields `None`.
pub fn spawn_in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<Option<T>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name_owned = name.to_string();
    let h = thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || match enter(&name_owned) {
            Ok(()) => {
                let _ = tx.send(Ok(()));
                Some(f())
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                None
            }
        })
        .context("spawning thread")?;
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(h),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("thread for namespace {name} did not start"),
    }
}

/// A veth pair with one end in each namespace, created directly there (so the names only
/// need to be unique inside their namespace).
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    run_ok(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))
    .with_context(|| format!("creating veth {}:{a_if} <-> {}:{b_if}", a.name(), b.name()))?;
    Ok(())
}

/// Turns off segmentation and receive offloads on a veth end that sends, so that every
/// frame seen by XDP on the peer fits the MTU, as on a real NIC.
pub fn disable_offloads(ns: &Netns, ifname: &str) -> Result<()> {
    ns.run(&[
        "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off",
    ])
    .with_context(|| format!("ethtool -K {ifname} in {}", ns.name()))?;
    Ok(())
}

/// Enables GRO on a veth end. A veth only accepts frames that XDP redirects into its peer
/// when this end has NAPI enabled, which GRO does (kernel 5.13 and later).
pub fn enable_napi(ns: &Netns, ifname: &str) -> Result<()> {
    ns.run(&["ethtool", "-K", ifname, "gro", "on"])
        .with_context(|| format!("ethtool -K {ifname} gro on in {}", ns.name()))?;
    Ok(())
}
