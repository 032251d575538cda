//! Runs many client exchanges through the gateway at once and judges each against what the
//! policy should do: shared by the end-to-end tests and the demo.
use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use crate::{
    lab::Lab,
    netns::Netns,
    protocols::Opener,
    servers::{self, TcpServer},
};

/// One client connection: what it sends, and where.
#[derive(Clone, Debug)]
pub struct Case {
    /// The app the bytes belong to, `None` for non-IM traffic.
    pub app: Option<&'static str>,
    pub label: String,
    pub dst: SocketAddr,
    pub segments: Vec<Vec<u8>>,
    /// Bytes that may reach the server even when the flow is blocked (a preamble sent
    /// alone, before anything identifies the app).
    pub preamble_len: usize,
}

impl Case {
    /// `opener` sent to the lab server on `port`, over IPv6 when `v6`.
    pub fn from_opener(o: &Opener, port: u16, v6: bool) -> Case {
        Case {
            app: Some(o.app),
            label: o.label.clone(),
            dst: SocketAddr::new(Lab::server_ip(v6), port),
            segments: o.segments.clone(),
            preamble_len: o.preamble_len,
        }
    }

    /// Non-IM bytes to the lab server.
    pub fn other(label: &str, bytes: Vec<u8>, port: u16, v6: bool) -> Case {
        Case {
            app: None,
            label: label.to_string(),
            dst: SocketAddr::new(Lab::server_ip(v6), port),
            segments: vec![bytes],
            preamble_len: 0,
        }
    }

    pub fn sent_len(&self) -> usize {
        self.segments.iter().map(Vec::len).sum()
    }

    /// `label port N IPv4|IPv6`, for messages and tables.
    pub fn describe(&self) -> String {
        let fam = if matches!(self.dst.ip(), IpAddr::V6(_)) {
            "IPv6"
        } else {
            "IPv4"
        };
        format!(
            "{} ({}) port {} {fam}",
            self.label,
            self.app.unwrap_or("not IM"),
            self.dst.port()
        )
    }
}

/// What happened to a [`Case`].
#[derive(Clone, Debug)]
pub struct Observed {
    pub case: Case,
    /// The client's address (`None` when it could not connect).
    pub local: Option<SocketAddr>,
    /// Bytes of reply the client got within the wait.
    pub reply_len: usize,
    /// Bytes the server received on this connection (`None`: never accepted).
    pub server_got: Option<usize>,
    /// Connect or write error.
    pub error: Option<String>,
}

impl Observed {
    /// Whether the exchange went through: a reply came back and the server got every byte.
    pub fn delivered(&self) -> bool {
        self.error.is_none() && self.reply_len > 0 && self.server_got == Some(self.case.sent_len())
    }

    /// Whether it was blocked: connected (the handshake is never blocked), no reply, and the
    /// server got at most the preamble.
    pub fn blocked(&self) -> bool {
        self.error.is_none()
            && self.reply_len == 0
            && self.server_got.unwrap_or(0) <= self.case.preamble_len
    }

    /// One word for tables.
    pub fn word(&self) -> &'static str {
        if self.error.is_some() {
            "error"
        } else if self.delivered() {
            "delivered"
        } else if self.blocked() {
            "blocked"
        } else {
            "partial"
        }
    }

    fn detail(&self) -> String {
        match &self.error {
            Some(e) => format!("{}: {e}", self.case.describe()),
            None => format!(
                "{}: sent {} bytes, server received {}, client got {} reply bytes",
                self.case.describe(),
                self.case.sent_len(),
                self.server_got
                    .map_or("nothing (never accepted)".to_string(), |n| n.to_string()),
                self.reply_len
            ),
        }
    }

    /// `None` when blocked as it should be, else what went wrong.
    pub fn problem_if_should_block(&self) -> Option<String> {
        (!self.blocked()).then(|| format!("should be blocked: {}", self.detail()))
    }

    /// `None` when delivered as it should be, else what went wrong.
    pub fn problem_if_should_pass(&self) -> Option<String> {
        (!self.delivered()).then(|| format!("should be delivered: {}", self.detail()))
    }
}

/// Runs every case at once from `client` (one thread each), waiting at most `wait` for each
/// reply, then reads what the server received.
pub fn run_cases(
    client: &Netns,
    server: &TcpServer,
    cases: Vec<Case>,
    wait: Duration,
) -> Vec<Observed> {
    let results: Vec<(Case, Result<servers::Exchange, String>)> = thread::scope(|s| {
        let handles: Vec<_> = cases
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let r = servers::exchange(client, c.dst, &c.segments, wait)
                        .map_err(|e| format!("{e:#}"));
                    (c, r)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    // Let the server's connection threads record what is already in their sockets.
    thread::sleep(Duration::from_millis(200));
    results
        .into_iter()
        .map(|(case, r)| match r {
            Ok(x) => Observed {
                server_got: server.received(&x).map(|c| c.total),
                local: Some(x.local),
                reply_len: x.reply.len(),
                error: None,
                case,
            },
            Err(e) => Observed {
                case,
                local: None,
                reply_len: 0,
                server_got: None,
                error: Some(e),
            },
        })
        .collect()
}
