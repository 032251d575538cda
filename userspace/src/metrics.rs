//! The Prometheus endpoint (`observability.prometheus` in the policy): a small HTTP/1.1
//! server on the controller's runtime that answers `GET /metrics` with the text exposition
//! format, and the slow gauges it serves, refreshed off the request path.
//!
//! Every request is bounded: at most [`MAX_CONNECTIONS`] at once, a head of at most
//! [`MAX_HEAD`] bytes read within [`READ_TIMEOUT`], one response, then the connection closes.
//! A scrape holds the controller's lock only while it sums the per-CPU counters.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use imfw_common::verdict::{Stat, Verdict};
use imfw_monitor::session::MonitorStats;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{control::Shared, dataplane::Snapshot};

/// Scrapes served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 8;
/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the flow table's entries are counted (a walk of up to 262,144 keys).
pub const FILL_REFRESH: Duration = Duration::from_secs(10);

static ENDPOINT: OnceLock<SocketAddr> = OnceLock::new();
/// Flow-table entries at the last count; `u64::MAX`: not counted yet.
static FLOW_ENTRIES: AtomicU64 = AtomicU64::new(u64::MAX);
static FLOW_CAPACITY: AtomicU64 = AtomicU64::new(0);
/// Log lines written, by level (error, warn, info, debug, trace).
static LOG_LINES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// The content path's counters at its last tick.
static CONTENT: Mutex<Option<MonitorStats>> = Mutex::new(None);

/// The address the endpoint listens on, once it does.
pub fn endpoint() -> Option<SocketAddr> {
    ENDPOINT.get().copied()
}

/// Flow-table entries at the last count (every [`FILL_REFRESH`]).
pub fn flow_entries() -> Option<u64> {
    Some(FLOW_ENTRIES.load(Ordering::Relaxed)).filter(|n| *n != u64::MAX)
}

/// Counts one log line (called by the logger's formatter).
pub fn count_log(level: log::Level) {
    LOG_LINES[level as usize - 1].fetch_add(1, Ordering::Relaxed);
}

/// Records the content path's counters (called on its tick).
pub fn set_content(stats: MonitorStats) {
    if let Ok(mut c) = CONTENT.lock() {
        *c = Some(stats);
    }
}

/// Starts the flow-table counter and, when `addr` is given, the endpoint. Fails when the
/// address cannot be bound.
pub async fn start(addr: Option<SocketAddr>, shared: Arc<Mutex<Shared>>) -> Result<()> {
    tokio::spawn(refresh_fill(shared.clone()));
    let Some(addr) = addr else { return Ok(()) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the Prometheus endpoint {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let _ = ENDPOINT.set(bound);
    log::info!("metrics: serving Prometheus metrics on http://{bound}/metrics");
    tokio::spawn(serve(listener, shared));
    Ok(())
}

/// Counts the flow table every [`FILL_REFRESH`] on a blocking thread, through a handle of its
/// own: the count walks every key, and neither scrapes nor the controller wait for it.
async fn refresh_fill(shared: Arc<Mutex<Shared>>) {
    let mut every = tokio::time::interval(FILL_REFRESH);
    loop {
        every.tick().await;
        let table = match shared.lock() {
            Ok(s) => s.dataplane.flow_table(),
            Err(_) => return,
        };
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                log::warn!("metrics: cannot open the flow table: {e:#}");
                continue;
            }
        };
        FLOW_CAPACITY.store(u64::from(table.capacity()), Ordering::Relaxed);
        if let Ok(n) = tokio::task::spawn_blocking(move || table.count()).await {
            FLOW_ENTRIES.store(n, Ordering::Relaxed);
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(2 * READ_TIMEOUT, respond(stream, &shared)).await;
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    Bad,
}

/// Reads the request line of a complete head (`GET /metrics HTTP/1.1`).
fn parse_head(head: &[u8]) -> Request {
    let Some(line) = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
    else {
        return Request::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Request::Metrics {
            head_only: method == "HEAD",
        },
        ("GET" | "HEAD", _) => Request::NotFound,
        _ => Request::BadMethod,
    }
}

/// Reads one request head (bounded in size and time) and writes one response.
async fn respond(mut stream: TcpStream, shared: &Arc<Mutex<Shared>>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, body, head_only) = match complete {
        Err(_) => (
            "408 Request Timeout",
            "request head not received in time\n".to_owned(),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) if head.len() > MAX_HEAD => (
            "431 Request Header Fields Too Large",
            "request head too large\n".to_owned(),
            false,
        ),
        Ok(Ok(false)) => return Ok(()),
        Ok(Ok(true)) => match parse_head(&head) {
            Request::Metrics { head_only } => match scrape(shared) {
                Ok(text) => ("200 OK", text, head_only),
                Err(e) => ("500 Internal Server Error", format!("{e:#}\n"), head_only),
            },
            Request::NotFound => (
                "404 Not Found",
                "only /metrics is served here\n".to_owned(),
                false,
            ),
            Request::BadMethod => (
                "405 Method Not Allowed",
                "only GET and HEAD\n".to_owned(),
                false,
            ),
            Request::Bad => (
                "400 Bad Request",
                "not an HTTP/1 request\n".to_owned(),
                false,
            ),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// Everything one scrape shows.
pub struct Input {
    pub snapshot: Snapshot,
    pub apps: Vec<(u16, String)>,
    pub policy_file: String,
    pub policy_hash: String,
    pub uptime_s: u64,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub flow_entries: Option<u64>,
    pub flow_capacity: u64,
    /// Log lines by level: error, warn, info, debug, trace.
    pub log_lines: [u64; 5],
    pub content: Option<MonitorStats>,
}

fn scrape(shared: &Arc<Mutex<Shared>>) -> Result<String> {
    let input = {
        let s = shared
            .lock()
            .map_err(|_| anyhow::anyhow!("controller state poisoned"))?;
        Input {
            snapshot: s.dataplane.snapshot()?,
            apps: s.compiled.apps.clone(),
            policy_file: s.policy_file.clone(),
            policy_hash: s.compiled.hash.clone(),
            uptime_s: s.started.elapsed().as_secs(),
            reloads: s.reloads,
            reloads_failed: s.reloads_failed,
            flow_entries: flow_entries(),
            flow_capacity: FLOW_CAPACITY.load(Ordering::Relaxed),
            log_lines: std::array::from_fn(|i| LOG_LINES[i].load(Ordering::Relaxed)),
            content: CONTENT.lock().ok().and_then(|c| c.clone()),
        }
    };
    Ok(render(&input))
}

/// A label value as the exposition format quotes it.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes a metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Help for each data-plane statistic.
fn stat_help(s: Stat) -> &'static str {
    match s {
        Stat::Packets => "Packets the XDP program saw.",
        Stat::NonIp => "Packets that were neither IPv4 nor IPv6 (passed).",
        Stat::OtherL4 => "IP packets that were neither TCP nor UDP (passed).",
        Stat::Unparsed => "Packets with truncated or malformed headers.",
        Stat::Fragments => "Non-first IP fragments.",
        Stat::FlowsCreated => "Flow-table entries created.",
        Stat::FlowInsertFailed => "Flow-table inserts the kernel refused.",
        Stat::Inspected => "Payload packets that went through the matchers.",
        Stat::Unclassified => "Flows decided without an app: inspection budget spent, or a TLS server name no app claims.",
        Stat::EventsLost => "Classification events lost because the classification log (or on CPUs other than x86-64, the event ring) was full.",
        Stat::Classified => "Flows classified as an app.",
        Stat::InspectorMissing => {
            "Packets that passed uninspected because the inspector tail call failed."
        }
        Stat::ToController => "Payloads handed to the controller.",
        Stat::ToControllerLost => {
            "Payloads not handed to the controller because the event ring was full."
        }
        Stat::Streamed => "Segments of monitored flows copied to the content path.",
        Stat::StreamLost => {
            "Segments of monitored flows not copied because the event ring was full."
        }
    }
}

/// The text exposition format (version 0.0.4) of one scrape.
#[expect(clippy::too_many_lines, reason = "one family after the other, in the order a scrape shows them")]
pub fn render(i: &Input) -> String {
    let mut out = String::with_capacity(8192);
    family(
        &mut out,
        "imfw_build_info",
        "gauge",
        "The running imfw's version.",
    );
    let _ = writeln!(
        out,
        "imfw_build_info{{version=\"{}\"}} 1",
        label(env!("CARGO_PKG_VERSION"))
    );
    family(
        &mut out,
        "imfw_policy_info",
        "gauge",
        "The policy in force: its file and sha256.",
    );
    let _ = writeln!(
        out,
        "imfw_policy_info{{file=\"{}\",sha256=\"{}\"}} 1",
        label(&i.policy_file),
        label(&i.policy_hash)
    );
    family(
        &mut out,
        "imfw_uptime_seconds",
        "gauge",
        "Seconds since the controller started.",
    );
    let _ = writeln!(out, "imfw_uptime_seconds {}", i.uptime_s);

    let app = |id: u16| -> String {
        if id == 0 {
            return "none".to_owned();
        }
        i.apps
            .iter()
            .find(|(a, _)| *a == id)
            .map_or_else(|| format!("app#{id}"), |(_, n)| n.clone())
    };
    for (name, help, bytes) in [
        (
            "imfw_packets_total",
            "Packets by app (none: not IM) and verdict (pending: while the flow is inspected).",
            false,
        ),
        (
            "imfw_bytes_total",
            "Bytes (whole frames) by app (none: not IM) and verdict.",
            true,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for ((a, v), c) in &i.snapshot.counters {
            let n = if bytes { c.bytes } else { c.packets };
            let _ = writeln!(
                out,
                "{name}{{app=\"{}\",verdict=\"{}\"}} {n}",
                label(&app(*a)),
                Verdict::from_u8(*v).name()
            );
        }
    }
    for (name, help, bytes) in [
        (
            "imfw_dropped_packets_total",
            "Packets the XDP program dropped, by reason.",
            false,
        ),
        (
            "imfw_dropped_bytes_total",
            "Bytes the XDP program dropped, by reason.",
            true,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for (r, c) in &i.snapshot.drops {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                r.name(),
                if bytes { c.bytes } else { c.packets }
            );
        }
    }
    for (s, n) in &i.snapshot.stats {
        let name = format!("imfw_dataplane_{}_total", s.name());
        family(&mut out, &name, "counter", stat_help(*s));
        let _ = writeln!(out, "{name} {n}");
    }

    family(
        &mut out,
        "imfw_policy_reloads_total",
        "counter",
        "Policy reloads: applied, and refused for an invalid file.",
    );
    let _ = writeln!(
        out,
        "imfw_policy_reloads_total{{result=\"applied\"}} {}",
        i.reloads
    );
    let _ = writeln!(
        out,
        "imfw_policy_reloads_total{{result=\"refused\"}} {}",
        i.reloads_failed
    );
    family(
        &mut out,
        "imfw_log_messages_total",
        "counter",
        "Log lines the controller wrote, by level.",
    );
    for (level, n) in ["error", "warn", "info", "debug", "trace"]
        .iter()
        .zip(i.log_lines)
    {
        let _ = writeln!(out, "imfw_log_messages_total{{level=\"{level}\"}} {n}");
    }

    family(
        &mut out,
        "imfw_flow_table_entries",
        "gauge",
        "Flow-table entries, counted every 10 s off the request path (a walk of the table); absent until the first count.",
    );
    if let Some(n) = i.flow_entries {
        let _ = writeln!(out, "imfw_flow_table_entries {n}");
    }
    family(
        &mut out,
        "imfw_flow_table_capacity",
        "gauge",
        "Flow-table capacity; the least recently used flow is evicted when full.",
    );
    let _ = writeln!(out, "imfw_flow_table_capacity {}", i.flow_capacity);

    if let Some(c) = &i.content {
        family(
            &mut out,
            "imfw_content_flows",
            "gauge",
            "Monitored flows the content path reassembles now.",
        );
        let _ = writeln!(out, "imfw_content_flows {}", c.flows);
        for (name, help, n) in [
            (
                "imfw_content_flows_started_total",
                "Monitored flows the content path started.",
                c.flows_started,
            ),
            (
                "imfw_content_segments_total",
                "Segments the content path read.",
                c.segments,
            ),
            (
                "imfw_content_messages_total",
                "Messages the content policy checked.",
                c.messages,
            ),
            (
                "imfw_content_blocked_total",
                "Flows the content policy blocked.",
                c.blocked,
            ),
            (
                "imfw_content_gaps_total",
                "Holes in monitored streams the reassembly skipped.",
                c.gaps,
            ),
            (
                "imfw_content_parse_errors_total",
                "Monitored streams that could not be parsed.",
                c.parse_errors,
            ),
            (
                "imfw_content_evictions_total",
                "Monitored flows evicted for lack of room.",
                c.evictions,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use imfw_common::verdict::{Counter, DropReason};

    use super::*;

    fn input() -> Input {
        let mut snapshot = Snapshot::default();
        snapshot.counters.insert(
            (1, Verdict::Drop as u8),
            Counter {
                packets: 3,
                bytes: 300,
            },
        );
        snapshot.counters.insert(
            (0, Verdict::Allow as u8),
            Counter {
                packets: 7,
                bytes: 700,
            },
        );
        snapshot.counters.insert(
            (200, Verdict::Monitor as u8),
            Counter {
                packets: 1,
                bytes: 60,
            },
        );
        snapshot.drops = DropReason::ALL
            .iter()
            .map(|r| (*r, Counter::default()))
            .collect();
        snapshot.drops[0].1 = Counter {
            packets: 3,
            bytes: 300,
        };
        snapshot.stats = Stat::ALL.iter().map(|s| (*s, 0)).collect();
        snapshot.stats[0].1 = 10;
        snapshot.stats[Stat::EventsLost as usize].1 = 2;
        Input {
            snapshot,
            apps: vec![(1, "whatsapp".to_owned())],
            policy_file: "/etc/imfw/a \"b\"\\c.yaml".to_owned(),
            policy_hash: "abc".to_owned(),
            uptime_s: 5,
            reloads: 1,
            reloads_failed: 2,
            flow_entries: Some(4),
            flow_capacity: 262_144,
            log_lines: [1, 0, 9, 0, 0],
            content: None,
        }
    }

    #[test]
    fn exposition_text() {
        let text = render(&input());
        for want in [
            "# HELP imfw_packets_total Packets by app",
            "# TYPE imfw_packets_total counter",
            "imfw_packets_total{app=\"whatsapp\",verdict=\"drop\"} 3",
            "imfw_packets_total{app=\"none\",verdict=\"allow\"} 7",
            "imfw_packets_total{app=\"app#200\",verdict=\"monitor\"} 1",
            "imfw_bytes_total{app=\"whatsapp\",verdict=\"drop\"} 300",
            "imfw_dropped_packets_total{reason=\"policy\"} 3",
            "imfw_dropped_bytes_total{reason=\"redirect_failed\"} 0",
            "imfw_dropped_packets_total{reason=\"held\"} 0",
            "# TYPE imfw_dataplane_events_lost_total counter",
            "imfw_dataplane_events_lost_total 2",
            "imfw_dataplane_packets_total 10",
            "imfw_dataplane_inspector_missing_total 0",
            "imfw_dataplane_stream_lost_total 0",
            "imfw_policy_reloads_total{result=\"applied\"} 1",
            "imfw_policy_reloads_total{result=\"refused\"} 2",
            "imfw_log_messages_total{level=\"error\"} 1",
            "# HELP imfw_flow_table_entries Flow-table entries, counted every 10 s off the request path",
            "# TYPE imfw_flow_table_entries gauge",
            "imfw_flow_table_entries 4",
            "imfw_flow_table_capacity 262144",
            "imfw_uptime_seconds 5",
            // Backslash, then quote escaped; nothing else.
            "imfw_policy_info{file=\"/etc/imfw/a \\\"b\\\"\\\\c.yaml\",sha256=\"abc\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(want)),
                "`{want}` not in:\n{text}"
            );
        }
        assert!(
            !text.contains("imfw_content_"),
            "no content path, no content metrics"
        );
        // Every sample belongs to a family announced just before it, and every family has
        // HELP then TYPE.
        let mut current = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                current = rest.split(' ').next().unwrap_or("").to_owned();
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                assert!(
                    rest.starts_with(&format!("{current} ")),
                    "TYPE without its HELP: {l}"
                );
            } else {
                let name = l.split(['{', ' ']).next().unwrap_or("");
                assert_eq!(name, current, "sample outside its family: {l}");
                let value = l.rsplit(' ').next().unwrap_or("");
                assert!(value.parse::<f64>().is_ok(), "bad value in {l}");
            }
        }
        let mut i = input();
        i.flow_entries = None;
        i.content = Some(MonitorStats {
            messages: 12,
            ..MonitorStats::default()
        });
        let text = render(&i);
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("imfw_flow_table_entries ")),
            "no count yet, no sample"
        );
        assert!(
            text.contains("\nimfw_content_messages_total 12\n"),
            "{text}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("plain"), "plain");
        assert_eq!(label("a\"b"), "a\\\"b");
        assert_eq!(label("a\\b"), "a\\\\b");
        assert_eq!(label("a\nb"), "a\\nb");
    }

    #[test]
    fn requests_are_read_strictly() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            parse_head(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_head(b"GET /metrics/x HTTP/1.1\r\n\r\n"),
            Request::NotFound
        );
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse_head(b"GET /metrics SPDY/3\r\n\r\n"), Request::Bad);
        assert_eq!(parse_head(b"\xff\xfe\r\n\r\n"), Request::Bad);
    }
}
