//! Protocol openers as their clients put them on the wire, built from the specifications,
//! and the first replies of their servers.
//!
//! Each builder returns the bytes of the client's first flight; [`Opener`] adds how a client
//! splits them into TCP segments and which port it uses, for the lab tests and the demo.
use crate::util::Rng;

/// XMPP client-to-server stream header (RFC 6120 §4.2, example in §9.1.1).
pub fn xmpp_stream_header(domain: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
    .into_bytes()
}

/// The server's response stream header with its features (RFC 6120 §4.2, §4.3.2).
pub fn xmpp_server_reply(domain: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream from='{domain}' id='t7AMCin9zjMNwQKDnplntZPIDEI=' \
         version='1.0' xml:lang='en' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'><stream:features>\
         <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
         </stream:features>"
    )
    .into_bytes()
}

/// IRC connection registration: `IRCv3` capability negotiation (`CAP LS 302`), then `NICK`
/// and `USER` (RFC 2812 §3.1.2, §3.1.3).
pub fn irc_registration(nick: &str) -> Vec<u8> {
    format!(
        "CAP LS 302\r\nNICK {nick}\r\nUSER {nick} 0 * :{}\r\n",
        capitalize(nick)
    )
    .into_bytes()
}

/// The server's answer to `CAP LS` and its welcome (RFC 2812 §5.1, reply 001).
pub fn irc_server_reply(nick: &str) -> Vec<u8> {
    format!(
        ":irc.example.net CAP * LS :multi-prefix sasl\r\n\
         :irc.example.net 001 {nick} :Welcome to the Internet Relay Network {nick}\r\n"
    )
    .into_bytes()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// MQTT's variable byte integer (MQTT 3.1.1 §2.2.3, MQTT 5 §1.5.5).
pub fn mqtt_varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 || out.len() == 4 {
            return out;
        }
    }
}

fn mqtt_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// MQTT CONNECT: fixed header 0x10, remaining length, protocol name `MQTT`, level 4 (3.1.1,
/// §3.1) or 5 (MQTT 5, §3.1, with a properties block), clean session, keep-alive 60 s and
/// the client identifier.
pub fn mqtt_connect(version: u8, client_id: &str) -> Vec<u8> {
    let mut var = mqtt_string("MQTT");
    var.push(version);
    var.push(0x02); // clean session / clean start
    var.extend_from_slice(&60u16.to_be_bytes());
    if version >= 5 {
        // Session Expiry Interval (0x11) 0 and Receive Maximum (0x21) 20.
        let props = [0x11, 0, 0, 0, 0, 0x21, 0, 20];
        var.extend_from_slice(&mqtt_varint(props.len()));
        var.extend_from_slice(&props);
    }
    var.extend_from_slice(&mqtt_string(client_id));
    let mut p = vec![0x10];
    p.extend_from_slice(&mqtt_varint(var.len()));
    p.extend_from_slice(&var);
    p
}

/// CONNACK accepting the session (3.1.1 §3.2: `20 02 00 00`; MQTT 5 §3.2 adds an empty
/// properties block).
pub fn mqtt_connack(version: u8) -> Vec<u8> {
    if version >= 5 {
        vec![0x20, 0x03, 0x00, 0x00, 0x00]
    } else {
        vec![0x20, 0x02, 0x00, 0x00]
    }
}

/// The "WA" prologue of `WhatsApp`'s Noise Pipes handshake: `W A <major> <minor>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaPrologue {
    /// `57 41 05 02`: current mobile clients.
    V5_2,
    /// `57 41 06 03`: `WhatsApp` Web (the Noise header of the multi-device protocol).
    V6_3,
}

/// How a `WhatsApp` client opens its chat connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaStart {
    /// Only the prologue and the `ClientHello` frame.
    Plain,
    /// Edge routing preamble `45 44 00 01` ("ED", version 0.1) followed by a 3-byte length and
    /// the routing info, in the same segment as the prologue.
    EdgeRouting,
    /// The same, with `45 44 00 01` sent alone in a first segment, as mobile clients do.
    EdgeRoutingSplit,
}

/// `WhatsApp`'s handshake start (Noise `XX`/`IK` with the WA prologue, as described in the
/// `WhatsApp` security whitepaper, "Transport Security"): optional edge routing preamble, the
/// prologue, then a frame of a 3-byte big-endian length and a protobuf `HandshakeMessage`
/// whose `client_hello` (field 2) holds a 32-byte X25519 `ephemeral` (field 1). Returned as
/// the segments the client writes.
pub fn whatsapp_handshake(prologue: WaPrologue, start: WaStart, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut hello = vec![0x0a, 0x20];
    hello.extend_from_slice(&rng.bytes(32));
    let mut msg = vec![0x12, hello.len() as u8];
    msg.extend_from_slice(&hello);

    let mut wa = match prologue {
        WaPrologue::V5_2 => vec![0x57, 0x41, 0x05, 0x02],
        WaPrologue::V6_3 => vec![0x57, 0x41, 0x06, 0x03],
    };
    wa.extend_from_slice(&u24(msg.len()));
    wa.extend_from_slice(&msg);

    let ed = vec![0x45, 0x44, 0x00, 0x01];
    let routing = [0x08, 0x09, 0x08, 0x02];
    let mut rest = u24(routing.len()).to_vec();
    rest.extend_from_slice(&routing);
    rest.extend_from_slice(&wa);
    match start {
        WaStart::Plain => vec![wa],
        WaStart::EdgeRouting => vec![[ed, rest].concat()],
        WaStart::EdgeRoutingSplit => vec![ed, rest],
    }
}

/// Whether `buf` holds a whole `WhatsApp` handshake start: the optional edge routing preamble
/// with its routing info, the prologue, and the first frame.
pub fn whatsapp_hello_complete(buf: &[u8]) -> bool {
    let mut p = 0;
    if buf.starts_with(b"ED\x00\x01") {
        let Some(l) = buf.get(4..7) else { return false };
        p = 7 + ((usize::from(l[0]) << 16) | (usize::from(l[1]) << 8) | usize::from(l[2]));
    }
    if buf.len() < p + 7 || &buf[p..p + 2] != b"WA" {
        return false;
    }
    let l = &buf[p + 4..p + 7];
    buf.len() >= p + 7 + ((usize::from(l[0]) << 16) | (usize::from(l[1]) << 8) | usize::from(l[2]))
}

/// The server's reply frame: a `HandshakeMessage` whose `server_hello` (field 3) holds a
/// 32-byte `ephemeral` and an encrypted 48-byte `static` (field 2).
pub fn whatsapp_server_hello(rng: &mut Rng) -> Vec<u8> {
    let mut hello = vec![0x0a, 0x20];
    hello.extend_from_slice(&rng.bytes(32));
    hello.extend_from_slice(&[0x12, 0x30]);
    hello.extend_from_slice(&rng.bytes(48));
    let mut msg = vec![0x1a, hello.len() as u8];
    msg.extend_from_slice(&hello);
    let mut frame = u24(msg.len()).to_vec();
    frame.extend_from_slice(&msg);
    frame
}

fn u24(n: usize) -> [u8; 3] {
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

/// The first `MTProto` message a Telegram client sends: an unencrypted message (auth key id
/// 0, message id, length) carrying `req_pq_multi#be7e8ef1` with a 128-bit nonce
/// (core.telegram.org/mtproto/description, "Unencrypted Message"; .../`auth_key`). 40 bytes.
pub fn mtproto_req_pq(rng: &mut Rng) -> Vec<u8> {
    let mut m = vec![0u8; 8];
    let msg_id = (1_700_000_000u64 << 32) | (rng.next_u64() & 0xffff_fffc);
    m.extend_from_slice(&msg_id.to_le_bytes());
    m.extend_from_slice(&20u32.to_le_bytes());
    m.extend_from_slice(&0xbe7e_8ef1u32.to_le_bytes());
    m.extend_from_slice(&rng.bytes(16));
    m
}

/// `MTProto` transports (core.telegram.org/mtproto/mtproto-transports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtprotoTransport {
    /// `ef`, then each packet as its length / 4 in one byte (below 127) and the payload.
    Abridged,
    /// `ee ee ee ee`, then each packet as a 4-byte little-endian length and the payload.
    Intermediate,
    /// `dd dd dd dd`, then as intermediate with 0-15 random padding bytes counted in the
    /// length.
    PaddedIntermediate,
}

/// A Telegram client's first segment: the transport tag and the first packet.
pub fn telegram_start(transport: MtprotoTransport, rng: &mut Rng) -> Vec<u8> {
    let payload = mtproto_req_pq(rng);
    match transport {
        MtprotoTransport::Abridged => {
            let mut v = vec![0xef, (payload.len() / 4) as u8];
            v.extend_from_slice(&payload);
            v
        }
        MtprotoTransport::Intermediate => {
            let mut v = vec![0xee; 4];
            v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v.extend_from_slice(&payload);
            v
        }
        MtprotoTransport::PaddedIntermediate => {
            let pad = rng.range(1, 16) as usize;
            let mut v = vec![0xdd; 4];
            v.extend_from_slice(&((payload.len() + pad) as u32).to_le_bytes());
            v.extend_from_slice(&payload);
            v.extend_from_slice(&rng.bytes(pad));
            v
        }
    }
}

/// Where the `server_name` extension goes in a `ClientHello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtOrder {
    /// `server_name` first (after GREASE), as most libraries do.
    SniFirst,
    /// `server_name` after `key_share` and the rest: with a large key share it lands past the
    /// first TCP segment.
    SniLast,
    /// A permutation from this seed, as Chrome randomises its extension order.
    Shuffled(u64),
}

/// A TLS 1.3 `ClientHello` (RFC 8446 §4.1.2) in a TLS record (§5.1), shaped like a browser's.
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// The `server_name` (RFC 6066 §3), `None` for none.
    pub sni: Option<String>,
    /// GREASE values in cipher suites, groups, versions and extensions (RFC 8701).
    pub grease: bool,
    /// An X25519MLKEM768 key share (group 0x11ec, 1216 bytes) besides X25519: the
    /// `ClientHello` then exceeds one 1460-byte segment.
    pub post_quantum: bool,
    pub order: ExtOrder,
    /// ALPN protocols (RFC 7301); empty for none.
    pub alpn: Vec<String>,
    /// Seed of the random fields.
    pub seed: u64,
    /// An `encrypted_client_hello` extension (type 0xfe0d, draft-ietf-tls-esni §5) of the outer
    /// ClientHello: the inner, real name is encrypted; `sni` is then the public (outer) name.
    pub ech: bool,
}

impl ClientHello {
    pub fn new(sni: &str) -> Self {
        ClientHello {
            sni: Some(sni.to_string()),
            grease: true,
            post_quantum: false,
            order: ExtOrder::SniFirst,
            alpn: vec!["h2".into(), "http/1.1".into()],
            seed: 1,
            ech: false,
        }
    }

    /// The record bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.seed);
        let exts = self.extensions(&mut rng);
        let mut ext_bytes = Vec::new();
        for (ty, body) in &exts {
            ext_bytes.extend_from_slice(&ty.to_be_bytes());
            ext_bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            ext_bytes.extend_from_slice(body);
        }

        let mut body = vec![3, 3]; // legacy_version TLS 1.2
        body.extend_from_slice(&rng.bytes(32)); // random
        body.push(32);
        body.extend_from_slice(&rng.bytes(32)); // legacy_session_id (middlebox compatibility)
        let mut suites = Vec::new();
        if self.grease {
            suites.extend_from_slice(&grease(&mut rng).to_be_bytes());
        }
        for s in [
            0x1301u16, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
            0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
        ] {
            suites.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&with_len16(&suites));
        body.extend_from_slice(&[1, 0]); // legacy_compression_methods: null
        body.extend_from_slice(&with_len16(&ext_bytes));

        let mut hs = vec![1]; // client_hello
        hs.extend_from_slice(&u24(body.len()));
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// The extensions (type, body) in wire order.
    fn extensions(&self, rng: &mut Rng) -> Vec<(u16, Vec<u8>)> {
        let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();
        if let Some(name) = &self.sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            exts.push((0, with_len16(&entry)));
        }
        if self.ech {
            // ECHClientHello, outer: type 0, HKDF-SHA256 + AES-128-GCM, config id, the HPKE
            // encapsulated key (32 bytes) and the sealed inner ClientHello.
            let mut ech = vec![0, 0, 1, 0, 1, rng.bytes(1)[0]];
            ech.extend_from_slice(&with_len16(&rng.bytes(32)));
            ech.extend_from_slice(&with_len16(&rng.bytes(208)));
            exts.push((0xfe0d, ech));
        }
        exts.push((23, Vec::new())); // extended_master_secret
        exts.push((0xff01, vec![0])); // renegotiation_info
        let mut groups = Vec::new();
        if self.grease {
            groups.extend_from_slice(&grease(rng).to_be_bytes());
        }
        if self.post_quantum {
            groups.extend_from_slice(&0x11ecu16.to_be_bytes());
        }
        for g in [0x001du16, 0x0017, 0x0018] {
            groups.extend_from_slice(&g.to_be_bytes());
        }
        exts.push((10, with_len16(&groups))); // supported_groups
        exts.push((11, vec![1, 0])); // ec_point_formats: uncompressed
        exts.push((35, Vec::new())); // session_ticket
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for p in &self.alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p.as_bytes());
            }
            exts.push((16, with_len16(&list)));
        }
        exts.push((5, vec![1, 0, 0, 0, 0])); // status_request: OCSP
        let mut sigs = Vec::new();
        for s in [
            0x0403u16, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ] {
            sigs.extend_from_slice(&s.to_be_bytes());
        }
        exts.push((13, with_len16(&sigs))); // signature_algorithms
        exts.push((18, Vec::new())); // signed_certificate_timestamp
        let mut shares = Vec::new();
        if self.grease {
            shares.extend_from_slice(&grease(rng).to_be_bytes());
            shares.extend_from_slice(&[0, 1, 0]);
        }
        if self.post_quantum {
            // ML-KEM-768 encapsulation key (1184 bytes) followed by an X25519 key (32).
            shares.extend_from_slice(&0x11ecu16.to_be_bytes());
            shares.extend_from_slice(&1216u16.to_be_bytes());
            shares.extend_from_slice(&rng.bytes(1216));
        }
        shares.extend_from_slice(&0x001du16.to_be_bytes());
        shares.extend_from_slice(&32u16.to_be_bytes());
        shares.extend_from_slice(&rng.bytes(32));
        exts.push((51, with_len16(&shares))); // key_share
        exts.push((45, vec![1, 1])); // psk_key_exchange_modes: psk_dhe_ke
        let mut versions = Vec::new();
        if self.grease {
            versions.extend_from_slice(&grease(rng).to_be_bytes());
        }
        versions.extend_from_slice(&[3, 4, 3, 3]);
        let mut sv = vec![versions.len() as u8];
        sv.extend_from_slice(&versions);
        exts.push((43, sv)); // supported_versions
        exts.push((27, vec![2, 0, 2])); // compress_certificate: brotli

        match self.order {
            ExtOrder::SniFirst => {}
            ExtOrder::SniLast => {
                if self.sni.is_some() {
                    let sni = exts.remove(0);
                    exts.push(sni);
                }
            }
            ExtOrder::Shuffled(seed) => {
                let mut r = Rng::new(seed);
                for i in (1..exts.len()).rev() {
                    let j = (r.next_u64() % (i as u64 + 1)) as usize;
                    exts.swap(i, j);
                }
            }
        }
        if self.grease {
            exts.insert(0, (grease(rng), Vec::new()));
            exts.push((grease(rng), vec![0]));
        }
        exts
    }
}

/// A GREASE value (RFC 8701): `0x?a?a`.
fn grease(rng: &mut Rng) -> u16 {
    let n = (rng.next_u64() % 16) as u8;
    u16::from_be_bytes([(n << 4) | 0x0a, (n << 4) | 0x0a])
}

fn with_len16(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A TLS 1.3 `ServerHello` record (RFC 8446 §4.1.3) with X25519, then the compatibility
/// `ChangeCipherSpec`: what a server sends back to a `ClientHello`.
pub fn tls_server_hello(rng: &mut Rng) -> Vec<u8> {
    let mut exts = vec![0, 43, 0, 2, 3, 4]; // supported_versions: TLS 1.3
    exts.extend_from_slice(&[0, 51, 0, 36, 0, 0x1d, 0, 32]);
    exts.extend_from_slice(&rng.bytes(32));
    let mut body = vec![3, 3];
    body.extend_from_slice(&rng.bytes(32));
    body.push(32);
    body.extend_from_slice(&rng.bytes(32));
    body.extend_from_slice(&[0x13, 0x01, 0]);
    body.extend_from_slice(&with_len16(&exts));
    let mut hs = vec![2];
    hs.extend_from_slice(&u24(body.len()));
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 3];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
    rec
}

/// The length of the first TLS record in `buf`, header included, once its header is there.
pub fn tls_record_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 5 && buf[0] == 0x16)
        .then(|| 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]])))
}

/// A plain HTTP/1.1 GET (RFC 9112 §3, Host header RFC 9110 §7.2).
pub fn http_get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: imfw-lab/1\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// An HTTP CONNECT to a proxy for `host:port` (RFC 9110 §9.3.6).
pub fn http_connect(host: &str, port: u16) -> Vec<u8> {
    format!(
        "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: imfw-lab/1\r\n\r\n"
    )
    .into_bytes()
}

/// A proxy's answer to a CONNECT it accepts.
pub const HTTP_CONNECT_OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// An IM client's first flight as it goes on the wire.
#[derive(Clone, Debug)]
pub struct Opener {
    /// The canonical app id (`whatsapp`, `telegram`, ...).
    pub app: &'static str,
    /// Which variant, for messages (`tls web.whatsapp.com`, `mtproto abridged`, ...).
    pub label: String,
    /// The port the app's clients use by default.
    pub own_port: u16,
    /// What the client writes, one TCP segment each.
    pub segments: Vec<Vec<u8>>,
    /// Bytes that may cross before the app is recognisable (a preamble sent alone).
    pub preamble_len: usize,
}

impl Opener {
    fn new(
        app: &'static str,
        label: impl Into<String>,
        own_port: u16,
        segments: Vec<Vec<u8>>,
    ) -> Self {
        Opener {
            app,
            label: label.into(),
            own_port,
            segments,
            preamble_len: 0,
        }
    }

    /// All bytes the client sends.
    pub fn bytes(&self) -> Vec<u8> {
        self.segments.concat()
    }
}

/// Openers of the built-in IM apps that the lab and the demo send, one per variant.
pub fn im_openers(rng: &mut Rng) -> Vec<Opener> {
    let tls = |app, sni: &str, seed| {
        let mut ch = ClientHello::new(sni);
        ch.seed = seed;
        Opener::new(app, format!("tls {sni}"), 443, vec![ch.build()])
    };
    let mut wa_split = Opener::new(
        "whatsapp",
        "noise ED+WA5.2 split",
        5222,
        whatsapp_handshake(WaPrologue::V5_2, WaStart::EdgeRoutingSplit, rng),
    );
    wa_split.preamble_len = 4;
    let mut pq = ClientHello::new("chat.signal.org");
    pq.post_quantum = true;
    pq.seed = 7;
    vec![
        Opener::new(
            "xmpp",
            "xmpp stream",
            5222,
            vec![xmpp_stream_header("example.net")],
        ),
        Opener::new(
            "irc",
            "irc registration",
            6667,
            vec![irc_registration("alice")],
        ),
        Opener::new(
            "mqtt",
            "mqtt 3.1.1 connect",
            1883,
            vec![mqtt_connect(4, "lab-sensor-1")],
        ),
        Opener::new(
            "mqtt",
            "mqtt 5 connect",
            1883,
            vec![mqtt_connect(5, "lab-sensor-2")],
        ),
        wa_split,
        Opener::new(
            "whatsapp",
            "noise WA6.3",
            5222,
            whatsapp_handshake(WaPrologue::V6_3, WaStart::Plain, rng),
        ),
        Opener::new(
            "telegram",
            "mtproto abridged",
            5222,
            vec![telegram_start(MtprotoTransport::Abridged, rng)],
        ),
        Opener::new(
            "telegram",
            "mtproto intermediate",
            5222,
            vec![telegram_start(MtprotoTransport::Intermediate, rng)],
        ),
        Opener::new(
            "telegram",
            "mtproto padded",
            5222,
            vec![telegram_start(MtprotoTransport::PaddedIntermediate, rng)],
        ),
        tls("whatsapp", "web.whatsapp.com", 2),
        tls("telegram", "web.telegram.org", 3),
        tls("signal", "chat.signal.org", 4),
        tls("discord", "gateway.discord.gg", 5),
        Opener::new(
            "signal",
            "tls chat.signal.org +mlkem",
            443,
            vec![pq.build()],
        ),
        Opener::new(
            "whatsapp",
            "http connect web.whatsapp.com",
            8080,
            vec![http_connect("web.whatsapp.com", 443)],
        ),
    ]
}

/// A `ClientHello` whose server name only arrives in the second TCP segment: an
/// X25519MLKEM768 key share (as Chrome and Firefox send since 2024) ahead of `server_name`,
/// which Chrome's extension shuffling produces for a large share of connections. Blocking it
/// takes inspection past the first segment.
pub fn late_sni_opener(sni: &'static str, app: &'static str) -> Opener {
    let mut ch = ClientHello::new(sni);
    ch.post_quantum = true;
    ch.order = ExtOrder::SniLast;
    ch.seed = 8;
    let mut o = Opener::new(
        app,
        format!("tls {sni} +mlkem, SNI in 2nd segment"),
        443,
        vec![ch.build()],
    );
    // The first segment (at most one MSS) carries no name and may pass; the rest must not.
    o.preamble_len = LAB_MSS;
    o
}

/// The largest TCP payload per segment in the lab: 1500-byte MTU less IPv4, TCP and the
/// timestamp option (IPv6 segments are smaller).
pub const LAB_MSS: usize = 1500 - 20 - 20 - 12;

#[cfg(test)]
mod tests {
    use imfw_common::matcher::{http_host, tls_sni, SCRATCH_LEN};

    use super::*;

    fn scratch(b: &[u8]) -> ([u8; SCRATCH_LEN], usize) {
        let mut s = [0u8; SCRATCH_LEN];
        let n = b.len().min(SCRATCH_LEN);
        s[..n].copy_from_slice(&b[..n]);
        (s, n)
    }

    fn sni_of(b: &[u8]) -> Option<String> {
        let (s, n) = scratch(b);
        tls_sni(&s, n).map(|(o, l)| String::from_utf8_lossy(&s[o..o + l]).into_owned())
    }

    fn check_record(rec: &[u8]) {
        assert_eq!(rec[0], 0x16);
        assert_eq!(tls_record_len(rec), Some(rec.len()), "record length field");
        let hs_len = (usize::from(rec[6]) << 16) | (usize::from(rec[7]) << 8) | usize::from(rec[8]);
        assert_eq!(hs_len + 4, rec.len() - 5, "handshake length field");
    }

    #[test]
    fn client_hello_sni_is_found_by_the_shared_matcher() {
        for grease in [false, true] {
            for order in [
                ExtOrder::SniFirst,
                ExtOrder::SniLast,
                ExtOrder::Shuffled(9),
                ExtOrder::Shuffled(10),
            ] {
                let mut ch = ClientHello::new("web.whatsapp.com");
                ch.grease = grease;
                ch.order = order;
                let rec = ch.build();
                check_record(&rec);
                assert_eq!(
                    sni_of(&rec).as_deref(),
                    Some("web.whatsapp.com"),
                    "grease {grease} order {order:?}"
                );
            }
        }
    }

    #[test]
    fn post_quantum_client_hello_exceeds_a_segment() {
        let mut ch = ClientHello::new("chat.signal.org");
        ch.post_quantum = true;
        let first = ch.build();
        check_record(&first);
        assert!(first.len() > 1460, "{} bytes", first.len());
        assert_eq!(
            sni_of(&first[..1448]).as_deref(),
            Some("chat.signal.org"),
            "SNI in the first segment"
        );
        ch.order = ExtOrder::SniLast;
        let last = ch.build();
        check_record(&last);
        assert_eq!(sni_of(&last).as_deref(), Some("chat.signal.org"));
        assert_eq!(
            sni_of(&last[..1448]),
            None,
            "SNI only in the second segment"
        );
    }

    #[test]
    fn late_sni_opener_puts_the_name_past_the_first_segment() {
        let o = late_sni_opener("chat.signal.org", "signal");
        let rec = o.bytes();
        assert_eq!(sni_of(&rec).as_deref(), Some("chat.signal.org"));
        assert_eq!(sni_of(&rec[..LAB_MSS]), None);
        assert!(rec.len() > LAB_MSS);
    }

    #[test]
    fn client_hello_without_sni_has_none() {
        let mut ch = ClientHello::new("x");
        ch.sni = None;
        assert_eq!(sni_of(&ch.build()), None);
    }

    #[test]
    fn http_builders_are_read_by_the_shared_matcher() {
        let (s, n) = scratch(&http_get("www.example.com", "/file"));
        let (o, l, connect) = http_host(&s, n).unwrap();
        assert_eq!(&s[o..o + l], b"www.example.com");
        assert!(!connect);
        let (s, n) = scratch(&http_connect("web.whatsapp.com", 443));
        let (o, l, connect) = http_host(&s, n).unwrap();
        assert_eq!(&s[o..o + l], b"web.whatsapp.com");
        assert!(connect);
    }

    #[test]
    fn mqtt_connect_layout() {
        let c4 = mqtt_connect(4, "id");
        assert_eq!(c4[0], 0x10);
        assert_eq!(usize::from(c4[1]), c4.len() - 2);
        assert_eq!(&c4[2..8], b"\x00\x04MQTT");
        assert_eq!(c4[8], 4);
        assert_eq!(&c4[c4.len() - 4..], b"\x00\x02id");
        let c5 = mqtt_connect(5, "id");
        assert_eq!(c5[8], 5);
        assert_eq!(c5[12], 8, "properties length");
        assert_eq!(usize::from(c5[1]), c5.len() - 2);
        assert_eq!(mqtt_varint(0), [0]);
        assert_eq!(mqtt_varint(127), [0x7f]);
        assert_eq!(mqtt_varint(128), [0x80, 0x01]);
        assert_eq!(mqtt_varint(16_383), [0xff, 0x7f]);
        assert_eq!(mqtt_varint(2_097_152), [0x80, 0x80, 0x80, 0x01]);
        assert_eq!(mqtt_connack(4), [0x20, 2, 0, 0]);
    }

    #[test]
    fn whatsapp_variants() {
        let mut rng = Rng::new(1);
        let plain = whatsapp_handshake(WaPrologue::V6_3, WaStart::Plain, &mut rng);
        assert_eq!(plain.len(), 1);
        assert_eq!(&plain[0][..4], b"WA\x06\x03");
        let frame_len = (usize::from(plain[0][5]) << 8) | usize::from(plain[0][6]);
        assert_eq!(frame_len + 7, plain[0].len());
        assert_eq!(&plain[0][7..11], &[0x12, 0x22, 0x0a, 0x20]);
        let split = whatsapp_handshake(WaPrologue::V5_2, WaStart::EdgeRoutingSplit, &mut rng);
        assert_eq!(split[0], b"ED\x00\x01");
        assert_eq!(&split[1][..3], &[0, 0, 4], "routing info length");
        assert_eq!(&split[1][7..11], b"WA\x05\x02");
        let joined = whatsapp_handshake(WaPrologue::V5_2, WaStart::EdgeRouting, &mut rng);
        assert_eq!(joined.len(), 1);
        assert_eq!(&joined[0][..4], b"ED\x00\x01");
        for whole in [&plain[0], &joined[0], &split.concat()] {
            assert!(whatsapp_hello_complete(whole));
            assert!(!whatsapp_hello_complete(&whole[..whole.len() - 1]));
        }
        assert!(
            !whatsapp_hello_complete(&split[0]),
            "the preamble alone is not a hello"
        );
    }

    #[test]
    fn mtproto_transports() {
        let mut rng = Rng::new(2);
        let a = telegram_start(MtprotoTransport::Abridged, &mut rng);
        assert_eq!(a[0], 0xef);
        assert_eq!(usize::from(a[1]) * 4, a.len() - 2);
        assert_eq!(&a[2..10], &[0; 8], "auth_key_id 0");
        assert_eq!(&a[22..26], &[0xf1, 0x8e, 0x7e, 0xbe], "req_pq_multi");
        let i = telegram_start(MtprotoTransport::Intermediate, &mut rng);
        assert_eq!(&i[..4], &[0xee; 4]);
        assert_eq!(
            u32::from_le_bytes(i[4..8].try_into().unwrap()) as usize,
            i.len() - 8
        );
        let p = telegram_start(MtprotoTransport::PaddedIntermediate, &mut rng);
        assert_eq!(&p[..4], &[0xdd; 4]);
        let plen = u32::from_le_bytes(p[4..8].try_into().unwrap()) as usize;
        assert_eq!(plen, p.len() - 8);
        assert!((41..=55).contains(&plen), "padding 1..15: {plen}");
    }

    #[test]
    fn text_openers() {
        assert!(xmpp_stream_header("example.net")
            .starts_with(b"<?xml version='1.0'?><stream:stream to='example.net'"));
        assert_eq!(
            irc_registration("alice"),
            b"CAP LS 302\r\nNICK alice\r\nUSER alice 0 * :Alice\r\n"
        );
        assert!(tls_record_len(&tls_server_hello(&mut Rng::new(1))).is_some());
        let all = im_openers(&mut Rng::new(3));
        assert!(all.iter().all(|o| !o.bytes().is_empty()));
    }
}
