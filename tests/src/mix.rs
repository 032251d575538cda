//! A realistic gateway traffic mix, deterministic from a seed: the frames the throughput
//! benches inject into a veth (`cargo xtask bench`, scenario 2) and run through the data plane
//! and a reference classifier (scenario 5).
//!
//! What a gateway sees, in the proportions measurement studies report:
//! - many concurrent flows whose packets interleave in arrival order;
//! - heavy-tailed flow sizes: most web flows carry a few kilobytes (a handful to tens of
//!   packets), a few carry megabytes (bounded Pareto, shape 1.1);
//! - TCP with the whole life of a connection: SYN / SYN-ACK / ACK (with the usual SYN
//!   options), the client's opening, full-size data segments (1514-byte frames) answered by
//!   delayed ACKs (one per two segments), FIN in both directions;
//! - UDP: DNS queries and answers, QUIC-like long-header Initials (padded to 1200 bytes, as
//!   RFC 9000 §14.1 requires) followed by short-header datagrams, STUN then media;
//! - about a fifth of the flows over IPv6;
//! - `im_share` of the flows are IM: openings as the apps send them (TLS `ClientHello`s with
//!   IM server names, the `WhatsApp` Noise prologue, `MTProto` transports, XMPP, IRC, MQTT,
//!   an HTTP CONNECT to an IM host, STUN with IM attributes), then chat-sized messages in both
//!   directions and now and then a media download; the rest is web (`ClientHello`s with other
//!   names, HTTP GETs), DNS, QUIC-like and opaque payloads.
//!
//! Hosts are in documentation ranges: clients in 192.0.2.0/24 and 2001:db8:1::/64, servers in
//! 198.51.100.0/24, 203.0.113.0/24 and 2001:db8:2::/64. Every frame has valid checksums (built
//! by [`crate::packets`]); every flow has its own 5-tuple.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "statistical draws and arrival times: counts far below 2^52, non-negative by construction"
)]

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::{
    packets::{
        tcp_flags::{ACK, FIN, PSH, SYN},
        Ethernet, Ipv4, Ipv6, Tcp, Udp, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP,
        MAC_CLIENT, MAC_GW,
    },
    protocols::{
        http_connect, http_get, irc_registration, irc_server_reply, mqtt_connack, mqtt_connect,
        telegram_start, tls_server_hello, whatsapp_handshake, whatsapp_server_hello,
        xmpp_server_reply, xmpp_stream_header, ClientHello, ExtOrder, MtprotoTransport, WaPrologue,
        WaStart, HTTP_CONNECT_OK,
    },
    util::Rng,
};

/// What to build.
#[derive(Clone, Debug)]
pub struct MixConfig {
    /// Number of flows (each its own 5-tuple).
    pub flows: usize,
    /// Share of the flows that are IM (0.0 to 1.0); `round(flows * im_share)` of them.
    pub im_share: f64,
    /// Everything follows from it: the same seed gives the same frames.
    pub seed: u64,
}

/// The frames of a mix and what they hold.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Ethernet frames in arrival order, the flows interleaved.
    pub frames: Vec<Vec<u8>>,
    pub flows: usize,
    pub im_flows: usize,
    /// Sum of the frames' lengths.
    pub bytes: u64,
    /// Every flow's endpoints and whether it is IM: the truth a classifier is scored on.
    pub truth: Vec<FlowTruth>,
}

/// One flow of a mix: its endpoints and whether it is IM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTruth {
    pub client: IpAddr,
    pub cport: u16,
    pub server: IpAddr,
    pub sport: u16,
    pub tcp: bool,
    pub im: bool,
}

/// Server MAC (the far side of the gateway; locally administered).
const MAC_SERVER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// Largest TCP payload in one 1500-byte packet without TCP options.
const MSS4: usize = 1500 - 20 - 20;
const MSS6: usize = 1500 - 40 - 20;
/// Largest UDP payload of a QUIC-like datagram (a typical QUIC max datagram size).
const QUIC_DATAGRAM: usize = 1350;
/// A bounded Pareto's upper bound on a flow's download (20 MB).
const MAX_DOWNLOAD: f64 = 20e6;

/// Server names of web traffic: none is in an IM app's domains.
const WEB_NAMES: &[&str] = &[
    "www.example.com",
    "cdn.example.net",
    "static.example.org",
    "api.example.com",
    "images.example.net",
    "video.example.org",
    "news.example.com",
    "www.wikipedia.org",
    "www.debian.org",
    "www.kernel.org",
    "fonts.example.net",
    "shop.example.com",
];

/// TLS server names of IM apps (in imfw's catalogue and known to common classifiers).
const IM_NAMES: &[&str] = &[
    "web.whatsapp.com",
    "mmg.whatsapp.net",
    "web.telegram.org",
    "chat.signal.org",
    "gateway.discord.gg",
    "app.slack.com",
    "teams.microsoft.com",
    "zoom.us",
    "edge-chat.messenger.com",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    TlsWeb,
    HttpWeb,
    OpaqueTcp,
    Dns,
    Quic,
    ImTls,
    ImOpener,
    ImStun,
}

impl Kind {
    fn is_im(self) -> bool {
        matches!(self, Kind::ImTls | Kind::ImOpener | Kind::ImStun)
    }
}

/// Non-IM kinds and their weights (shares of web traffic: TLS dominates, then DNS and QUIC).
const WEB_KINDS: &[(Kind, u32)] = &[
    (Kind::TlsWeb, 50),
    (Kind::Dns, 18),
    (Kind::Quic, 12),
    (Kind::HttpWeb, 10),
    (Kind::OpaqueTcp, 10),
];
const IM_KINDS: &[(Kind, u32)] = &[(Kind::ImTls, 50), (Kind::ImOpener, 40), (Kind::ImStun, 10)];

/// A packet's payload: bytes fixed by the protocol, or this many opaque (encrypted-looking)
/// bytes drawn when the frame is built.
#[derive(Clone, Debug)]
enum Body {
    Script(Vec<u8>),
    Opaque(usize),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Script(b) => b.len(),
            Body::Opaque(n) => *n,
        }
    }
}

#[derive(Clone, Debug)]
struct Pkt {
    from_client: bool,
    /// TCP flags, seq, ack and whether to put SYN options; unused for UDP.
    flags: u8,
    seq: u32,
    ack: u32,
    body: Body,
}

/// One flow: its 5-tuple and its packets in order.
struct Flow {
    client: IpAddr,
    cport: u16,
    server: IpAddr,
    sport: u16,
    tcp: bool,
    pkts: Vec<Pkt>,
}

impl Flow {
    fn frame(&self, p: &Pkt, rng: &mut Rng) -> Vec<u8> {
        let payload = match &p.body {
            Body::Script(b) => b.clone(),
            Body::Opaque(n) => rng.bytes(*n),
        };
        let (src, sport, dst, dport) = if p.from_client {
            (self.client, self.cport, self.server, self.sport)
        } else {
            (self.server, self.sport, self.client, self.cport)
        };
        let l4 = if self.tcp {
            let mut t = Tcp::new(sport, dport, p.flags);
            t.seq = p.seq;
            t.ack = p.ack;
            if p.flags & SYN != 0 {
                t.options = Tcp::syn_options();
            }
            t.encode(src, dst, &payload)
        } else {
            Udp { sport, dport }.encode(src, dst, &payload)
        };
        let proto = if self.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        let eth = if p.from_client {
            Ethernet {
                dst: MAC_GW,
                src: MAC_CLIENT,
                vlans: Vec::new(),
            }
        } else {
            Ethernet {
                dst: MAC_CLIENT,
                src: MAC_SERVER,
                vlans: Vec::new(),
            }
        };
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4::new(s, d, proto);
                ip.id = rng.next_u64() as u16;
                eth.encode(ETH_P_IPV4, &ip.encode(&l4))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ip = Ipv6::new(s, d, proto);
                ip.flow_label = u32::from(self.cport) ^ u32::from(self.sport);
                eth.encode(ETH_P_IPV6, &ip.encode(&l4))
            }
            _ => unreachable!("a flow's addresses share a family"),
        }
    }
}

/// Builds the packets of a TCP connection with consistent sequence numbers.
struct TcpConv {
    pkts: Vec<Pkt>,
    mss: usize,
    cseq: u32,
    sseq: u32,
    /// Data segments received by each side since it last acknowledged (client, server).
    unacked: [u32; 2],
}

impl TcpConv {
    fn new(rng: &mut Rng, v6: bool) -> Self {
        let mut c = TcpConv {
            pkts: Vec::new(),
            mss: if v6 { MSS6 } else { MSS4 },
            cseq: rng.next_u64() as u32,
            sseq: rng.next_u64() as u32,
            unacked: [0, 0],
        };
        c.push(true, SYN, Body::Opaque(0));
        c.cseq = c.cseq.wrapping_add(1);
        let ack = c.cseq;
        c.pkts.push(Pkt {
            from_client: false,
            flags: SYN | ACK,
            seq: c.sseq,
            ack,
            body: Body::Opaque(0),
        });
        c.sseq = c.sseq.wrapping_add(1);
        c.push(true, ACK, Body::Opaque(0));
        c
    }

    fn push(&mut self, from_client: bool, flags: u8, body: Body) {
        let (seq, ack) = if from_client {
            (self.cseq, self.sseq)
        } else {
            (self.sseq, self.cseq)
        };
        let len = body.len() as u32;
        self.pkts.push(Pkt {
            from_client,
            flags,
            seq,
            ack: if flags & ACK != 0 { ack } else { 0 },
            body,
        });
        if from_client {
            self.cseq = self.cseq.wrapping_add(len);
        } else {
            self.sseq = self.sseq.wrapping_add(len);
        }
    }

    /// The receiver of a data segment acknowledges every second one (delayed ACK,
    /// RFC 9293 §3.8.6.3) and at the end of a message.
    fn data_segment(&mut self, from_client: bool, body: Body, last: bool) {
        let flags = if last { PSH | ACK } else { ACK };
        self.push(from_client, flags, body);
        let receiver = usize::from(from_client); // 1: the server receives
        self.unacked[receiver] += 1;
        if self.unacked[receiver] >= 2 || last {
            self.unacked[receiver] = 0;
            self.push(!from_client, ACK, Body::Opaque(0));
        }
    }

    /// A message of protocol bytes, as segments the sender wrote (each cut at the MSS).
    fn script(&mut self, from_client: bool, segments: &[Vec<u8>]) {
        for (i, seg) in segments.iter().enumerate() {
            let chunks: Vec<&[u8]> = seg.chunks(self.mss).collect();
            for (j, c) in chunks.iter().enumerate() {
                let last = i + 1 == segments.len() && j + 1 == chunks.len();
                self.data_segment(from_client, Body::Script(c.to_vec()), last);
            }
        }
    }

    /// `len` opaque bytes (TLS application data, media) in full-size segments.
    fn opaque(&mut self, from_client: bool, len: usize) {
        let mut left = len.max(1);
        while left > 0 {
            let n = left.min(self.mss);
            left -= n;
            self.data_segment(from_client, Body::Opaque(n), left == 0);
        }
    }

    /// The client closes: FIN, the server's FIN, the last ACK.
    fn close(mut self) -> Vec<Pkt> {
        self.push(true, FIN | ACK, Body::Opaque(0));
        self.cseq = self.cseq.wrapping_add(1);
        self.push(false, FIN | ACK, Body::Opaque(0));
        self.sseq = self.sseq.wrapping_add(1);
        self.push(true, ACK, Body::Opaque(0));
        self.pkts
    }
}

fn unit(rng: &mut Rng) -> f64 {
    // 53 random bits in (0, 1].
    ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// A bounded Pareto draw (shape `alpha`, minimum `min`, at most `max`): flow sizes on the
/// Internet are heavy-tailed, most small and a few carrying most bytes.
fn pareto(rng: &mut Rng, alpha: f64, min: f64, max: f64) -> usize {
    (min / unit(rng).powf(1.0 / alpha)).min(max) as usize
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn pick_weighted(rng: &mut Rng, items: &[(Kind, u32)]) -> Kind {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut r = (rng.next_u64() % u64::from(total)) as u32;
    for &(k, w) in items {
        if r < w {
            return k;
        }
        r -= w;
    }
    items[0].0
}

/// A web response: a heavy-tailed size (median a few kB, mean tens of kB).
fn web_response(rng: &mut Rng) -> usize {
    pareto(rng, 1.1, 2_500.0, MAX_DOWNLOAD)
}

fn client_hello(rng: &mut Rng, name: &str) -> Vec<u8> {
    let mut ch = ClientHello::new(name);
    ch.seed = rng.next_u64();
    // Browsers shuffle extensions (Chrome) and, since 2024, many send a post-quantum share.
    if rng.range(0, 2) == 0 {
        ch.order = ExtOrder::Shuffled(rng.next_u64());
    }
    ch.post_quantum = rng.range(0, 3) == 0;
    ch.build()
}

/// The server's first flight of a TLS 1.3 handshake: `ServerHello` and the encrypted rest
/// (certificates, verify, finished) as opaque bytes.
fn tls_handshake(c: &mut TcpConv, rng: &mut Rng, hello: Vec<u8>) {
    c.script(true, &[hello]);
    c.script(false, &[tls_server_hello(rng)]);
    c.opaque(false, rng.range(2_000, 4_500) as usize);
    c.opaque(true, rng.range(64, 120) as usize); // client Finished
}

/// Request/response rounds of a web connection: one mostly, several for kept-alive ones.
fn web_rounds(c: &mut TcpConv, rng: &mut Rng) {
    let rounds = if rng.range(0, 4) == 0 {
        rng.range(2, 8)
    } else {
        1
    };
    for _ in 0..rounds {
        c.opaque(true, rng.range(80, 700) as usize);
        c.opaque(false, web_response(rng));
    }
}

/// An IM session after its opening: chat messages both ways, now and then a media file.
fn im_session(c: &mut TcpConv, rng: &mut Rng) {
    let messages = pareto(rng, 1.3, 2.0, 400.0);
    for _ in 0..messages {
        let from_client = rng.range(0, 2) == 0;
        c.opaque(from_client, rng.range(40, 700) as usize);
    }
    if rng.range(0, 8) == 0 {
        c.opaque(false, pareto(rng, 1.1, 30_000.0, MAX_DOWNLOAD));
    }
}

fn tcp_flow(kind: Kind, rng: &mut Rng, v6: bool) -> (u16, Vec<Pkt>) {
    let mut c = TcpConv::new(rng, v6);
    let port = match kind {
        Kind::TlsWeb => {
            let name = pick(rng, WEB_NAMES);
            let hello = client_hello(rng, name);
            tls_handshake(&mut c, rng, hello);
            web_rounds(&mut c, rng);
            443
        }
        Kind::HttpWeb => {
            let host = pick(rng, WEB_NAMES);
            let path = format!("/assets/{:x}.js", rng.next_u64() & 0xff_ffff);
            c.script(true, &[http_get(host, &path)]);
            let size = web_response(rng);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nCache-Control: max-age=3600\r\n\r\n"
            );
            c.script(false, &[head.into_bytes()]);
            c.opaque(false, size);
            80
        }
        Kind::OpaqueTcp => {
            c.opaque(true, rng.range(100, 1_500) as usize);
            c.opaque(false, web_response(rng));
            pick(rng, &[8443u16, 9000, 4443, 7000, 50_443])
        }
        Kind::ImTls => {
            let name = pick(rng, IM_NAMES);
            let hello = client_hello(rng, name);
            tls_handshake(&mut c, rng, hello);
            im_session(&mut c, rng);
            443
        }
        Kind::ImOpener => {
            let port = im_opener(&mut c, rng);
            im_session(&mut c, rng);
            port
        }
        Kind::Dns | Kind::Quic | Kind::ImStun => unreachable!("UDP kinds"),
    };
    (port, c.close())
}

/// One of the non-TLS IM openings and the server's answer; returns the server port.
fn im_opener(c: &mut TcpConv, rng: &mut Rng) -> u16 {
    match rng.range(0, 9) {
        0 => {
            c.script(true, &[xmpp_stream_header("example.net")]);
            c.script(false, &[xmpp_server_reply("example.net")]);
            5222
        }
        1 => {
            let nick = format!("user{}", rng.range(1, 100_000));
            c.script(true, &[irc_registration(&nick)]);
            c.script(false, &[irc_server_reply(&nick)]);
            6667
        }
        2 | 3 => {
            let version = if rng.range(0, 2) == 0 { 4 } else { 5 };
            let id = format!("sensor-{}", rng.range(1, 100_000));
            c.script(true, &[mqtt_connect(version, &id)]);
            c.script(false, &[mqtt_connack(version)]);
            1883
        }
        4 | 5 => {
            let (prologue, start) = match rng.range(0, 3) {
                0 => (WaPrologue::V5_2, WaStart::EdgeRoutingSplit),
                1 => (WaPrologue::V5_2, WaStart::EdgeRouting),
                _ => (WaPrologue::V6_3, WaStart::Plain),
            };
            let segs = whatsapp_handshake(prologue, start, rng);
            c.script(true, &segs);
            c.script(false, &[whatsapp_server_hello(rng)]);
            5222
        }
        6 | 7 => {
            let transport = match rng.range(0, 3) {
                0 => MtprotoTransport::Abridged,
                1 => MtprotoTransport::Intermediate,
                _ => MtprotoTransport::PaddedIntermediate,
            };
            c.script(true, &[telegram_start(transport, rng)]);
            c.opaque(false, 84); // resPQ
            443
        }
        _ => {
            c.script(true, &[http_connect("web.whatsapp.com", 443)]);
            c.script(false, &[HTTP_CONNECT_OK.to_vec()]);
            let hello = client_hello(rng, "web.whatsapp.com");
            tls_handshake(c, rng, hello);
            8080
        }
    }
}

/// A DNS query (RFC 1035 §4.1) for `name`, type A or AAAA, and its answer with one record.
fn dns_exchange(rng: &mut Rng, name: &str, v6: bool) -> (Vec<u8>, Vec<u8>) {
    let id = rng.next_u64() as u16;
    let qtype: u16 = if v6 { 28 } else { 1 };
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]); // RD; 1 question; 1 additional
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    let question_end = q.len();
    // EDNS(0) OPT record (RFC 6891): 1232-byte UDP payload.
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut a = q[..question_end].to_vec();
    a[2..12].copy_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]); // response, RA, 1 answer
    a.extend_from_slice(&[0xc0, 0x0c]); // name: pointer to the question
    a.extend_from_slice(&qtype.to_be_bytes());
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&300u32.to_be_bytes());
    if v6 {
        a.extend_from_slice(&16u16.to_be_bytes());
        a.extend_from_slice(
            &Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, rng.range(1, 0xffff) as u16).octets(),
        );
    } else {
        a.extend_from_slice(&4u16.to_be_bytes());
        a.extend_from_slice(&[198, 51, 100, rng.range(1, 255) as u8]);
    }
    (q, a)
}

/// A QUIC-like long-header Initial (RFC 9000 §17.2.2): the header in the clear, the
/// protected payload as opaque bytes, padded to `len`.
fn quic_initial(rng: &mut Rng, dcid: &[u8], scid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0xc3]; // long header, fixed bit, Initial, 4-byte packet number
    p.extend_from_slice(&1u32.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(0); // no token
    let rest = len - p.len() - 2;
    p.extend_from_slice(&(0x4000u16 | rest as u16).to_be_bytes()); // 2-byte varint length
    p.extend_from_slice(&rng.bytes(rest));
    p
}

/// A short-header (1-RTT) QUIC-like datagram (RFC 9000 §17.3).
fn quic_short(rng: &mut Rng, dcid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0x43];
    p.extend_from_slice(dcid);
    let rest = len.saturating_sub(p.len()).max(20);
    p.extend_from_slice(&rng.bytes(rest));
    p
}

/// A STUN Binding Request (RFC 8489 §5) carrying `attrs` (type, value), and its success
/// response with an XOR-MAPPED-ADDRESS.
fn stun_exchange(rng: &mut Rng, attrs: &[(u16, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let txid = rng.bytes(12);
    let message = |ty: u16, attrs: &[(u16, Vec<u8>)]| {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = ty.to_be_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
        m.extend_from_slice(&txid);
        m.extend_from_slice(&body);
        m
    };
    let req = message(0x0001, attrs);
    let mut xor = vec![0, 1];
    xor.extend_from_slice(&(rng.range(1024, 65535) as u16 ^ 0x2112).to_be_bytes());
    xor.extend_from_slice(&rng.bytes(4));
    let resp = message(0x0101, &[(0x0020, xor), (0x8022, b"imfw-mix".to_vec())]);
    (req, resp)
}

fn udp_flow(kind: Kind, rng: &mut Rng, v6: bool) -> (u16, Vec<Pkt>) {
    let dgram = |from_client: bool, body: Vec<u8>| Pkt {
        from_client,
        flags: 0,
        seq: 0,
        ack: 0,
        body: Body::Script(body),
    };
    let opaque = |from_client: bool, n: usize| Pkt {
        from_client,
        flags: 0,
        seq: 0,
        ack: 0,
        body: Body::Opaque(n),
    };
    let mut pkts = Vec::new();
    let port = match kind {
        Kind::Dns => {
            let name = pick(rng, WEB_NAMES);
            let (q, a) = dns_exchange(rng, name, v6);
            pkts.push(dgram(true, q));
            pkts.push(dgram(false, a));
            53
        }
        Kind::Quic => {
            let (dcid, scid) = (rng.bytes(8), rng.bytes(8));
            pkts.push(dgram(true, quic_initial(rng, &dcid, &scid, 1200)));
            // Server Initial + Handshake, coalesced, in two datagrams; the client's answer.
            pkts.push(dgram(false, quic_initial(rng, &scid, &dcid, 1200)));
            pkts.push(dgram(false, quic_short(rng, &scid, 1100)));
            pkts.push(dgram(true, quic_initial(rng, &dcid, &scid, 1200)));
            let mut left = web_response(rng);
            let mut since_ack = 0;
            pkts.push(dgram(true, {
                let len = rng.range(60, 400) as usize;
                quic_short(rng, &dcid, len)
            }));
            while left > 0 {
                let n = left.min(QUIC_DATAGRAM);
                left -= n;
                pkts.push(dgram(false, quic_short(rng, &scid, n)));
                since_ack += 1;
                if since_ack == 2 || left == 0 {
                    since_ack = 0;
                    pkts.push(dgram(true, quic_short(rng, &dcid, 40)));
                }
            }
            443
        }
        Kind::ImStun => {
            // WhatsApp's calls (attributes 0x4000-0x4007) or Teams' ([MS-TURN] MS-Version).
            let attrs = if rng.range(0, 2) == 0 {
                vec![(0x4000, rng.bytes(4)), (0x4003, rng.bytes(8))]
            } else {
                vec![
                    (0x8008, 6u32.to_be_bytes().to_vec()),
                    (0x8022, b"Teams".to_vec()),
                ]
            };
            for _ in 0..rng.range(1, 4) {
                let (req, resp) = stun_exchange(rng, &attrs);
                pkts.push(dgram(true, req));
                pkts.push(dgram(false, resp));
            }
            // Then the call's media: small RTP-sized datagrams both ways.
            for _ in 0..pareto(rng, 1.2, 20.0, 20_000.0) {
                pkts.push(opaque(rng.range(0, 2) == 0, rng.range(120, 1_000) as usize));
            }
            3478
        }
        _ => unreachable!("TCP kinds"),
    };
    (port, pkts)
}

/// Server `n` in the documentation ranges.
fn server_addr(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            2,
            0,
            0,
            0,
            0,
            rng.range(1, 0xffff) as u16,
        ))
    } else {
        let net = if rng.range(0, 2) == 0 { 100 } else { 113 };
        let first = if net == 100 { 198 } else { 203 };
        let second = if net == 100 { 51 } else { 0 };
        IpAddr::V4(Ipv4Addr::new(first, second, net, rng.range(1, 255) as u8))
    }
}

/// Client of flow `i`: 250 hosts, each with its own run of ephemeral ports, so that no two
/// flows share a 5-tuple (up to 7 million flows).
fn client_of(i: usize, v6: bool) -> (IpAddr, u16) {
    let host = (i % 250) as u8 + 2;
    let port = 32_768 + ((i / 250) % 28_000) as u16;
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, host))
    };
    (addr, port)
}

/// Builds the mix: each flow's packets, then one arrival order for all of them.
pub fn build(cfg: &MixConfig) -> Mix {
    let mut rng = Rng::new(cfg.seed);
    let share = if cfg.im_share.is_finite() {
        cfg.im_share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let im_flows = ((cfg.flows as f64) * share).round() as usize;
    // Which flows are IM: an exact count, spread by a shuffle.
    let mut is_im: Vec<bool> = (0..cfg.flows).map(|i| i < im_flows).collect();
    for i in (1..is_im.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        is_im.swap(i, j);
    }

    let mut flows = Vec::with_capacity(cfg.flows);
    for (i, im) in is_im.iter().enumerate() {
        let kind = pick_weighted(&mut rng, if *im { IM_KINDS } else { WEB_KINDS });
        debug_assert_eq!(kind.is_im(), *im);
        let v6 = rng.range(0, 5) == 0;
        let (client, cport) = client_of(i, v6);
        let server = server_addr(&mut rng, v6);
        let tcp = !matches!(kind, Kind::Dns | Kind::Quic | Kind::ImStun);
        let (sport, pkts) = if tcp {
            tcp_flow(kind, &mut rng, v6)
        } else {
            udp_flow(kind, &mut rng, v6)
        };
        flows.push(Flow {
            client,
            cport,
            server,
            sport,
            tcp,
            pkts,
        });
    }

    // Arrival order: each flow starts at a random time and spreads its packets evenly over a
    // duration that grows with its length, so that at any moment a few thousand flows are in
    // progress (about a tenth of them) and long downloads run alongside many short ones.
    let total: usize = flows.iter().map(|f| f.pkts.len()).sum();
    let concurrency = (cfg.flows as f64 / 10.0).clamp(1.0, 5_000.0);
    let step = concurrency / total.max(1) as f64;
    let mut order: Vec<(f64, u32, u32)> = Vec::with_capacity(total);
    for (fi, f) in flows.iter().enumerate() {
        let n = f.pkts.len() as f64;
        let duration = (n * step * (0.5 + unit(&mut rng))).min(0.95);
        let start = unit(&mut rng) * (1.0 - duration);
        let gap = duration / n;
        for pi in 0..f.pkts.len() {
            order.push((start + gap * pi as f64, fi as u32, pi as u32));
        }
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    let mut frames = Vec::with_capacity(total);
    let mut bytes = 0u64;
    for (_, fi, pi) in order {
        let f = &flows[fi as usize];
        let frame = f.frame(&f.pkts[pi as usize], &mut rng);
        bytes += frame.len() as u64;
        frames.push(frame);
    }
    let truth = flows
        .iter()
        .zip(is_im)
        .map(|(f, im)| FlowTruth {
            client: f.client,
            cport: f.cport,
            server: f.server,
            sport: f.sport,
            tcp: f.tcp,
            im,
        })
        .collect();
    Mix {
        frames,
        flows: cfg.flows,
        im_flows,
        bytes,
        truth,
    }
}

/// Writes `frames` as a classic pcap file (Ethernet link type, microsecond timestamps), one
/// every 10 µs from a fixed start so that the file is the same for the same frames.
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    const START_SECS: u64 = 1_700_000_000;
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&0i32.to_le_bytes())?; // thiszone
    w.write_all(&0u32.to_le_bytes())?; // sigfigs
    w.write_all(&65_535u32.to_le_bytes())?; // snaplen
    w.write_all(&1u32.to_le_bytes())?; // LINKTYPE_ETHERNET
    for (i, f) in frames.iter().enumerate() {
        let usecs = i as u64 * 10;
        let len = u32::try_from(f.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB")
        })?;
        w.write_all(&((START_SECS + usecs / 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&((usecs % 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(f)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::packets::{checksum, offsets};

    fn cfg(seed: u64) -> MixConfig {
        MixConfig {
            flows: 400,
            im_share: 0.2,
            seed,
        }
    }

    /// The 5-tuple of a frame, the same for both directions.
    fn tuple(f: &[u8]) -> (Vec<u8>, u8) {
        let o = offsets(f).unwrap();
        let (a, b) = if f[o.l3] >> 4 == 4 {
            (&f[o.l3 + 12..o.l3 + 16], &f[o.l3 + 16..o.l3 + 20])
        } else {
            (&f[o.l3 + 8..o.l3 + 24], &f[o.l3 + 24..o.l3 + 40])
        };
        let mut ends = [
            [a, &f[o.l4..o.l4 + 2]].concat(),
            [b, &f[o.l4 + 2..o.l4 + 4]].concat(),
        ];
        ends.sort();
        (ends.concat(), o.protocol)
    }

    /// A flow of the truth in [`tuple`]'s form.
    fn truth_tuple(t: &FlowTruth) -> (Vec<u8>, u8) {
        let bytes = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut ends = [
            [bytes(t.client), t.cport.to_be_bytes().to_vec()].concat(),
            [bytes(t.server), t.sport.to_be_bytes().to_vec()].concat(),
        ];
        ends.sort();
        (ends.concat(), if t.tcp { IPPROTO_TCP } else { IPPROTO_UDP })
    }

    #[test]
    fn deterministic_from_the_seed() {
        let a = build(&cfg(7));
        let b = build(&cfg(7));
        assert_eq!(a.frames, b.frames);
        let c = build(&cfg(8));
        assert_ne!(a.frames, c.frames);
    }

    #[test]
    fn counts_are_consistent() {
        let m = build(&cfg(1));
        assert_eq!(m.flows, 400);
        assert_eq!(m.im_flows, 80);
        assert_eq!(
            m.bytes,
            m.frames.iter().map(|f| f.len() as u64).sum::<u64>()
        );
        let tuples: HashSet<_> = m.frames.iter().map(|f| tuple(f)).collect();
        assert_eq!(tuples.len(), 400, "one 5-tuple per flow");
        // The truth names exactly the frames' flows, and as many IM flows.
        assert_eq!(m.truth.iter().filter(|t| t.im).count(), 80);
        let truth: HashSet<_> = m.truth.iter().map(truth_tuple).collect();
        assert_eq!((m.truth.len(), truth), (400, tuples.clone()));
        assert!(m.frames.len() > 400 * 5, "{} frames", m.frames.len());
        assert_eq!(
            build(&MixConfig {
                flows: 0,
                im_share: 0.5,
                seed: 1
            })
            .frames
            .len(),
            0
        );
        assert_eq!(
            build(&MixConfig {
                flows: 10,
                im_share: 1.0,
                seed: 1
            })
            .im_flows,
            10
        );
    }

    #[test]
    fn every_frame_parses_with_valid_checksums_and_sizes() {
        let m = build(&cfg(2));
        let mut v6 = 0;
        let mut full = 0;
        for f in &m.frames {
            let o = offsets(f).expect("Ethernet/IP/TCP|UDP");
            assert!(f.len() <= 1514, "{} bytes", f.len());
            if f.len() == 1514 {
                full += 1;
            }
            if f[o.l3] >> 4 == 4 {
                assert_eq!(checksum(0, &f[o.l3..o.l4]), 0, "IPv4 header checksum");
            } else {
                v6 += 1;
            }
        }
        assert!(v6 > 0 && v6 < m.frames.len(), "some IPv6, mostly IPv4");
        assert!(full > m.frames.len() / 10, "full-size data packets: {full}");
    }

    #[test]
    fn tcp_flows_open_and_close_and_flows_interleave() {
        let m = build(&cfg(3));
        let mut first: HashMap<(Vec<u8>, u8), (usize, u8)> = HashMap::new();
        let mut last: HashMap<(Vec<u8>, u8), usize> = HashMap::new();
        let mut syns = 0;
        let mut fins = 0;
        for (i, f) in m.frames.iter().enumerate() {
            let o = offsets(f).unwrap();
            let flags = if o.protocol == IPPROTO_TCP {
                f[o.l4 + 13]
            } else {
                0
            };
            if flags == SYN {
                syns += 1;
            }
            if flags & FIN != 0 {
                fins += 1;
            }
            first.entry(tuple(f)).or_insert((i, flags));
            last.insert(tuple(f), i);
        }
        for ((_, proto), (_, flags)) in &first {
            if *proto == IPPROTO_TCP {
                assert_eq!(*flags, SYN, "a TCP flow starts with its SYN");
            }
        }
        assert_eq!(syns * 2, fins, "every TCP flow closes both ways");
        // Interleaving: many flows are in progress at the middle of the trace.
        let mid = m.frames.len() / 2;
        let open = first
            .iter()
            .filter(|(k, (s, _))| *s < mid && last[*k] > mid)
            .count();
        assert!(open >= 10, "{open} flows in progress at mid-trace");
    }

    #[test]
    fn im_openings_are_present() {
        let m = build(&MixConfig {
            flows: 300,
            im_share: 1.0,
            seed: 4,
        });
        let has = |needle: &[u8]| {
            m.frames
                .iter()
                .any(|f| f.windows(needle.len()).any(|w| w == needle))
        };
        assert!(has(b"whatsapp"));
        assert!(has(b"MQTT"));
        assert!(has(b"NICK "));
        let web = build(&MixConfig {
            flows: 300,
            im_share: 0.0,
            seed: 4,
        });
        let im_name = IM_NAMES.iter().any(|n| {
            web.frames
                .iter()
                .any(|f| f.windows(n.len()).any(|w| w == n.as_bytes()))
        });
        assert!(!im_name, "no IM name in web-only traffic");
    }

    #[test]
    fn pcap_file_layout() {
        let dir = crate::util::TempDir::new("imfw-mix-test").unwrap();
        let path = dir.path().join("m.pcap");
        let frames = vec![vec![1u8; 60], vec![2u8; 1514]];
        write_pcap(&path, &frames).unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(b.len(), 24 + 16 + 60 + 16 + 1514);
        assert_eq!(&b[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 60);
        assert_eq!(
            u32::from_le_bytes(b[24 + 16 + 60 + 4..][..4].try_into().unwrap()),
            10
        );
    }
}
