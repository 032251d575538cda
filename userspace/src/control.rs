//! The control socket: `imfw stats`, `imfw status` and `imfw reload` talk to a running
//! controller over a Unix stream socket, one request line and one JSON reply.

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
    sync::{mpsc, oneshot},
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

/// A request that must run on the controller's main loop, not in the socket's task: a reload
/// touches the content path and the maps, which only the loop owns. The loop answers on the
/// oneshot with the JSON reply.
#[derive(Debug)]
pub enum LoopRequest {
    Reload(oneshot::Sender<serde_json::Value>),
}

/// How long a client waits for a reload: the policy is compiled and checked on the main loop.
pub const RELOAD_LIMIT: Duration = Duration::from_mins(1);

pub async fn serve(listener: UnixListener, shared: Arc<Mutex<Shared>>, to_loop: mpsc::Sender<LoopRequest>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r);
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let line = line.trim();
            let reply = match line.strip_prefix("flows") {
                _ if line == "reload" => ask_loop(&to_loop, LoopRequest::Reload).await,
                Some(query) if query.is_empty() || query.starts_with(' ') => flows(query.trim(), &shared).await,
                _ => answer(line, &shared),
            };
            let _ = w.write_all(reply.to_string().as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

async fn ask_loop(to_loop: &mpsc::Sender<LoopRequest>, request: fn(oneshot::Sender<serde_json::Value>) -> LoopRequest) -> serde_json::Value {
    let (tx, rx) = oneshot::channel();
    if to_loop.send(request(tx)).await.is_err() {
        return serde_json::json!({"error": "the controller is shutting down"});
    }
    match tokio::time::timeout(RELOAD_LIMIT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => serde_json::json!({"error": "the controller dropped the request (shutting down?)"}),
        Err(_) => serde_json::json!({"error": format!("no answer from the main loop within {RELOAD_LIMIT:?}")}),
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
        "status" => crate::status::answer(&s),
        other => serde_json::json!({"error": format!("unknown request {other:?}; expected stats, status, flows or reload")}),
    }
}

/// `flows [QUERY-JSON]`: walks the flow table on a blocking thread through a handle of its
/// own, so that the controller's loop goes on meanwhile.
async fn flows(query: &str, shared: &Arc<Mutex<Shared>>) -> serde_json::Value {
    let q: crate::flows::Query = if query.is_empty() {
        crate::flows::Query::default()
    } else {
        match serde_json::from_str(query) {
            Ok(q) => q,
            Err(e) => return serde_json::json!({"error": format!("bad flows query: {e}")}),
        }
    };
    let opened = match shared.lock() {
        Ok(s) => s.dataplane.flow_table().map(|t| (t, s.compiled.apps.clone())),
        Err(_) => return serde_json::json!({"error": "controller state poisoned"}),
    };
    let (table, apps) = match opened {
        Ok(ta) => ta,
        Err(e) => return serde_json::json!({"error": format!("{e:#}")}),
    };
    let listing = tokio::task::spawn_blocking(move || crate::flows::select(table.entries(), &q, &apps, table.capacity())).await;
    match listing {
        Ok(Ok(l)) => serde_json::to_value(l).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})),
        Ok(Err(e)) => serde_json::json!({"error": format!("{e:#}")}),
        Err(e) => serde_json::json!({"error": format!("reading the flow table: {e}")}),
    }
}

/// Sends one request to a running controller and returns its JSON reply.
pub fn request(path: &Path, cmd: &str) -> Result<serde_json::Value> {
    request_within(path, cmd, Duration::from_secs(10))
}

/// [`request`], waiting at most `limit` for the reply (a reload: [`RELOAD_LIMIT`] and a margin).
pub fn request_within(path: &Path, cmd: &str, limit: Duration) -> Result<serde_json::Value> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!("no imfw controller answers on {} (is `imfw run` running? pass --control if it uses another socket)", path.display())
    })?;
    s.set_read_timeout(Some(limit))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .with_context(|| format!("waiting for the controller's answer to {cmd:?} (at most {limit:?})"))?;
    let v: serde_json::Value = serde_json::from_str(&line).context("bad reply from the controller")?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("controller: {e}"));
    }
    Ok(v)
}
