//! Small servers and clients for the lab. The server answers each protocol the way its real
//! server would (or echoes), records what every connection delivered, and serves a
//! deterministic 1 MiB body to HTTP GETs, so one server on many ports covers the IM and the
//! web cases. All threads are bounded in time and stopped on drop.
use std::{
    collections::HashMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::{
    capture::contains,
    netns::{in_netns, Netns},
    protocols,
    util::Rng,
};

/// Longest a server runs.
pub const SERVER_LIMIT: Duration = Duration::from_mins(10);
/// Longest one connection is served.
pub const CONN_LIMIT: Duration = Duration::from_mins(1);
/// Most connections a server accepts.
pub const MAX_CONNS: usize = 2000;
/// Bytes of each connection kept for inspection (the count goes on).
pub const KEEP_BYTES: usize = 16 * 1024;

/// Size of the HTTP body the server sends to any GET.
pub const HTTP_BODY_LEN: usize = 1 << 20;

/// The body served to HTTP GETs: 1 MiB from a fixed seed.
pub fn http_body() -> Vec<u8> {
    Rng::new(0x1_4d1b).bytes(HTTP_BODY_LEN)
}

/// SHA-256 of [`http_body`].
pub fn http_body_sha256() -> [u8; 32] {
    Sha256::digest(http_body()).into()
}

/// What one connection delivered to the server.
#[derive(Clone, Debug, Default)]
pub struct ConnRecord {
    pub local_port: u16,
    /// Bytes received in all.
    pub total: usize,
    /// The first [`KEEP_BYTES`] of them.
    pub head: Vec<u8>,
    /// Bytes the server sent back.
    pub replied: usize,
}

/// A connection's key: the client's address and the server port it connected to. Linux
/// reuses an ephemeral port for connections to different destinations, so the client's
/// address alone is not unique.
pub type ConnKey = (SocketAddr, u16);

type Log = Arc<Mutex<HashMap<ConnKey, ConnRecord>>>;

/// The key of a peer: IPv4-mapped IPv6 addresses (dual-stack sockets) as plain IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The lab's TCP server, listening on `[::]` (IPv4 and IPv6) on several ports.
#[derive(Debug)]
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    log: Log,
    threads: Vec<JoinHandle<()>>,
    ports: Vec<u16>,
}

impl TcpServer {
    /// Binds every port inside `ns` (failing if one is taken) and starts serving.
    pub fn start(ns: &Netns, ports: &[u16]) -> Result<Self> {
        let listeners = in_netns(ns.name(), || -> Result<Vec<TcpListener>> {
            ports
                .iter()
                .map(|p| {
                    let l =
                        TcpListener::bind(("::", *p)).with_context(|| format!("bind [::]:{p}"))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect()
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let conn_threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let mut threads = Vec::new();
        for l in listeners {
            let (stop, log, conns) = (
                Arc::clone(&stop),
                Arc::clone(&log),
                Arc::clone(&conn_threads),
            );
            threads.push(thread::spawn(move || accept_loop(&l, &stop, &log, &conns)));
        }
        // A reaper that joins the connection threads when the server stops.
        let (stop2, conns) = (Arc::clone(&stop), conn_threads);
        threads.push(thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIMIT + CONN_LIMIT;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let handles: Vec<_> = conns
                .lock()
                .map(|mut v| v.drain(..).collect())
                .unwrap_or_default();
            for h in handles {
                let _ = h.join();
            }
        }));
        Ok(TcpServer {
            stop,
            log,
            threads,
            ports: ports.to_vec(),
        })
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// What the connection from `client` (the client's local address) to `server_port`
    /// delivered; `None` when the server never accepted it.
    pub fn received_from(&self, client: SocketAddr, server_port: u16) -> Option<ConnRecord> {
        self.log
            .lock()
            .ok()?
            .get(&(canonical(client), server_port))
            .cloned()
    }

    /// What the connection of exchange `x` delivered.
    pub fn received(&self, x: &Exchange) -> Option<ConnRecord> {
        self.received_from(x.local, x.remote.port())
    }

    /// Every connection seen.
    pub fn connections(&self) -> HashMap<ConnKey, ConnRecord> {
        self.log.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Whether any connection delivered bytes containing `needle`.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.log
            .lock()
            .is_ok_and(|m| m.values().any(|c| contains(&c.head, needle)))
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    l: &TcpListener,
    stop: &Arc<AtomicBool>,
    log: &Log,
    conns: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let deadline = Instant::now() + SERVER_LIMIT;
    let mut accepted = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && accepted < MAX_CONNS {
        match l.accept() {
            Ok((s, peer)) => {
                accepted += 1;
                let port = l.local_addr().map_or(0, |a| a.port());
                let key = (canonical(peer), port);
                if let Ok(mut m) = log.lock() {
                    m.insert(
                        key,
                        ConnRecord {
                            local_port: port,
                            ..ConnRecord::default()
                        },
                    );
                }
                let (stop, log) = (Arc::clone(stop), Arc::clone(log));
                let h = thread::spawn(move || serve(s, key, &stop, &log));
                if let Ok(mut v) = conns.lock() {
                    v.push(h);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What the server does with the bytes received so far.
enum Answer {
    /// The first message is not complete yet.
    Wait,
    /// Send these bytes, keep the connection.
    Send(Vec<u8>),
    /// Send these bytes and close (HTTP responses).
    SendAndClose(Vec<u8>),
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    contains(hay, needle)
}

/// The reply to a client's first message, by protocol; unknown protocols are echoed.
fn first_answer(buf: &[u8], rng: &mut Rng) -> Answer {
    let headers_done = find(buf, b"\r\n\r\n");
    if buf.starts_with(b"GET ") {
        if !headers_done {
            return Answer::Wait;
        }
        let body = http_body();
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        return Answer::SendAndClose(r);
    }
    if buf.starts_with(b"CONNECT ") {
        return if headers_done {
            Answer::Send(protocols::HTTP_CONNECT_OK.to_vec())
        } else {
            Answer::Wait
        };
    }
    if buf.len() >= 3 && buf[0] == 0x16 && buf[1] == 3 {
        return match protocols::tls_record_len(buf) {
            Some(n) if buf.len() >= n => Answer::Send(protocols::tls_server_hello(rng)),
            _ => Answer::Wait,
        };
    }
    if buf.starts_with(b"<?xml") || buf.starts_with(b"<stream:stream") {
        return Answer::Send(protocols::xmpp_server_reply("example.net"));
    }
    if buf.starts_with(b"CAP ") || buf.starts_with(b"NICK ") || buf.starts_with(b"PASS ") {
        return if find(buf, b"USER ") && buf.ends_with(b"\r\n") {
            Answer::Send(protocols::irc_server_reply("alice"))
        } else {
            Answer::Wait
        };
    }
    if buf.starts_with(b"ED\x00\x01") || buf.starts_with(b"WA") {
        // A WhatsApp server answers the whole ClientHello frame, never the preamble alone.
        return if protocols::whatsapp_hello_complete(buf) {
            Answer::Send(protocols::whatsapp_server_hello(rng))
        } else {
            Answer::Wait
        };
    }
    if let Some(level) = mqtt_connect_level(buf) {
        return Answer::Send(protocols::mqtt_connack(level));
    }
    Answer::Send(buf.to_vec())
}

/// The protocol level of an MQTT CONNECT: fixed header 0x10, remaining length (1-4 bytes),
/// protocol name `00 04 MQTT`, level.
fn mqtt_connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first() != Some(&0x10) {
        return None;
    }
    let len_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let v = buf.get(1 + len_bytes..)?;
    (v.len() >= 7 && &v[..6] == b"\x00\x04MQTT").then(|| v[6])
}

fn serve(mut s: TcpStream, key: ConnKey, stop: &AtomicBool, log: &Log) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
    let _ = s.set_nodelay(true);
    let deadline = Instant::now() + CONN_LIMIT;
    let mut rng = Rng::new(u64::from(key.0.port()));
    let mut first: Vec<u8> = Vec::new();
    let mut answered = false;
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let data = &buf[..n];
        if let Ok(mut m) = log.lock() {
            let r = m.entry(key).or_default();
            r.total += n;
            let keep = (KEEP_BYTES - r.head.len().min(KEEP_BYTES)).min(n);
            r.head.extend_from_slice(&data[..keep]);
        }
        let answer = if answered {
            Answer::Send(data.to_vec())
        } else {
            first.extend_from_slice(data);
            first_answer(&first, &mut rng)
        };
        let (out, close) = match answer {
            Answer::Wait => continue,
            Answer::Send(b) => (b, false),
            Answer::SendAndClose(b) => (b, true),
        };
        answered = true;
        if s.write_all(&out).is_err() {
            break;
        }
        if let Ok(mut m) = log.lock() {
            m.entry(key).or_default().replied += out.len();
        }
        if close {
            // Then drain until the client closes, bounded by the connection's deadline.
            let _ = s.shutdown(Shutdown::Write);
        }
    }
}

/// What a client saw of one exchange.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The client's address.
    pub local: SocketAddr,
    /// The server's address.
    pub remote: SocketAddr,
    pub sent: usize,
    pub reply: Vec<u8>,
}

/// Connect timeout of the lab clients.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// From inside `ns`: connects to `dst`, writes each segment (a short pause between them so
/// they leave as separate segments), then reads until the first reply bytes arrive or `wait`
/// passes. Returns what came back (empty: nothing).
pub fn exchange(
    ns: &Netns,
    dst: SocketAddr,
    segments: &[Vec<u8>],
    wait: Duration,
) -> Result<Exchange> {
    let s = in_netns(ns.name(), || {
        TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)
    })?
    .with_context(|| format!("TCP connect to {dst}"))?;
    exchange_on(s, segments, wait)
}

/// [`exchange`] on a connected stream.
pub fn exchange_on(mut s: TcpStream, segments: &[Vec<u8>], wait: Duration) -> Result<Exchange> {
    let local = canonical(s.local_addr()?);
    let remote = canonical(s.peer_addr()?);
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut sent = 0;
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            thread::sleep(Duration::from_millis(30));
        }
        s.write_all(seg).context("write")?;
        sent += seg.len();
    }
    let reply = read_some(&mut s, wait);
    Ok(Exchange {
        local,
        remote,
        sent,
        reply,
    })
}

/// Reads until some bytes arrive (and then briefly more), the peer closes, or `wait` passes.
pub fn read_some(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 16_384];
    let mut quiet_after: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = quiet_after.map_or(deadline, |q| q.min(deadline));
        if now >= until {
            return out;
        }
        let _ = s.set_read_timeout(Some((until - now).max(Duration::from_millis(1))));
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                quiet_after.get_or_insert(Instant::now() + Duration::from_millis(100));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return out,
        }
    }
}

/// The outcome of an HTTP download.
#[derive(Clone, Debug)]
pub struct Download {
    pub local: SocketAddr,
    pub status_line: String,
    pub body: Vec<u8>,
    /// The Content-Length header.
    pub content_length: Option<usize>,
}

impl Download {
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }
}

/// From inside `ns`: `GET /` from `dst` with Host `host`, reading the whole response (at
/// most `limit`).
pub fn http_download(ns: &Netns, dst: SocketAddr, host: &str, limit: Duration) -> Result<Download> {
    let mut s = in_netns(ns.name(), || {
        TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)
    })?
    .with_context(|| format!("TCP connect to {dst}"))?;
    let local = canonical(s.local_addr()?);
    s.write_all(&protocols::http_get(host, "/lab.bin"))?;
    let deadline = Instant::now() + limit;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut expected_total: Option<usize> = None;
    loop {
        if expected_total.is_some_and(|t| data.len() >= t) {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "HTTP download from {dst}: {} bytes after {limit:?}",
                data.len()
            );
        }
        s.set_read_timeout(Some(deadline - now))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("HTTP download read"),
        }
        if expected_total.is_none() {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let cl = content_length(&head);
                expected_total = Some(end + 4 + cl.unwrap_or(usize::MAX - end - 4));
            }
        }
    }
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "HTTP download from {dst}: no response header in {} bytes",
            data.len()
        );
    };
    let head = String::from_utf8_lossy(&data[..end]).to_string();
    Ok(Download {
        local,
        status_line: head.lines().next().unwrap_or("").to_string(),
        content_length: content_length(&head),
        body: data[end + 4..].to_vec(),
    })
}

fn content_length(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// A UDP server that counts datagrams and bytes per peer (and answers nothing).
#[derive(Debug)]
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<HashMap<SocketAddr, (usize, usize)>>>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    pub fn start(ns: &Netns, port: u16) -> Result<Self> {
        let sock = in_netns(ns.name(), || UdpSocket::bind(("::", port)))?
            .with_context(|| format!("bind udp [::]:{port}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<HashMap<SocketAddr, (usize, usize)>>> = Arc::default();
        let (stop2, log2) = (Arc::clone(&stop), Arc::clone(&log));
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIMIT;
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    if let Ok(mut m) = log2.lock() {
                        let e = m.entry(canonical(peer)).or_default();
                        e.0 += 1;
                        e.1 += n;
                    }
                }
            }
        });
        Ok(UdpSink {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// (datagrams, bytes) received from `peer`.
    pub fn received_from(&self, peer: SocketAddr) -> (usize, usize) {
        self.log
            .lock()
            .ok()
            .and_then(|m| m.get(&canonical(peer)).copied())
            .unwrap_or_default()
    }

    /// (datagrams, bytes) received from anyone.
    pub fn total(&self) -> (usize, usize) {
        self.log
            .lock()
            .map(|m| m.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1)))
            .unwrap_or_default()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From inside `ns`: sends each payload as one datagram from one socket to `dst`, 2 ms
/// apart. Returns the socket's local address.
pub fn udp_send(ns: &Netns, dst: SocketAddr, payloads: &[Vec<u8>]) -> Result<SocketAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = in_netns(ns.name(), || UdpSocket::bind(bind))??;
    sock.connect(dst)?;
    for p in payloads {
        sock.send(p).context("udp send")?;
        thread::sleep(Duration::from_millis(2));
    }
    Ok(canonical(sock.local_addr()?))
}
