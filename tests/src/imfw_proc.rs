//! The real `imfw` binary running on the gateway, driven through its CLI and control socket.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use imfw_common::verdict::Counter;
use serde_json::Value;

use crate::{
    netns::Netns,
    util::{output_within, tail, TempDir},
};

/// How long `imfw run` may take to load the program and open its control socket.
pub const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long `imfw` may take to detach and exit after SIGTERM before it is killed.
pub const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Lines of the log included in failure messages.
pub const LOG_TAIL_LINES: usize = 40;

/// A running `imfw run` inside a namespace. Stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct ImfwProc {
    child: Option<Child>,
    bin: PathBuf,
    control: PathBuf,
    log: PathBuf,
    policy: PathBuf,
    // Last: removed after the process is gone.
    _dir: TempDir,
}

impl ImfwProc {
    /// The binary under test: `$IMFW_BIN`, else `release/imfw` in the target directory
    /// (`$CARGO_TARGET_DIR` or the workspace's `target/`).
    pub fn bin() -> PathBuf {
        Self::built("IMFW_BIN", "release/imfw")
    }

    /// A binary the build left: `$var` when set, else `path` in the target directory
    /// (`$CARGO_TARGET_DIR` or the workspace's `target/`).
    pub fn built(var: &str, path: &str) -> PathBuf {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|p| !p.is_empty())
            .map_or_else(|| root.join("target"), |d| root.join(d));
        target.join(path)
    }

    /// Fails clearly when the binary is missing.
    pub fn require_bin(bin: &Path) -> Result<()> {
        if !bin.is_file() {
            bail!(
                "imfw binary not found at {}: run `cargo xtask test` (it builds it) or set IMFW_BIN",
                bin.display()
            );
        }
        Ok(())
    }

    /// Writes the policy to a temporary file, starts
    /// `ip netns exec NS BIN run --policy FILE --iface IFS --control SOCK --detach-on-exit`
    /// and waits until `imfw stats` answers on the control socket (at most [`READY_LIMIT`]).
    /// Its pins go to the default directory, on the bpffs imfw mounts in the private mount
    /// namespace of `ip netns exec`: nothing outlives the process, nothing is shared.
    pub fn start(bin: &Path, ns: &Netns, policy_yaml: &str, ifaces: &[&str]) -> Result<Self> {
        Self::start_full(bin, ns, policy_yaml, ifaces, &["--detach-on-exit"], &[])
    }

    /// As [`ImfwProc::start`], with these variables in imfw's environment (e.g. the
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` that systemd sets).
    pub fn start_with_env(
        bin: &Path,
        ns: &Netns,
        policy_yaml: &str,
        ifaces: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_full(bin, ns, policy_yaml, ifaces, &["--detach-on-exit"], env)
    }

    /// As [`ImfwProc::start`], with `extra` arguments to `imfw run` instead of
    /// `--detach-on-exit` (e.g. `--pin-dir DIR`).
    pub fn start_args(
        bin: &Path,
        ns: &Netns,
        policy_yaml: &str,
        ifaces: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_full(bin, ns, policy_yaml, ifaces, extra, &[])
    }

    fn start_full(
        bin: &Path,
        ns: &Netns,
        policy_yaml: &str,
        ifaces: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::require_bin(bin)?;
        let dir = TempDir::new("imfw-run")?;
        let policy = dir.path().join("policy.yaml");
        fs::write(&policy, policy_yaml)?;
        let control = dir.path().join("control.sock");
        let log = dir.path().join("imfw.log");
        let log_file = File::create(&log)?;
        let mut cmd = ns.command(&bin.to_string_lossy());
        cmd.arg("run")
            .arg("--policy")
            .arg(&policy)
            .arg("--iface")
            .arg(ifaces.join(","))
            .arg("--control")
            .arg(&control)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        // `ip netns exec` enters the namespace and execs the binary: the pid is imfw's.
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let mut p = ImfwProc {
            child: Some(child),
            bin: bin.to_path_buf(),
            control,
            log,
            policy,
            _dir: dir,
        };
        p.wait_ready(READY_LIMIT)?;
        Ok(p)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "imfw run exited before it was ready ({st}); log:\n{}",
                    self.log_tail()
                );
            }
            if self.control.exists() {
                match self.stats() {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "imfw not ready after {limit:?} (control socket {}; last stats error: {last}; \
                     {}); log:\n{}",
                    if self.control.exists() {
                        "present"
                    } else {
                        "absent"
                    },
                    self.where_stuck(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where a process that is not ready yet spends its time: the top of its kernel stack
    /// (e.g. `bpf_check` while the verifier works through the program).
    fn where_stuck(&self) -> String {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return "not running".into();
        };
        let stack = fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
        let top: Vec<&str> = stack
            .lines()
            .take(3)
            .map(|l| l.split_whitespace().last().unwrap_or(""))
            .collect();
        if top.is_empty() {
            format!("pid {pid} running")
        } else {
            format!("pid {pid} running, kernel stack {}", top.join(" < "))
        }
    }

    pub fn control(&self) -> &Path {
        &self.control
    }

    pub fn policy_path(&self) -> &Path {
        &self.policy
    }

    /// The last lines imfw wrote to stdout and stderr.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }

    /// `imfw stats --control SOCK --json`, parsed.
    pub fn stats(&self) -> Result<Stats> {
        let out = output_within(
            Command::new(&self.bin)
                .arg("stats")
                .arg("--control")
                .arg(&self.control)
                .arg("--json"),
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!("imfw stats exited {}: {}", out.status, out.stderr.trim());
        }
        Stats::parse(&out.stdout)
    }

    /// `imfw status --control SOCK --json`, parsed.
    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.cli("status", &["--json"])?)?)
    }

    /// `imfw flows --control SOCK --json ARGS...`, parsed.
    pub fn flows(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.cli("flows", &all)?)?)
    }

    /// `imfw CMD --control SOCK ARGS...`: its standard output, or an error with its
    /// standard error when it fails.
    pub fn cli(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let out = output_within(
            Command::new(&self.bin)
                .arg(cmd)
                .arg("--control")
                .arg(&self.control)
                .args(args),
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!("imfw {cmd} exited {}: {}", out.status, out.stderr.trim());
        }
        Ok(out.stdout)
    }

    /// Sends SIGHUP (reload the policy file) to the running controller.
    pub fn hangup(&self) -> Result<()> {
        let Some(child) = self.child.as_ref() else {
            bail!("imfw is not running");
        };
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) with a pid of our own child, which has not been waited for.
        if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
            bail!("kill -HUP {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything imfw logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would end it: nothing of imfw's own exit path runs. Returns the
    /// exit status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("imfw already stopped"))?;
        child.kill()?;
        Ok(child.wait()?)
    }

    /// SIGTERM, wait up to [`STOP_LIMIT`], then SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("imfw already stopped"))?;
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let st = child.wait()?;
                bail!(
                    "imfw did not exit within {STOP_LIMIT:?} of SIGTERM (killed: {st}); log:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ImfwProc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// The output of `imfw stats --json`.
#[derive(Clone, Debug)]
pub struct Stats(pub Value);

impl Stats {
    pub fn parse(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text.trim())
            .with_context(|| format!("imfw stats printed no JSON object: {text:?}"))?;
        if !v.is_object() {
            bail!("imfw stats printed {v}, not an object");
        }
        Ok(Stats(v))
    }

    /// The (app, verdict) cell; `app` `None` is unclassified traffic. Zero when absent
    /// (only non-zero cells are listed).
    pub fn counter(&self, app: Option<&str>, verdict: &str) -> Counter {
        let mut c = Counter::default();
        let Some(rows) = self.0.get("counters").and_then(Value::as_array) else {
            return c;
        };
        for r in rows {
            let row_app = r.get("app").and_then(Value::as_str);
            if row_app == app && r.get("verdict").and_then(Value::as_str) == Some(verdict) {
                c.packets += r.get("packets").and_then(Value::as_u64).unwrap_or(0);
                c.bytes += r.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            }
        }
        c
    }

    /// Packets and bytes dropped for `reason` (`policy`, `unparsed`, `fragment`,
    /// `redirect_failed`).
    pub fn drops(&self, reason: &str) -> Counter {
        let d = self.0.get("drops").and_then(|d| d.get(reason));
        Counter {
            packets: d
                .and_then(|d| d.get("packets"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            bytes: d
                .and_then(|d| d.get("bytes"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
        }
    }

    /// A data-plane statistic by name (`packets`, `flows_created`, `classified`, ...).
    pub fn stat(&self, name: &str) -> u64 {
        self.0
            .get("stats")
            .and_then(|s| s.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// Every (app, verdict) cell, as listed.
    pub fn cells(&self) -> Vec<(Option<String>, String, Counter)> {
        let Some(rows) = self.0.get("counters").and_then(Value::as_array) else {
            return Vec::new();
        };
        rows.iter()
            .map(|r| {
                (
                    r.get("app").and_then(Value::as_str).map(str::to_string),
                    r.get("verdict")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    Counter {
                        packets: r.get("packets").and_then(Value::as_u64).unwrap_or(0),
                        bytes: r.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                    },
                )
            })
            .collect()
    }
}

/// `after - before`, cell by cell (counters only grow while imfw runs).
pub fn delta(before: Counter, after: Counter) -> Counter {
    Counter {
        packets: after.packets.saturating_sub(before.packets),
        bytes: after.bytes.saturating_sub(before.bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_reads_the_contract_shape() {
        let s = Stats::parse(
            r#"{"counters":[{"app":"whatsapp","verdict":"drop","packets":3,"bytes":300},
                {"app":null,"verdict":"allow","packets":7,"bytes":700}],
                "drops":{"policy":{"packets":3,"bytes":300},"unparsed":{"packets":0,"bytes":0}},
                "stats":{"packets":10,"flows_created":2,"classified":1}}"#,
        )
        .unwrap();
        assert_eq!(
            s.counter(Some("whatsapp"), "drop"),
            Counter {
                packets: 3,
                bytes: 300
            }
        );
        assert_eq!(
            s.counter(None, "allow"),
            Counter {
                packets: 7,
                bytes: 700
            }
        );
        assert_eq!(s.counter(Some("telegram"), "drop"), Counter::default());
        assert_eq!(s.drops("policy").packets, 3);
        assert_eq!(s.drops("fragment"), Counter::default());
        assert_eq!(s.stat("flows_created"), 2);
        assert_eq!(s.cells().len(), 2);
        assert!(Stats::parse("not json").is_err());
        assert!(Stats::parse("[1]").is_err());
    }
}
