//! The control socket: `imfw stats` (and later status, reload) talk to a running controller
//! over a Unix stream socket, one request line and one JSON reply.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
};

use crate::{dataplane::Dataplane, policy::Compiled};

pub const DEFAULT_PATH: &str = "/run/imfw/control.sock";

pub struct Shared {
    pub dataplane: Dataplane,
    pub compiled: Compiled,
    pub policy_file: String,
    pub started: Instant,
    /// Policy reloads (SIGHUP) that took effect, and those refused for a bad file.
    pub reloads: u64,
    pub reloads_failed: u64,
    /// Policies the data plane has had since it was loaded (1: the first), and the map
    /// generation (0 or 1) the one in force lives in.
    pub policy_version: u32,
    pub policy_generation: u32,
}

/// Binds the socket, replacing a stale one left by a dead controller but never one that a
/// live controller still answers on.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("another imfw controller is running on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))
}

pub async fn serve(listener: UnixListener, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r);
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let reply = answer(line.trim(), &shared);
            let _ = w.write_all(reply.to_string().as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

fn answer(cmd: &str, shared: &Arc<Mutex<Shared>>) -> serde_json::Value {
    let Ok(s) = shared.lock() else {
        return serde_json::json!({"error": "controller state poisoned"});
    };
    match cmd {
        "stats" => match s.dataplane.snapshot() {
            Ok(snap) => snap.to_json(&s.compiled),
            Err(e) => serde_json::json!({"error": format!("{e:#}")}),
        },
        "status" => {
            let ifaces: Vec<_> = s
                .dataplane
                .attached()
                .iter()
                .map(|a| serde_json::json!({"iface": a.iface, "ifindex": a.ifindex, "mode": a.mode.name()}))
                .collect();
            serde_json::json!({
                "interfaces": ifaces,
                "policy": s.policy_file,
                "policy_hash": s.compiled.hash,
                "policy_version": s.policy_version,
                "policy_generation": s.policy_generation,
                "uptime_s": s.started.elapsed().as_secs(),
                "reloads": s.reloads,
                "reloads_failed": s.reloads_failed,
            })
        }
        other => serde_json::json!({"error": format!("unknown request {other:?}; expected stats or status")}),
    }
}

/// Sends one request to a running controller and returns its JSON reply.
pub fn request(path: &Path, cmd: &str) -> Result<serde_json::Value> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!("no imfw controller answers on {} (is `imfw run` running? pass --control if it uses another socket)", path.display())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply from the controller")?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("controller: {e}"));
    }
    Ok(v)
}
