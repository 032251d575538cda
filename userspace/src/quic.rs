//! QUIC Initial packets, opened so the controller can read the TLS server name of a QUIC
//! connection. Initial packets are encrypted, but with keys anyone can derive from the client's
//! Destination Connection ID and a salt published per version (RFC 9001 §5.2): they protect
//! against tampering off path, not against an on-path reader such as this gateway.
//!
//! The pipeline, per client datagram: [`is_client_initial`] (a header check cheap enough for every
//! datagram) -> [`decrypt_initials`] (the CRYPTO frames of every Initial packet coalesced in it)
//! -> one [`CryptoAssembler`] per connection (a `ClientHello` with post-quantum key shares spans
//! two or three datagrams, and clients send them in any order) -> [`client_hello_info`].
//!
//! Nothing here panics on any input: every length read from the wire is checked before use.

use aes::{
    Aes128,
    cipher::{BlockEncrypt, KeyInit},
};
use aes_gcm::{
    Aes128Gcm,
    aead::{Aead, Payload},
};
use hkdf::Hkdf;
use sha2::Sha256;

/// The most CRYPTO stream bytes a [`CryptoAssembler`] buffers by default. Real `ClientHellos` are
/// 250 bytes to about 2 KiB (a post-quantum key share adds 1.2 KiB); this leaves room for large
/// session tickets and bounds what a peer can make the controller hold per connection.
pub const MAX_CRYPTO_BYTES: usize = 64 * 1024;

/// Connection IDs are at most 20 bytes in QUIC v1 and v2 (RFC 9000 §17.2).
const MAX_CID_LEN: usize = 20;

/// A header protection sample is 16 bytes taken 4 bytes after the packet number's start,
/// whatever the packet number's real length (RFC 9001 §5.4.2).
const SAMPLE_OFFSET: usize = 4;
const SAMPLE_LEN: usize = 16;

/// TLS handshake message type of a `ClientHello` (RFC 8446 §4).
const CLIENT_HELLO: u8 = 1;
/// TLS extension code points (RFC 6066 §3, RFC 7301 §3.1, draft-ietf-tls-esni §11.1).
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// Why a datagram yielded no CRYPTO data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuicError {
    #[error("not a QUIC long-header packet")]
    NotLongHeader,
    #[error("QUIC version {0:#010x} is not supported")]
    UnsupportedVersion(u32),
    #[error("no Initial packet in the datagram")]
    NotInitial,
    #[error("QUIC packet truncated")]
    Truncated,
    #[error("malformed QUIC long header")]
    Malformed,
    /// The AEAD tag did not verify: a server's Initial (sealed with the server keys), a damaged
    /// packet, or something that only looks like QUIC.
    #[error("QUIC Initial packet failed authentication")]
    Decrypt,
}

/// One CRYPTO frame of an Initial packet: `data` belongs at `offset` of the Initial
/// encryption level's crypto stream (RFC 9000 §19.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoFrame {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// What the controller reads from a `ClientHello`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The first `host_name` of the `server_name` extension. With ECH this is the outer, public
    /// name (draft-ietf-tls-esni §6.1), not the name the client really connects to.
    pub server_name: Option<String>,
    /// The `ClientHello` carries an `encrypted_client_hello` extension.
    pub ech: bool,
    /// The ALPN protocol names, in the client's order of preference.
    pub alpn: Vec<String>,
}

/// The QUIC versions whose Initial packets can be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
    /// draft-ietf-quic-transport-29, still sent by some clients as "h3-29".
    Draft29,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

impl Version {
    fn from_wire(v: u32) -> Option<Self> {
        match v {
            0x0000_0001 => Some(Self::V1),
            0x6b33_43cf => Some(Self::V2),
            0xff00_001d => Some(Self::Draft29),
            _ => None,
        }
    }

    /// RFC 9001 §5.2, RFC 9369 §3.3.1, draft-ietf-quic-tls-29 §5.2.
    fn initial_salt(self) -> &'static [u8; 20] {
        match self {
            Self::V1 => b"\x38\x76\x2c\xf7\xf5\x59\x34\xb3\x4d\x17\x9a\xe6\xa4\xc8\x0c\xad\xcc\xbb\x7f\x0a",
            Self::V2 => b"\x0d\xed\xe3\xde\xf7\x00\xa6\xdb\x81\x93\x81\xbe\x6e\x26\x9d\xcb\xf9\xbd\x2e\xd9",
            Self::Draft29 => b"\xaf\xbf\xec\x28\x99\x93\xd2\x4c\x9e\x97\x86\xf1\x9c\x61\x11\xe0\x43\x90\xa8\x99",
        }
    }

    /// HKDF labels of the packet key, IV and header protection key. QUIC v2 renamed them so
    /// that v1 and v2 keys differ even for the same secret (RFC 9369 §3.3.2).
    fn labels(self) -> [&'static [u8]; 3] {
        match self {
            Self::V1 | Self::Draft29 => [b"quic key", b"quic iv", b"quic hp"],
            Self::V2 => [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"],
        }
    }

    /// The packet type of a long header's first byte. QUIC v2 shuffled the type bits so that
    /// middleboxes cannot ossify on v1's values (RFC 9369 §3.2).
    fn packet_type(self, first: u8) -> PacketType {
        match (self, (first >> 4) & 0x03) {
            (Self::V1 | Self::Draft29, 0) | (Self::V2, 1) => PacketType::Initial,
            (Self::V1 | Self::Draft29, 1) | (Self::V2, 2) => PacketType::ZeroRtt,
            (Self::V1 | Self::Draft29, 2) | (Self::V2, 3) => PacketType::Handshake,
            _ => PacketType::Retry,
        }
    }
}

/// A bounds-checked cursor over wire bytes; every read returns `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u24(&mut self) -> Option<usize> {
        let [a, b, c] = self.array()?;
        Some(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c))
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A QUIC variable-length integer (RFC 9000 §16): the top two bits give its length.
    fn varint(&mut self) -> Option<u64> {
        let first = self.u8()?;
        let rest = self.take((1 << (first >> 6)) - 1)?;
        Some(rest.iter().fold(u64::from(first & 0x3f), |v, &b| v << 8 | u64::from(b)))
    }

    /// Bytes prefixed with a varint length.
    fn varint_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        self.take(n)
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// True when the datagram starts with what can be a client's Initial packet of a supported
/// version. The header does not tell a client's Initial from a server's; [`decrypt_initials`]
/// does, as only the client's verifies with the client keys.
pub fn is_client_initial(datagram: &[u8]) -> bool {
    let mut r = Reader::new(datagram);
    let (Some(first), Some(version), Some(dcid_len)) = (r.u8(), r.u32(), r.u8()) else {
        return false;
    };
    // Long header form and the fixed bit (RFC 9000 §17.2).
    first & 0xc0 == 0xc0
        && usize::from(dcid_len) <= MAX_CID_LEN
        && Version::from_wire(version).is_some_and(|v| v.packet_type(first) == PacketType::Initial)
}

/// The CRYPTO frames of every client Initial packet in a UDP datagram, in packet and frame
/// order. A datagram may coalesce several long-header packets (RFC 9000 §12.2), typically an
/// Initial followed by 0-RTT: the others are skipped, and a short-header packet or padding ends
/// the walk, as such packets carry no length.
///
/// `Ok` when at least one Initial packet decrypted. Otherwise the first packet's header error,
/// the first Initial's decryption error, or [`QuicError::NotInitial`] when the datagram held no
/// Initial.
///
/// Keys come from each packet's own Destination Connection ID, so no state is needed. That
/// holds until the client adopts the connection ID the server chose: its later Initials (ACKs,
/// mostly) keep the keys of its first DCID (RFC 9001 §5.2) and fail here with
/// [`QuicError::Decrypt`]. The `ClientHello` goes out before that switch.
pub fn decrypt_initials(datagram: &[u8]) -> Result<Vec<CryptoFrame>, QuicError> {
    let mut frames = Vec::new();
    let mut opened = false;
    let mut first_error = None;
    let mut first_dcid = None;
    let mut rest = datagram;
    while !rest.is_empty() {
        let packet = match LongPacket::parse(rest) {
            Ok(p) => p,
            Err(e) => {
                // Past the first packet, what does not parse (zero padding, a short header)
                // just ends the walk.
                if first_dcid.is_none() {
                    first_error = Some(e);
                }
                break;
            }
        };
        // Coalesced packets all belong to one connection; RFC 9000 §12.2 has receivers ignore
        // any with another Destination Connection ID.
        if *first_dcid.get_or_insert(packet.dcid) != packet.dcid {
            break;
        }
        if packet.kind == PacketType::Initial {
            match packet.open(rest) {
                Ok(payload) => {
                    opened = true;
                    parse_frames(&payload, &mut frames);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        rest = rest.get(packet.len..).unwrap_or_default();
    }
    if opened { Ok(frames) } else { Err(first_error.unwrap_or(QuicError::NotInitial)) }
}

/// One long-header packet at the start of a buffer.
struct LongPacket<'a> {
    version: Version,
    kind: PacketType,
    dcid: &'a [u8],
    /// Offset of the (protected) packet number; meaningful for Initial packets.
    pn_offset: usize,
    /// Bytes of the buffer the packet takes.
    len: usize,
}

impl<'a> LongPacket<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, QuicError> {
        use QuicError::{Malformed, NotLongHeader, Truncated, UnsupportedVersion};
        let mut r = Reader::new(buf);
        let first = r.u8().ok_or(Truncated)?;
        if first & 0xc0 != 0xc0 {
            return Err(NotLongHeader);
        }
        let wire = r.u32().ok_or(Truncated)?;
        let version = Version::from_wire(wire).ok_or(UnsupportedVersion(wire))?;
        let mut cid = || {
            let n = usize::from(r.u8().ok_or(Truncated)?);
            if n > MAX_CID_LEN {
                return Err(Malformed);
            }
            r.take(n).ok_or(Truncated)
        };
        let dcid = cid()?;
        cid()?;
        let kind = version.packet_type(first);
        if kind == PacketType::Retry {
            // A Retry has no Length field: it runs to the end of the datagram.
            return Ok(Self { version, kind, dcid, pn_offset: buf.len(), len: buf.len() });
        }
        if kind == PacketType::Initial {
            r.varint_bytes().ok_or(Truncated)?;
        }
        let length = usize::try_from(r.varint().ok_or(Truncated)?).map_err(|_| Truncated)?;
        if length > r.remaining() {
            return Err(Truncated);
        }
        let pn_offset = buf.len() - r.remaining();
        Ok(Self { version, kind, dcid, pn_offset, len: pn_offset + length })
    }

    /// Removes header protection and decrypts the payload with the client Initial keys.
    fn open(&self, buf: &[u8]) -> Result<Vec<u8>, QuicError> {
        let packet = buf.get(..self.len).ok_or(QuicError::Truncated)?;
        let keys = InitialKeys::client(self.version, self.dcid);
        let sample_at = self.pn_offset + SAMPLE_OFFSET;
        let sample: [u8; SAMPLE_LEN] = packet
            .get(sample_at..sample_at + SAMPLE_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(QuicError::Truncated)?;
        let mask = keys.header_mask(sample);
        // The first byte's low four bits are protected in long headers (RFC 9001 §5.4.1); the
        // low two give the packet number length.
        let first = packet[0] ^ (mask[0] & 0x0f);
        let pn_len = usize::from(first & 0x03) + 1;
        let header_len = self.pn_offset + pn_len;
        let mut header = packet[..header_len].to_vec();
        header[0] = first;
        let mut pn = 0u64;
        for (b, m) in header[self.pn_offset..].iter_mut().zip(&mask[1..]) {
            *b ^= m;
            pn = pn << 8 | u64::from(*b);
        }
        // Decoding a truncated packet number needs the largest one received so far (RFC 9000
        // §17.1, A.3); with none received it is 0 and the truncated value is the packet number.
        let mut nonce = keys.iv;
        for (n, p) in nonce[4..].iter_mut().zip(pn.to_be_bytes()) {
            *n ^= p;
        }
        Aes128Gcm::new(&keys.key.into())
            .decrypt(&nonce.into(), Payload { msg: &packet[header_len..], aad: &header })
            .map_err(|_| QuicError::Decrypt)
    }
}

/// The packet protection keys of one side of the Initial encryption level.
#[derive(Debug, PartialEq, Eq)]
struct InitialKeys {
    key: [u8; 16],
    iv: [u8; 12],
    hp: [u8; 16],
}

impl InitialKeys {
    /// The client's keys for a connection whose client chose `dcid` (RFC 9001 §5.2).
    fn client(version: Version, dcid: &[u8]) -> Self {
        let initial = Hkdf::<Sha256>::new(Some(version.initial_salt()), dcid);
        let secret: [u8; 32] = expand_label(&initial, b"client in");
        let secret = Hkdf::<Sha256>::from_prk(&secret).expect("a 32-byte secret is a valid SHA-256 PRK");
        let [key, iv, hp] = version.labels();
        Self { key: expand_label(&secret, key), iv: expand_label(&secret, iv), hp: expand_label(&secret, hp) }
    }

    /// The header protection mask: AES-128-ECB of the sample under the hp key (RFC 9001 §5.4.3).
    fn header_mask(&self, sample: [u8; SAMPLE_LEN]) -> [u8; 16] {
        let mut block = sample.into();
        Aes128::new(&self.hp.into()).encrypt_block(&mut block);
        block.into()
    }
}

/// HKDF-Expand-Label with an empty context (RFC 8446 §7.1), as QUIC uses it.
fn expand_label<const N: usize>(secret: &Hkdf<Sha256>, label: &[u8]) -> [u8; N] {
    const PREFIX: &[u8] = b"tls13 ";
    let mut info = Vec::with_capacity(4 + PREFIX.len() + label.len());
    info.extend_from_slice(&(N as u16).to_be_bytes());
    info.push((PREFIX.len() + label.len()) as u8);
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label);
    info.push(0);
    let mut out = [0u8; N];
    secret.expand(&info, &mut out).expect("QUIC's keys are far below HKDF's 255-block limit");
    out
}

/// Collects the CRYPTO frames of a decrypted Initial payload. Initial packets may carry only
/// PADDING, PING, ACK, CRYPTO and `CONNECTION_CLOSE` (RFC 9000 §12.4, Table 3); any other type,
/// or a frame cut short, ends the parse with what was collected, since an unknown frame's
/// length cannot be known.
fn parse_frames(payload: &[u8], out: &mut Vec<CryptoFrame>) {
    let mut r = Reader::new(payload);
    while let Some(ty) = r.varint() {
        let ok = match ty {
            0x00 | 0x01 => Some(()),
            0x02 | 0x03 => skip_ack(&mut r, ty == 0x03),
            0x06 => crypto_frame(&mut r).map(|f| out.push(f)),
            // CONNECTION_CLOSE of the transport; the application's (0x1d) cannot be in an Initial.
            0x1c => r.varint().and_then(|_| r.varint()).and_then(|_| r.varint_bytes()).map(drop),
            _ => None,
        };
        if ok.is_none() {
            return;
        }
    }
}

/// ACK frame (RFC 9000 §19.3): largest, delay, range count, first range, the ranges, and three
/// ECN counts for type 0x03.
fn skip_ack(r: &mut Reader<'_>, ecn: bool) -> Option<()> {
    r.varint()?;
    r.varint()?;
    let ranges = r.varint()?;
    r.varint()?;
    // Each range takes at least two bytes, so the payload's end bounds this loop.
    for _ in 0..ranges {
        r.varint()?;
        r.varint()?;
    }
    if ecn {
        for _ in 0..3 {
            r.varint()?;
        }
    }
    Some(())
}

/// CRYPTO frame (RFC 9000 §19.6); offset + length past 2^62 - 1 is a protocol violation.
fn crypto_frame(r: &mut Reader<'_>) -> Option<CryptoFrame> {
    let offset = r.varint()?;
    let data = r.varint_bytes()?;
    let end = offset.checked_add(data.len() as u64)?;
    (end < 1 << 62).then(|| CryptoFrame { offset, data: data.to_vec() })
}

/// Reassembles the Initial crypto stream of one connection from CRYPTO frames that arrive in
/// any order, across datagrams, with retransmissions and overlaps. The caller keeps one per
/// connection (per flow, or per the client's first DCID). The first copy of a byte wins: a later
/// frame cannot rewrite what was already read, so a forged retransmission cannot change a name
/// the controller has already acted on.
#[derive(Clone, Debug)]
pub struct CryptoAssembler {
    buf: Vec<u8>,
    /// One bit per byte of `buf`: set once that byte has arrived.
    present: Vec<u64>,
    /// The length of the gap-free prefix from offset 0.
    contiguous: usize,
    cap: usize,
}

impl Default for CryptoAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl CryptoAssembler {
    /// An assembler that holds up to [`MAX_CRYPTO_BYTES`].
    pub fn new() -> Self {
        Self::with_cap(MAX_CRYPTO_BYTES)
    }

    /// An assembler that holds stream bytes below offset `cap` and drops the rest.
    pub fn with_cap(cap: usize) -> Self {
        Self { buf: Vec::new(), present: Vec::new(), contiguous: 0, cap }
    }

    /// Adds `data` at stream `offset`; bytes at or past the cap are dropped.
    pub fn push(&mut self, offset: u64, data: &[u8]) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len()).min(self.cap);
        if start >= end {
            return;
        }
        if end > self.buf.len() {
            self.buf.resize(end, 0);
            self.present.resize(end.div_ceil(64), 0);
        }
        for (i, &b) in (start..end).zip(data) {
            if !self.has(i) {
                self.present[i / 64] |= 1 << (i % 64);
                self.buf[i] = b;
            }
        }
        while self.contiguous < self.buf.len() && self.has(self.contiguous) {
            self.contiguous += 1;
        }
    }

    fn has(&self, i: usize) -> bool {
        self.present[i / 64] & 1 << (i % 64) != 0
    }

    /// Adds every frame of a decrypted datagram.
    pub fn push_frames(&mut self, frames: &[CryptoFrame]) {
        for f in frames {
            self.push(f.offset, &f.data);
        }
    }

    /// The complete `ClientHello` handshake message (type, 3-byte length and body), once every
    /// byte of it has arrived.
    pub fn client_hello(&self) -> Option<&[u8]> {
        let head = &self.buf[..self.contiguous];
        if head.first() != Some(&CLIENT_HELLO) {
            return None;
        }
        head.get(..self.declared_len()?)
    }

    /// True when no `ClientHello` can come out of this stream: it starts with another message,
    /// or declares one longer than the cap. The caller can then stop feeding it.
    pub fn gave_up(&self) -> bool {
        self.buf[..self.contiguous].first().is_some_and(|&t| t != CLIENT_HELLO)
            || self.declared_len().is_some_and(|n| n > self.cap)
    }

    /// Bytes of buffer held (gaps included), for the caller's memory accounting.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The handshake message's total length, from its 3-byte length field.
    fn declared_len(&self) -> Option<usize> {
        Reader::new(self.buf.get(1..self.contiguous)?).u24().map(|n| n + 4)
    }
}

/// The server name of a handshake-layer `ClientHello` (as carried in QUIC CRYPTO frames, with no
/// TLS record header).
pub fn client_hello_server_name(msg: &[u8]) -> Option<String> {
    client_hello_info(msg)?.server_name
}

/// Reads the server name, ALPN list and ECH presence of a handshake-layer `ClientHello`
/// (RFC 8446 §4.1.2). `None` when the message is not a well-formed `ClientHello`; a `server_name`
/// that is not printable text gives `server_name: None`.
pub fn client_hello_info(msg: &[u8]) -> Option<ClientHelloInfo> {
    let mut r = Reader::new(msg);
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let len = r.u24()?;
    let mut body = Reader::new(r.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    body.vec8()?; // legacy_session_id
    body.vec16()?; // cipher_suites
    body.vec8()?; // legacy_compression_methods
    let mut info = ClientHelloInfo::default();
    // A TLS 1.2 ClientHello may end here (RFC 5246 §7.4.1.2); TLS 1.3 always has extensions.
    if body.is_empty() {
        return Some(info);
    }
    let mut exts = Reader::new(body.vec16()?);
    let mut seen_name = false;
    let mut seen_alpn = false;
    // Duplicate extensions are forbidden (RFC 8446 §4.2) and a server rejects them; reading the
    // first copy matches what a server that does not check would use.
    while !exts.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        match ty {
            EXT_SERVER_NAME if !seen_name => {
                seen_name = true;
                info.server_name = server_name(data);
            }
            EXT_ALPN if !seen_alpn => {
                seen_alpn = true;
                info.alpn = alpn(data).unwrap_or_default();
            }
            EXT_ENCRYPTED_CLIENT_HELLO => info.ech = true,
            _ => {}
        }
    }
    Some(info)
}

/// `server_name` extension data (RFC 6066 §3): the first entry of type `host_name`, when it is
/// printable text.
fn server_name(data: &[u8]) -> Option<String> {
    let mut list = Reader::new(Reader::new(data).vec16()?);
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            let name = std::str::from_utf8(name).ok()?;
            let printable = !name.is_empty() && !name.chars().any(|c| c.is_control() || c.is_whitespace());
            return printable.then(|| name.to_owned());
        }
    }
    None
}

/// `application_layer_protocol_negotiation` extension data (RFC 7301 §3.1).
fn alpn(data: &[u8]) -> Option<Vec<String>> {
    let mut list = Reader::new(Reader::new(data).vec16()?);
    let mut out = Vec::new();
    while !list.is_empty() {
        out.push(String::from_utf8_lossy(list.vec8()?).into_owned());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG_LEN: usize = 16;

    /// RFC 9001 Appendix A and RFC 9369 Appendix A use this client-chosen DCID.
    const RFC_DCID: &[u8] = &[0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

    /// The CRYPTO frame of RFC 9001 A.2 (and RFC 9369 A.2): offset 0, a 241-byte `ClientHello`
    /// for example.com with ALPN "alpn".
    const RFC_CRYPTO_FRAME: &str = "\
    060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47f06a2b69484c000004130113\
    02010000c000000010000e00000b6578616d706c652e636f6dff01000100000a00080006001d00170018001000070005\
    04616c706e000500050100000000003300260024001d00209370b2c9caa47fbabaf4559fedba753de171fa71f50f1ce1\
    5d43e994ec74d748002b0003020304000d0010000e0403050306030203080408050806002d00020101001c0002400100\
    3900320408ffffffffffffffff05048000ffff07048000ffff0801100104800075300901100f088394c8f03e51570806\
    048000ffff";

    /// The protected client Initial of RFC 9001 A.2: packet number 2 in 4 bytes, a 1162-byte
    /// payload (the frame above, then PADDING).
    const RFC9001_INITIAL: &str = "\
    c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11d242b123dc9bd8bab936b47d92ec356c\
    0bab7df5976d27cd449f63300099f3991c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c\
    8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df621230c83711b39343fa028cea7f7fb5ff89\
    eac2308249a02252155e2347b63d58c5457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208\
    4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec4e15daf8500a6ef69ec4e3feb6b1d98e\
    610ac8b7ec3faf6ad760b7bad1db4ba3485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db\
    059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c7b4378e846d29f37ed7b4ea9ec5d82e7\
    961b7f25a9323851f681d582363aa5f89937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556\
    be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c7468449a13d8e3b95811a198f3491de3e7\
    fe942b330407abf82a4ed7c1b311663ac69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00\
    f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632291d6a418211cc2962e20fe47feb3edf\
    330f2c603a9d48c0fcb5699dbfe5896425c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd\
    14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ffef132eef2fa09346aee33c28eb130ff2\
    8f5b766953334113211996d20011a198e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd\
    c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73203a4a13e96f5432ec0fd4a1ee65accd\
    d5e3904df54c1da510b0ff20dcc0c77fcb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e\
    fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03adea2e1fbc5aa463d08ca19896d2bf59a07\
    1b851e6c239052172f296bfb5e72404790a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2\
    162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f440591f355e12d439ff150aab7613499d\
    bd49adabc8676eef023b15b65bfc5ca06948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e\
    8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0be79e2fb8f5d5fbbe2e30ecadd220723\
    c8c0aea8078cdfcb3868263ff8f0940054da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab\
    760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9f96f3ca9ec1dde434da7d2d392b905dd\
    f3d1f9af93d1af5950bd493f5aa731b4056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064\
    7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241e221af44860018ab0856972e194cd934";

    /// The same client Initial for QUIC v2, RFC 9369 A.2.
    const RFC9369_INITIAL: &str = "\
    d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485dd04de806071bf03dceebfa162e75d6c\
    96058bdbfb127cdfcbf903388e99ad049f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d\
    250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a12834e3f249a78d395e0d18f4d766004\
    f1a2674802a747eaa901c3f10cda5500cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68\
    18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff3312ae50b187c1433c0f028edcc4c2838b\
    6a9bfc226ca4b4530e7a4ccee1bfa2a3d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd\
    6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520bcfb7966fc49b393f0061d974a2706df\
    8c4a9449f11d7f3d2dcbb90c6b877045636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f\
    ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c1216ccce2d0193f958bb3850a833f7ae43\
    2b65bc5a53975c155aa4bcb4f7b2c4e54df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4\
    fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b8017c25ca9052ca1079d8b78aebd4787\
    6d330a30f6a8c6d61dd1ab5589329de714d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9\
    9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91abfe43960977c87471cf9ad4074d30e1\
    0d6a7f03c63bd5d4317f68ff325ba3bd80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db\
    848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18d703dd84045a274ae8bfa73379661388\
    d6991fe39b0d93debb41700b41f90a15c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc\
    7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61f6b5b984d4d3dfa033c1bb7e4f0037fe\
    bf406d91c0dccf32acf423cfa1e7071010d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b\
    3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e06ebfde206bfb0fcbc0edc4ebec30966\
    1bdd908d532eb0c6adc38b7ca7331dce8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1\
    34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1e86215c2d54e6670e07383a27bbffb5a\
    ddf47d66aa85a0c6f9f32e59d85a44dd5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3\
    8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89d5974ee12e5cf7d5da4d6a31123041f3\
    3e61407e76cffcdcfd7e19ba58cf4b536f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19\
    9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96ba18b2faa745b6fe189cf772a9f84cbfc";

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
    }

    /// A small xorshift generator, so the fuzz-like tests need no dependency and repeat exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn put_varint(out: &mut Vec<u8>, v: u64) {
        match v {
            0..0x40 => out.push(v as u8),
            0x40..0x4000 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
            0x4000..0x4000_0000 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
            _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
        }
    }

    fn crypto(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        put_varint(&mut f, offset);
        put_varint(&mut f, data.len() as u64);
        f.extend_from_slice(data);
        f
    }

    fn wire(version: Version) -> u32 {
        match version {
            Version::V1 => 1,
            Version::V2 => 0x6b33_43cf,
            Version::Draft29 => 0xff00_001d,
        }
    }

    /// The inverse of `LongPacket::open`, for tests: a client Initial with `payload` padded so
    /// that the packet is `size` bytes (no padding when `size` is smaller).
    fn protect(version: Version, dcid: &[u8], scid: &[u8], pn: u32, payload: &[u8], size: usize) -> Vec<u8> {
        let type_bits = if version == Version::V2 { 0x10 } else { 0x00 };
        let mut pkt = vec![0xc3 | type_bits];
        pkt.extend_from_slice(&wire(version).to_be_bytes());
        pkt.push(dcid.len() as u8);
        pkt.extend_from_slice(dcid);
        pkt.push(scid.len() as u8);
        pkt.extend_from_slice(scid);
        pkt.push(0); // token length
        // Header so far + 2-byte Length + 4-byte packet number + tag.
        let overhead = pkt.len() + 2 + 4 + TAG_LEN;
        let mut payload = payload.to_vec();
        payload.resize(payload.len().max(size.saturating_sub(overhead)), 0);
        pkt.extend_from_slice(&(0x4000 | (4 + payload.len() + TAG_LEN) as u16).to_be_bytes());
        let pn_offset = pkt.len();
        pkt.extend_from_slice(&pn.to_be_bytes());
        let keys = InitialKeys::client(version, dcid);
        let mut nonce = keys.iv;
        for (n, p) in nonce[4..].iter_mut().zip(u64::from(pn).to_be_bytes()) {
            *n ^= p;
        }
        let sealed =
            Aes128Gcm::new(&keys.key.into()).encrypt(&nonce.into(), Payload { msg: &payload, aad: &pkt }).unwrap();
        pkt.extend_from_slice(&sealed);
        let sample = pkt[pn_offset + 4..pn_offset + 20].try_into().unwrap();
        let mask = keys.header_mask(sample);
        pkt[0] ^= mask[0] & 0x0f;
        for i in 0..4 {
            pkt[pn_offset + i] ^= mask[1 + i];
        }
        pkt
    }

    fn ext(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// A `ClientHello` shaped like a current browser's over QUIC: an X25519MLKEM768 key share
    /// (1216 bytes) next to X25519, transport parameters and, optionally, an ECH extension.
    fn client_hello(name: &str, alpn: &[&str], ech: bool) -> Vec<u8> {
        let mut exts = Vec::new();
        let mut sni = Vec::new();
        sni.extend_from_slice(&(name.len() as u16 + 3).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        ext(&mut exts, EXT_SERVER_NAME, &sni);
        ext(&mut exts, 10, &[0, 6, 0x11, 0xec, 0x00, 0x1d, 0x00, 0x17]);
        let mut protos = Vec::new();
        for p in alpn {
            protos.push(p.len() as u8);
            protos.extend_from_slice(p.as_bytes());
        }
        let mut list = (protos.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&protos);
        ext(&mut exts, EXT_ALPN, &list);
        let mut shares = Vec::new();
        for (group, len) in [(0x11ecu16, 1216usize), (0x001d, 32)] {
            shares.extend_from_slice(&group.to_be_bytes());
            shares.extend_from_slice(&(len as u16).to_be_bytes());
            shares.extend((0..len).map(|i| (i * 7) as u8));
        }
        let mut ks = (shares.len() as u16).to_be_bytes().to_vec();
        ks.extend_from_slice(&shares);
        ext(&mut exts, 51, &ks);
        ext(&mut exts, 43, &[2, 3, 4]);
        ext(&mut exts, 13, &[0, 8, 4, 3, 8, 4, 4, 1, 5, 3]);
        ext(&mut exts, 45, &[1, 1]);
        ext(&mut exts, 27, &[2, 0, 2]);
        ext(&mut exts, 17613, &[0, 3, 2, b'h', b'3']);
        ext(&mut exts, 5, &[1, 0, 0, 0, 0]);
        ext(&mut exts, 18, &[]);
        ext(&mut exts, 23, &[]);
        ext(&mut exts, 0xff01, &[0]);
        let mut params = Vec::new();
        for (id, len) in [(0x01u8, 4usize), (0x04, 4), (0x05, 4), (0x06, 4), (0x07, 4), (0x08, 2), (0x09, 2), (0x0f, 8)]
        {
            params.extend_from_slice(&[id, len as u8]);
            params.extend((0..len).map(|i| 0x40 | i as u8));
        }
        ext(&mut exts, 57, &params);
        if ech {
            ext(&mut exts, EXT_ENCRYPTED_CLIENT_HELLO, &[0x5a; 282]);
        }
        hello_with(&exts)
    }

    /// A `ClientHello` around the given extension block.
    fn hello_with(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x11; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 6, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut msg = vec![CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn rfc9001_client_keys() {
        let keys = InitialKeys::client(Version::V1, RFC_DCID);
        assert_eq!(keys.key.to_vec(), hex("1f369613dd76d5467730efcbe3b1a22d"));
        assert_eq!(keys.iv.to_vec(), hex("fa044b2f42a3fd3b46fb255c"));
        assert_eq!(keys.hp.to_vec(), hex("9f50449e04a0e810283a1e9933adedd2"));
        // RFC 9001 A.2: the mask from the first 16 bytes of ciphertext.
        let mask = keys.header_mask(hex("d1b1c98dd7689fb8ec11d242b123dc9b").try_into().unwrap());
        assert_eq!(mask[..5].to_vec(), hex("437b9aec36"));
    }

    #[test]
    fn rfc9369_client_keys() {
        let keys = InitialKeys::client(Version::V2, RFC_DCID);
        assert_eq!(keys.key.to_vec(), hex("8b1a0bc121284290a29e0971b5cd045d"));
        assert_eq!(keys.iv.to_vec(), hex("91f73e2351d8fa91660e909f"));
        assert_eq!(keys.hp.to_vec(), hex("45b95e15235d6f45a6b19cbcb0294ba9"));
        // RFC 9369 A.2: the mask from the first 16 bytes of ciphertext.
        let mask = keys.header_mask(hex("ffe67b6abcdb4298b485dd04de806071").try_into().unwrap());
        assert_eq!(mask[..5].to_vec(), hex("94a0c95e80"));
    }

    #[test]
    fn rfc_client_initials_decrypt() {
        let frame = hex(RFC_CRYPTO_FRAME);
        for (text, v2) in [(RFC9001_INITIAL, false), (RFC9369_INITIAL, true)] {
            let packet = hex(text);
            assert_eq!(packet.len(), 1200);
            assert!(is_client_initial(&packet));
            let frames = decrypt_initials(&packet).unwrap();
            assert_eq!(frames, vec![CryptoFrame { offset: 0, data: frame[4..].to_vec() }], "v2: {v2}");
            let mut asm = CryptoAssembler::new();
            asm.push_frames(&frames);
            let hello = asm.client_hello().unwrap();
            assert_eq!(hello.len(), 241);
            let info = client_hello_info(hello).unwrap();
            assert_eq!(
                info,
                ClientHelloInfo { server_name: Some("example.com".into()), ech: false, alpn: vec!["alpn".into()] }
            );
            assert_eq!(client_hello_server_name(hello).as_deref(), Some("example.com"));
        }
    }

    #[test]
    fn test_encryptor_reproduces_rfc_packets() {
        let frame = hex(RFC_CRYPTO_FRAME);
        assert_eq!(protect(Version::V1, RFC_DCID, &[], 2, &frame, 1200), hex(RFC9001_INITIAL));
        assert_eq!(protect(Version::V2, RFC_DCID, &[], 2, &frame, 1200), hex(RFC9369_INITIAL));
    }

    #[test]
    fn header_check() {
        let v1 = hex(RFC9001_INITIAL);
        let v2 = hex(RFC9369_INITIAL);
        assert!(is_client_initial(&v1[..6]));
        assert!(!is_client_initial(&v1[..5]));
        assert!(!is_client_initial(&[]));
        // The type bits moved in v2: v1's Initial bits make a v2 Retry, v2's make a v1 0-RTT.
        let mut retry_v2 = v2.clone();
        retry_v2[0] &= !0x30;
        assert!(!is_client_initial(&retry_v2));
        let mut zero_rtt_v1 = v1.clone();
        zero_rtt_v1[0] |= 0x10;
        assert!(!is_client_initial(&zero_rtt_v1));
        assert_eq!(decrypt_initials(&zero_rtt_v1), Err(QuicError::NotInitial));
        let mut handshake_v1 = v1.clone();
        handshake_v1[0] |= 0x20;
        assert!(!is_client_initial(&handshake_v1));
        let mut short = v1.clone();
        short[0] &= 0x7f;
        assert!(!is_client_initial(&short));
        let mut no_fixed = v1.clone();
        no_fixed[0] &= !0x40;
        assert!(!is_client_initial(&no_fixed));
        let mut unknown = v1.clone();
        unknown[4] = 2;
        assert!(!is_client_initial(&unknown));
        assert_eq!(decrypt_initials(&unknown), Err(QuicError::UnsupportedVersion(2)));
        let mut long_cid = v1.clone();
        long_cid[5] = 21;
        assert!(!is_client_initial(&long_cid));
        assert_eq!(decrypt_initials(&long_cid), Err(QuicError::Malformed));
        // Version negotiation (version 0) is not an Initial.
        assert!(!is_client_initial(&[0xc0, 0, 0, 0, 0, 8]));
        let draft = protect(Version::Draft29, RFC_DCID, &[], 0, &crypto(0, b"x"), 1200);
        assert!(is_client_initial(&draft));
    }

    #[test]
    fn draft29_round_trip() {
        let hello = client_hello("draft.example", &["h3-29"], false);
        let dcid = [7u8; 8];
        let packet = protect(Version::Draft29, &dcid, &[1, 2, 3], 0, &crypto(0, &hello), 1252);
        assert!(packet.len() > 1252);
        let frames = decrypt_initials(&packet).unwrap();
        assert_eq!(frames, vec![CryptoFrame { offset: 0, data: hello.clone() }]);
        // The same packet under v1 keys does not verify: the salts differ.
        let mut as_v1 = packet.clone();
        as_v1[1..5].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(decrypt_initials(&as_v1), Err(QuicError::Decrypt));
    }

    #[test]
    fn split_post_quantum_hello_in_reverse_order() {
        for version in [Version::V1, Version::V2] {
            let hello = client_hello("chat.example.org", &["h3"], true);
            // About 1.8 KB: more than one 1200-byte datagram can carry.
            assert!((1700..1900).contains(&hello.len()), "{}", hello.len());
            let dcid = hex("0011223344556677");
            let split = 1100;
            let first = protect(version, &dcid, &[9; 8], 0, &crypto(0, &hello[..split]), 1200);
            let second = protect(version, &dcid, &[9; 8], 1, &crypto(split as u64, &hello[split..]), 1200);
            assert_eq!((first.len(), second.len()), (1200, 1200));
            let mut asm = CryptoAssembler::new();
            asm.push_frames(&decrypt_initials(&second).unwrap());
            assert_eq!(asm.client_hello(), None);
            assert!(!asm.gave_up());
            asm.push_frames(&decrypt_initials(&first).unwrap());
            assert_eq!(asm.client_hello(), Some(&hello[..]));
            let info = client_hello_info(asm.client_hello().unwrap()).unwrap();
            assert_eq!(
                info,
                ClientHelloInfo { server_name: Some("chat.example.org".into()), ech: true, alpn: vec!["h3".into()] }
            );
            // A retransmission with other bytes does not change what was read.
            let mut forged = hello.clone();
            forged[200..220].fill(b'x');
            asm.push(0, &forged);
            assert_eq!(asm.client_hello(), Some(&hello[..]));
        }
    }

    #[test]
    fn chopped_and_shuffled_frames_in_one_packet() {
        // Chrome cuts its ClientHello into many small CRYPTO frames, shuffles them and puts
        // PING and PADDING between them; retransmissions overlap.
        let hello = client_hello("www.example.net", &["h3", "h3-29"], false);
        let cuts = [0, 37, 300, 301, 690, 1000, 1350, hello.len()];
        let mut pieces: Vec<Vec<u8>> = cuts.windows(2).map(|w| crypto(w[0] as u64, &hello[w[0]..w[1]])).collect();
        pieces.swap(0, 5);
        pieces.swap(2, 6);
        let mut payload = Vec::new();
        for p in pieces.iter().take(4) {
            payload.extend_from_slice(p);
            payload.extend_from_slice(&[0x01, 0x00, 0x00]);
        }
        // ACK and ACK_ECN, then an overlapping copy.
        payload.extend_from_slice(&[0x02, 0x05, 0x00, 0x01, 0x01, 0x00, 0x02]);
        payload.extend_from_slice(&[0x03, 0x05, 0x00, 0x00, 0x01, 0x01, 0x02, 0x03]);
        payload.extend_from_slice(&crypto(20, &hello[20..400]));
        let packet_a = protect(Version::V1, &[1; 8], &[], 0, &payload, 1200);
        let mut payload = Vec::new();
        for p in pieces.iter().skip(4) {
            payload.extend_from_slice(p);
        }
        let packet_b = protect(Version::V1, &[1; 8], &[], 1, &payload, 1200);
        let mut asm = CryptoAssembler::new();
        asm.push_frames(&decrypt_initials(&packet_b).unwrap());
        let frames = decrypt_initials(&packet_a).unwrap();
        assert_eq!(frames.len(), 5);
        asm.push_frames(&frames);
        assert_eq!(asm.client_hello(), Some(&hello[..]));
        assert_eq!(client_hello_info(&hello).unwrap().alpn, vec!["h3".to_string(), "h3-29".to_string()]);
    }

    #[test]
    fn frame_parse_stops_at_unknown_types() {
        let mut payload = vec![0x01];
        payload.extend_from_slice(&crypto(5, b"abc"));
        // CONNECTION_CLOSE: error 0x0a, frame type 0x06, a 4-byte reason.
        payload.extend_from_slice(&[0x1c, 0x0a, 0x06, 0x04, b'o', b'o', b'p', b's']);
        payload.extend_from_slice(&crypto(0, b"xy"));
        // A STREAM frame has no place in an Initial: the rest is not read.
        payload.extend_from_slice(&[0x08, 0x00, 0x00]);
        payload.extend_from_slice(&crypto(9, b"zz"));
        let mut out = Vec::new();
        parse_frames(&payload, &mut out);
        assert_eq!(
            out,
            vec![CryptoFrame { offset: 5, data: b"abc".to_vec() }, CryptoFrame { offset: 0, data: b"xy".to_vec() }]
        );
        // A CRYPTO frame whose end passes 2^62 - 1.
        let mut out = Vec::new();
        parse_frames(&[0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00], &mut out);
        assert!(out.is_empty());
        // Every truncation yields a prefix of the frames.
        for n in 0..payload.len() {
            let mut out = Vec::new();
            parse_frames(&payload[..n], &mut out);
            assert!(out.len() <= 2);
        }
    }

    #[test]
    fn coalesced_packets() {
        let hello = client_hello("coalesced.example", &["h3"], false);
        let dcid = [0xab; 12];
        let a = protect(Version::V1, &dcid, &[], 0, &crypto(0, &hello[..900]), 0);
        let b = protect(Version::V1, &dcid, &[], 1, &crypto(900, &hello[900..]), 0);
        // A 0-RTT packet (type 1) for the same connection, whose payload is not ours to read.
        let mut zero_rtt = vec![0xd1, 0, 0, 0, 1, dcid.len() as u8];
        zero_rtt.extend_from_slice(&dcid);
        zero_rtt.extend_from_slice(&[0, 0x40, 30]);
        zero_rtt.extend_from_slice(&[0x77; 30]);
        let mut datagram = [a.clone(), zero_rtt.clone(), b.clone()].concat();
        // Clients may pad the datagram with zeros after the last packet.
        datagram.resize(datagram.len() + 100, 0);
        let frames = decrypt_initials(&datagram).unwrap();
        assert_eq!(frames.len(), 2);
        let mut asm = CryptoAssembler::new();
        asm.push_frames(&frames);
        assert_eq!(client_hello_server_name(asm.client_hello().unwrap()).as_deref(), Some("coalesced.example"));
        // A packet for another connection is ignored, and what follows it too.
        let other = protect(Version::V1, &[0xcd; 12], &[], 0, &crypto(0, b"other"), 0);
        let frames = decrypt_initials(&[a.clone(), other, b.clone()].concat()).unwrap();
        assert_eq!(frames.len(), 1);
        // No Initial at all.
        assert_eq!(decrypt_initials(&zero_rtt), Err(QuicError::NotInitial));
        // A damaged second Initial does not spoil the first.
        let mut damaged = b.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(decrypt_initials(&[a.clone(), damaged.clone()].concat()).unwrap().len(), 1);
        assert_eq!(decrypt_initials(&damaged), Err(QuicError::Decrypt));
    }

    #[test]
    fn assembler_cap_and_non_hello() {
        let hello = client_hello("capped.example", &[], false);
        let mut small = CryptoAssembler::with_cap(1000);
        small.push(0, &hello);
        assert_eq!(small.buffered(), 1000);
        assert_eq!(small.client_hello(), None);
        assert!(small.gave_up());
        let mut huge = CryptoAssembler::new();
        huge.push(u64::MAX, b"abc");
        huge.push((1 << 62) - 1, b"abc");
        huge.push(MAX_CRYPTO_BYTES as u64 - 1, b"abc");
        assert_eq!(huge.buffered(), MAX_CRYPTO_BYTES);
        assert!(!huge.gave_up());
        let mut server_hello = CryptoAssembler::new();
        server_hello.push(0, &[2, 0, 0, 4, 1, 2, 3, 4]);
        assert!(server_hello.gave_up());
        assert_eq!(server_hello.client_hello(), None);
        let mut empty = CryptoAssembler::new();
        empty.push(0, &[]);
        assert_eq!(empty.client_hello(), None);
        assert!(!empty.gave_up());
    }

    #[test]
    fn client_hello_edge_cases() {
        let hello = client_hello("edge.example", &["h3"], false);
        // Trailing bytes after the message are not part of it.
        let mut longer = hello.clone();
        longer.extend_from_slice(&[0xff; 10]);
        assert_eq!(client_hello_server_name(&longer).as_deref(), Some("edge.example"));
        // A hello without extensions, as TLS 1.2 allows.
        let mut bare = vec![1, 0, 0, 41, 3, 3];
        bare.extend_from_slice(&[0; 32]);
        bare.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        assert_eq!(client_hello_info(&bare), Some(ClientHelloInfo::default()));
        // A name with a control character is not a host name.
        let bad = client_hello("evil\nexample", &[], false);
        let info = client_hello_info(&bad).unwrap();
        assert_eq!(info.server_name, None);
        assert!(info.alpn.is_empty());
        // A duplicate server_name: the first is read. A malformed one leaves the name empty
        // but the rest readable.
        let sni = |name: &str| {
            let mut e = Vec::new();
            e.extend_from_slice(&(name.len() as u16 + 3).to_be_bytes());
            e.push(0);
            e.extend_from_slice(&(name.len() as u16).to_be_bytes());
            e.extend_from_slice(name.as_bytes());
            e
        };
        let mut exts = Vec::new();
        ext(&mut exts, EXT_SERVER_NAME, &sni("first.example"));
        ext(&mut exts, EXT_SERVER_NAME, &sni("second.example"));
        assert_eq!(client_hello_server_name(&hello_with(&exts)).as_deref(), Some("first.example"));
        let mut exts = Vec::new();
        ext(&mut exts, EXT_SERVER_NAME, &[0, 9, 0, 0, 5, b'a']);
        ext(&mut exts, EXT_ALPN, &[0, 3, 2, b'h', b'3']);
        ext(&mut exts, EXT_ENCRYPTED_CLIENT_HELLO, &[]);
        assert_eq!(
            client_hello_info(&hello_with(&exts)),
            Some(ClientHelloInfo { server_name: None, ech: true, alpn: vec!["h3".into()] })
        );
        // An extension block whose lengths do not add up is not a ClientHello.
        let mut exts = Vec::new();
        ext(&mut exts, EXT_SERVER_NAME, &sni("x.example"));
        exts.push(0);
        assert_eq!(client_hello_info(&hello_with(&exts)), None);
    }

    #[test]
    fn no_panic_on_truncations_and_bit_flips() {
        for text in [RFC9001_INITIAL, RFC9369_INITIAL] {
            let packet = hex(text);
            for n in 0..packet.len() {
                assert!(decrypt_initials(&packet[..n]).is_err(), "truncated to {n}");
                is_client_initial(&packet[..n]);
            }
            // Every byte, every bit: the header fails to parse or the tag fails to verify.
            for i in 0..packet.len() {
                for bit in 0..8 {
                    let mut p = packet.clone();
                    p[i] ^= 1 << bit;
                    assert!(decrypt_initials(&p).is_err(), "byte {i} bit {bit}");
                }
            }
        }
        let hello = client_hello("trunc.example", &["h3"], true);
        for n in 0..hello.len() {
            assert_eq!(client_hello_info(&hello[..n]), None);
            let mut asm = CryptoAssembler::new();
            asm.push(0, &hello[..n]);
            assert_eq!(asm.client_hello(), None);
        }
        let rfc = hex(RFC_CRYPTO_FRAME);
        for n in 0..rfc.len() {
            let mut out = Vec::new();
            parse_frames(&rfc[..n], &mut out);
        }
    }

    #[test]
    fn no_panic_on_random_input() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hello = client_hello("random.example", &["h3", "h2"], true);
        let dcid = [0x42; 8];
        for round in 0..3000 {
            let n = rng.below(1400);
            // Plain noise, then noise behind a plausible long header so parsing goes deeper.
            let noise = rng.bytes(n);
            let _ = decrypt_initials(&noise);
            let mut framed = vec![0xc0 | (rng.next() as u8 & 0x3f), 0, 0, 0, 1, rng.below(22) as u8];
            framed.extend_from_slice(&noise);
            let _ = decrypt_initials(&framed);
            let mut out = Vec::new();
            parse_frames(&noise, &mut out);
            // Random frames that do verify, so that the frame parser sees noise too.
            if round % 10 == 0 {
                let packet = protect(Version::V1, &dcid, &[], 0, &noise, 1200);
                let _ = decrypt_initials(&packet).unwrap();
            }
            // A ClientHello with a few random bytes changed.
            let mut h = hello.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(h.len());
                h[i] = rng.next() as u8;
            }
            let _ = client_hello_info(&h);
            let _ = client_hello_info(&noise);
            // Random pieces of a hello at random offsets, some past the cap.
            let mut asm = CryptoAssembler::with_cap(4096);
            for _ in 0..8 {
                let start = rng.below(h.len());
                let end = start + rng.below(h.len() - start + 1);
                let offset = if rng.below(20) == 0 { rng.next() } else { start as u64 };
                asm.push(offset, &h[start..end]);
            }
            if let Some(m) = asm.client_hello() {
                let _ = client_hello_info(m);
            }
            let _ = asm.gave_up();
        }
    }

    /// The UDP payload, ports of an Ethernet frame from `crate::capture` (IPv4 or IPv6, no
    /// extension headers, VLAN tags skipped).
    fn udp(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
        let mut off = 12;
        let mut ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        while ethertype == 0x8100 || ethertype == 0x88a8 {
            off += 4;
            ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        }
        let l3 = frame.get(off + 2..)?;
        let l4 = match ethertype {
            0x0800 if *l3.get(9)? == 17 => l3.get(usize::from(l3.first()? & 0x0f) * 4..)?,
            0x86dd if *l3.get(6)? == 17 => l3.get(40..)?,
            _ => return None,
        };
        let sport = u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?);
        let dport = u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?);
        let len = usize::from(u16::from_be_bytes(l4.get(4..6)?.try_into().ok()?));
        Some((sport, dport, l4.get(8..len.max(8).min(l4.len()))?))
    }

    /// The `ClientHellos` of the QUIC connections in a capture, in the order they completed;
    /// `None` when the capture is absent.
    fn capture_hellos(name: &str) -> Option<Vec<ClientHelloInfo>> {
        let path = std::path::Path::new("/work/shared/pcaps").join(name);
        if !path.exists() {
            println!("skipping: {} is absent", path.display());
            return None;
        }
        let capture = crate::capture::read(&path).unwrap();
        let mut streams: std::collections::HashMap<Vec<u8>, CryptoAssembler> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for frame in &capture.frames {
            let Some((_, _, datagram)) = udp(frame) else { continue };
            if !is_client_initial(datagram) {
                continue;
            }
            // Server Initials fail the tag check here, as they should.
            let Ok(frames) = decrypt_initials(datagram) else { continue };
            let dcid = datagram[6..6 + usize::from(datagram[5])].to_vec();
            let asm = streams.entry(dcid).or_default();
            let done = asm.client_hello().is_some();
            asm.push_frames(&frames);
            if let (false, Some(hello)) = (done, asm.client_hello()) {
                out.push(client_hello_info(hello).expect("a well-formed ClientHello"));
            }
        }
        Some(out)
    }

    #[test]
    fn shared_captures() {
        let hello = |name: &str, alpn: &str| ClientHelloInfo {
            server_name: Some(name.into()),
            ech: false,
            alpn: vec![alpn.into()],
        };
        let cases = [
            // Draft-29 to 10.9.0.2:443: the server answers the first Initial with a Retry, and
            // the client sends its 301-byte ClientHello again under the Retry's connection ID.
            // Its third Initial, an ACK to the server's connection ID, stays sealed (see
            // `decrypt_initials`).
            ("quic-29.pcap", vec![hello("localhost", "h3-29"), hello("localhost", "h3-29")]),
            // QUIC v2 over IPv6 loopback to port 4443, a 431-byte ClientHello.
            ("quic-v2.pcapng", vec![hello("test", "h3")]),
            // Google QUIC (Q024, Q035): its own public header and a plaintext CHLO, no IETF
            // Initial packet to open.
            ("quic.pcap", vec![]),
            ("youtube_quic.pcap", vec![]),
        ];
        for (name, expected) in cases {
            let Some(hellos) = capture_hellos(name) else { continue };
            assert_eq!(hellos, expected, "{name}");
        }
    }
}
