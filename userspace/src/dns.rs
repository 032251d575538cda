//! DNS responses, read so that the controller can learn which addresses serve IM domains.
//!
//! A flow whose name is hidden (ECH, a QUIC version the kernel cannot read, TLS without SNI) is
//! still recognised by its server address when the client looked the name up first. The
//! controller parses the responses it sees ([`parse_response`], [`parse_tcp`]), follows the CNAME
//! chain from the question to its A and AAAA records ([`Response::addresses_for_question`]),
//! checks every name of the chain against its domain set, and keeps the addresses for as long as
//! the answer is valid ([`LearnedAddrs`]).
//!
//! Only the question and answer sections are read. Authority and additional records are never
//! used: an address there was not asked for, and glue is the easiest place to plant one.
//! Nothing here panics on any input; every bound is checked with `get`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hashbrown::HashMap;

const HEADER_LEN: usize = 12;
/// RFC 1035 §2.3.4: a name is at most 255 octets in wire form, length octets included.
const NAME_MAX_WIRE: usize = 255;
/// A name has at most 127 labels, so a legitimate name never follows more pointers than that.
/// The length bound already ends loops that repeat labels; this one ends chains of pointers to
/// pointers, which add no length.
const MAX_JUMPS: usize = 127;
/// CNAMEs followed from the question name. Real CDN chains are two to four long.
pub const MAX_CNAME_CHAIN: usize = 8;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;

/// Default TTL clamp of [`LearnedAddrs`]: answers of a few seconds (load balancers) would make
/// the kernel entry flap while the client keeps using the address.
pub const DEFAULT_MIN_TTL: u32 = 60;
/// Default upper clamp: a day, so that a stale or forged answer does not pin an address forever.
pub const DEFAULT_MAX_TTL: u32 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("message ends inside a header, name or record")]
    Truncated,
    #[error("not a response (QR is 0)")]
    NotResponse,
    #[error("opcode {0} is not a standard query")]
    Opcode(u8),
    #[error("compression pointer to offset {0} does not point back into the message")]
    BadPointer(usize),
    #[error("more than {MAX_JUMPS} compression pointers in one name")]
    TooManyPointers,
    #[error("name longer than 255 octets")]
    NameTooLong,
    #[error("reserved label type {0:#04x}")]
    LabelType(u8),
    #[error("record of type {rtype} with {len} bytes of data")]
    RdataLength { rtype: u16, len: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// The data of the answer records kept; records of other types and classes are skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    /// Seconds; a TTL with the top bit set reads as 0 (RFC 2181 §8).
    pub ttl: u32,
    pub data: RData,
}

/// One parsed DNS response. Names are lowercase (RFC 4343), without the trailing dot; the root
/// is the empty string. Label bytes other than letters, digits, `-` and `_` are written as
/// `\DDD` (RFC 1035 §5.1), so a label holding a dot can never pass for two labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    /// TC: the answer section may be cut short; the complete records before the cut are kept.
    pub truncated: bool,
    pub questions: Vec<Question>,
    /// A, AAAA and CNAME records of class IN, in message order.
    pub answers: Vec<Record>,
}

/// An address reached from a name, valid for the lowest TTL along the chain that reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedAddr {
    pub addr: IpAddr,
    pub ttl: u32,
}

/// What a name resolves to within one response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The name asked for first, then every CNAME target in chain order. The caller checks them
    /// all against its domain set, so that both an IM domain pointing at a CDN and a CNAME onto
    /// an IM domain's CDN are recognised.
    pub names: Vec<String>,
    /// Every address of every name in the chain, each once (with its longest TTL if reached
    /// twice), in the order met.
    pub addrs: Vec<ResolvedAddr>,
}

impl Response {
    /// The first question; responses to standard queries carry exactly one.
    pub fn question(&self) -> Option<&Question> {
        self.questions.first()
    }

    /// [`Response::resolve`] for the first question's name; empty when there is no question.
    pub fn addresses_for_question(&self) -> Resolution {
        self.question().map(|q| self.resolve(&q.name)).unwrap_or_default()
    }

    /// Follows CNAMEs from `name` through this response's answers, at most
    /// [`MAX_CNAME_CHAIN`] deep, stopping at a loop, and collects the A and AAAA records of
    /// every name on the way. `name` is matched without regard to case or a trailing dot.
    pub fn resolve(&self, name: &str) -> Resolution {
        let start = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let mut names = vec![start];
        let mut addrs: Vec<ResolvedAddr> = Vec::new();
        let mut index: HashMap<IpAddr, usize> = HashMap::new();
        let mut chain_ttl = u32::MAX;
        while let Some(current) = names.last() {
            let mut next: Option<(&str, u32)> = None;
            for rec in self.answers.iter().filter(|r| r.name == *current) {
                let addr = match &rec.data {
                    RData::A(a) => IpAddr::V4(*a),
                    RData::Aaaa(a) => IpAddr::V6(*a),
                    // A name holds at most one CNAME (RFC 2181 §10.1); a second one is ignored.
                    RData::Cname(target) => {
                        next = next.or(Some((target.as_str(), rec.ttl)));
                        continue;
                    }
                };
                let ttl = rec.ttl.min(chain_ttl);
                if let Some(known) = index.get(&addr).and_then(|&i| addrs.get_mut(i)) {
                    known.ttl = known.ttl.max(ttl);
                } else {
                    index.insert(addr, addrs.len());
                    addrs.push(ResolvedAddr { addr, ttl });
                }
            }
            match next {
                Some((target, ttl)) if names.len() <= MAX_CNAME_CHAIN && !names.iter().any(|n| n == target) => {
                    chain_ttl = chain_ttl.min(ttl);
                    names.push(target.to_owned());
                }
                _ => break,
            }
        }
        Resolution { names, addrs }
    }
}

/// Parses one DNS message (RFC 1035 §4.1) that must be a response to a standard query. Only
/// the header, question and answer sections are read; anything after them is not checked.
pub fn parse_response(msg: &[u8]) -> Result<Response, DnsError> {
    let Some(&[id_hi, id_lo, flags_hi, flags_lo, qd_hi, qd_lo, an_hi, an_lo, ..]) = msg.get(..HEADER_LEN) else {
        return Err(DnsError::Truncated);
    };
    let id = u16::from_be_bytes([id_hi, id_lo]);
    let flags = u16::from_be_bytes([flags_hi, flags_lo]);
    let qdcount = u16::from_be_bytes([qd_hi, qd_lo]);
    let ancount = u16::from_be_bytes([an_hi, an_lo]);
    if flags & FLAG_QR == 0 {
        return Err(DnsError::NotResponse);
    }
    // Other opcodes (NOTIFY, UPDATE) reuse the sections for other meanings (RFC 2136 §2).
    let opcode = ((flags >> 11) & 0xf) as u8;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    let truncated = flags & FLAG_TC != 0;
    let mut r = Reader { msg, pos: HEADER_LEN };
    // Counts come from the wire: reserve no more than the message could hold (a question takes
    // at least 5 bytes, a record at least 11).
    let mut questions = Vec::with_capacity(usize::from(qdcount).min(msg.len() / 5));
    for _ in 0..qdcount {
        let name = r.name()?;
        let qtype = r.u16()?;
        let qclass = r.u16()?;
        questions.push(Question { name, qtype, qclass });
    }
    let mut answers = Vec::with_capacity(usize::from(ancount).min(msg.len() / 11));
    for _ in 0..ancount {
        match r.record() {
            Ok(Some(rec)) => answers.push(rec),
            Ok(None) => {}
            // With TC set the server cut the message where it ran out of room, and the client
            // asks again over TCP (RFC 2181 §9). The complete records before the cut are genuine,
            // so they are kept until the whole answer comes.
            Err(DnsError::Truncated) if truncated => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Response { id, rcode: (flags & 0xf) as u8, truncated, questions, answers })
}

/// Messages of a DNS-over-TCP byte stream, one direction (RFC 1035 §4.2.2, RFC 7766 §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpResponses {
    /// One entry per complete length-prefixed message; a bad message does not hide the next,
    /// since the framing stays intact.
    pub messages: Vec<Result<Response, DnsError>>,
    /// Bytes of whole messages; `stream[consumed..]` is the start of one still incomplete.
    pub consumed: usize,
}

/// Splits a DNS-over-TCP stream on its 2-byte length prefixes and parses every complete message.
pub fn parse_tcp(stream: &[u8]) -> TcpResponses {
    let mut messages = Vec::new();
    let mut pos = 0;
    while let Some(&[hi, lo]) = stream.get(pos..pos + 2) {
        let end = pos + 2 + usize::from(u16::from_be_bytes([hi, lo]));
        let Some(msg) = stream.get(pos + 2..end) else { break };
        messages.push(parse_response(msg));
        pos = end;
    }
    TcpResponses { messages, consumed: pos }
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], DnsError> {
        let b = self.msg.get(self.pos..self.pos + N).ok_or(DnsError::Truncated)?;
        self.pos += N;
        b.try_into().map_err(|_| DnsError::Truncated)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        self.bytes().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        self.bytes().map(u32::from_be_bytes)
    }

    fn name(&mut self) -> Result<String, DnsError> {
        let (name, next) = read_name(self.msg, self.pos)?;
        self.pos = next;
        Ok(name)
    }

    /// One resource record (RFC 1035 §4.1.3); `None` for types and classes that are skipped.
    fn record(&mut self) -> Result<Option<Record>, DnsError> {
        let name = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.u32()?;
        let rdlength = self.u16()?;
        let start = self.pos;
        let end = start + usize::from(rdlength);
        let rdata = self.msg.get(start..end).ok_or(DnsError::Truncated)?;
        self.pos = end;
        let bad_length = DnsError::RdataLength { rtype, len: rdlength };
        if class != CLASS_IN {
            return Ok(None);
        }
        let data = match rtype {
            TYPE_A => RData::A(<[u8; 4]>::try_from(rdata).map_err(|_| bad_length)?.into()),
            TYPE_AAAA => RData::Aaaa(<[u8; 16]>::try_from(rdata).map_err(|_| bad_length)?.into()),
            // The target may be compressed (RFC 1035 §4.1.4 allows it in CNAME data), so it is
            // read from the whole message; its in-place part must fill RDATA exactly.
            TYPE_CNAME => {
                let (target, next) = read_name(self.msg, start)?;
                if next != end {
                    return Err(bad_length);
                }
                RData::Cname(target)
            }
            _ => return Ok(None),
        };
        let ttl = if ttl & 0x8000_0000 == 0 { ttl } else { 0 };
        Ok(Some(Record { name, ttl, data }))
    }
}

/// Reads the name at `start`, following compression pointers (RFC 1035 §4.1.4). Returns the
/// name and the offset just after its in-place part.
///
/// Loops cannot run away: a pointer must point before itself (to "a prior occurance"), at
/// most [`MAX_JUMPS`] are followed, and the expanded name must stay within 255 octets.
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut out = String::new();
    let mut pos = start;
    let mut after: Option<usize> = None;
    // The root label's zero octet.
    let mut wire_len = 1;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok((out, after.unwrap_or(pos + 1))),
            // Labels are at most 63 octets: the two top bits of the length are the type.
            0x00 => {
                let len = usize::from(len);
                wire_len += 1 + len;
                if wire_len > NAME_MAX_WIRE {
                    return Err(DnsError::NameTooLong);
                }
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(DnsError::Truncated)?;
                if !out.is_empty() {
                    out.push('.');
                }
                push_label(&mut out, label);
                pos += 1 + len;
            }
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                if target >= pos || target < HEADER_LEN {
                    return Err(DnsError::BadPointer(target));
                }
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(DnsError::TooManyPointers);
                }
                after.get_or_insert(pos + 2);
                pos = target;
            }
            // 0x80 is reserved (RFC 1035 §4.1.4); 0x40, extended label types, was never deployed
            // and is deprecated (RFC 6891 §5).
            other => return Err(DnsError::LabelType(other)),
        }
    }
}

fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b.to_ascii_lowercase()));
        } else {
            out.push('\\');
            for digit in [b / 100, b / 10 % 10, b % 10] {
                out.push(char::from(b'0' + digit));
            }
        }
    }
}

/// A learned address: the app it serves and when the answer that taught it runs out, in the
/// caller's monotonic seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Learned {
    pub app: u16,
    pub expires_at: u64,
}

/// What [`LearnedAddrs::learn`] did, and so what the caller must write to the kernel map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new address: insert it. When the table was full, `evicted` is the entry dropped to make
    /// room: delete it.
    Inserted { evicted: Option<IpAddr> },
    /// A known address now credited to another app: overwrite its entry.
    AppChanged { previous: u16 },
    /// A known address for the same app: only the expiry moved, and that lives here, not in the
    /// kernel map.
    Refreshed,
}

/// Addresses learned from DNS answers, each for one app until its TTL runs out.
///
/// Time is whatever monotonic count of seconds the caller passes in (`now`), so that the table
/// holds no clock. Every operation is O(log n): a hash map by address and an ordered set by
/// expiry, always changed together.
#[derive(Clone, Debug)]
pub struct LearnedAddrs {
    entries: HashMap<IpAddr, Learned>,
    by_expiry: BTreeSet<(u64, IpAddr)>,
    capacity: usize,
    min_ttl: u32,
    max_ttl: u32,
}

impl LearnedAddrs {
    /// A table of at most `capacity` addresses (at least 1) whose TTLs are clamped to
    /// `[min_ttl, max_ttl]`; a `max_ttl` below `min_ttl` is raised to it.
    pub fn new(capacity: usize, min_ttl: u32, max_ttl: u32) -> Self {
        LearnedAddrs {
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
            min_ttl,
            max_ttl: max_ttl.max(min_ttl),
        }
    }

    /// Learns that `addr` serves `app` for `ttl_s` seconds from `now`.
    ///
    /// An address learned for two different apps belongs to the most recent answer: the kernel
    /// map holds one app per address, and the latest answer is the one the client acts on. For
    /// the same app the later expiry is kept, since the client may use the address for as long
    /// as any answer it got is valid. When the table is full, the entry that expires soonest is
    /// evicted, even if it outlives the new one: an answer being used now matters more.
    pub fn learn(&mut self, addr: IpAddr, app: u16, ttl_s: u32, now: u64) -> Change {
        let expires_at = now.saturating_add(u64::from(ttl_s.clamp(self.min_ttl, self.max_ttl)));
        if let Some(entry) = self.entries.get_mut(&addr) {
            let previous = entry.app;
            let expires_at = if previous == app { expires_at.max(entry.expires_at) } else { expires_at };
            self.by_expiry.remove(&(entry.expires_at, addr));
            self.by_expiry.insert((expires_at, addr));
            *entry = Learned { app, expires_at };
            return if previous == app { Change::Refreshed } else { Change::AppChanged { previous } };
        }
        let evicted =
            if self.entries.len() >= self.capacity { self.by_expiry.pop_first().map(|(_, a)| a) } else { None };
        if let Some(old) = evicted {
            self.entries.remove(&old);
        }
        self.entries.insert(addr, Learned { app, expires_at });
        self.by_expiry.insert((expires_at, addr));
        Change::Inserted { evicted }
    }

    /// Removes and returns every address whose answer ran out at or before `now`, soonest
    /// first, for the caller to delete from the kernel map.
    pub fn expire(&mut self, now: u64) -> Vec<IpAddr> {
        let mut gone = Vec::new();
        while let Some(&(at, addr)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&addr);
            gone.push(addr);
        }
        gone
    }

    /// The entry for `addr`, expired or not: expiry takes effect at [`LearnedAddrs::expire`].
    pub fn get(&self, addr: IpAddr) -> Option<Learned> {
        self.entries.get(&addr).copied()
    }

    /// Forgets `addr` (for instance when its app leaves the policy).
    pub fn remove(&mut self, addr: IpAddr) -> Option<Learned> {
        let entry = self.entries.remove(&addr)?;
        self.by_expiry.remove(&(entry.expires_at, addr));
        Some(entry)
    }

    /// When the next entry runs out, to time the next [`LearnedAddrs::expire`].
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first().map(|&(at, _)| at)
    }

    /// Every entry, in no particular order (to refill a kernel map after a reload).
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, Learned)> + '_ {
        self.entries.iter().map(|(&a, &l)| (a, l))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const QR_RD_RA: u16 = 0x8180;

    /// A response under construction; names are written in wire form by the caller.
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(flags: u16, qd: u16, an: u16) -> Self {
            let mut m = vec![0x12, 0x34];
            for v in [flags, qd, an, 0, 0] {
                m.extend_from_slice(&v.to_be_bytes());
            }
            Msg(m)
        }

        fn pos(&self) -> u16 {
            self.0.len() as u16
        }

        /// Labels of a dotted name, then either the root or a pointer.
        fn name(&mut self, dotted: &str, ptr: Option<u16>) -> &mut Self {
            for label in dotted.split('.').filter(|l| !l.is_empty()) {
                self.0.push(label.len() as u8);
                self.0.extend_from_slice(label.as_bytes());
            }
            match ptr {
                Some(p) => self.0.extend_from_slice(&(0xc000 | p).to_be_bytes()),
                None => self.0.push(0),
            }
            self
        }

        fn question(&mut self, qtype: u16) -> &mut Self {
            self.u16(qtype).u16(CLASS_IN)
        }

        fn u16(&mut self, v: u16) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        /// Type, class IN, TTL and RDATA of a record whose owner name was just written.
        fn rr(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) -> &mut Self {
            self.u16(rtype).u16(CLASS_IN);
            self.0.extend_from_slice(&ttl.to_be_bytes());
            self.u16(rdata.len() as u16);
            self.0.extend_from_slice(rdata);
            self
        }

        /// A CNAME whose target is written in place (labels, then root or pointer).
        fn cname(&mut self, ttl: u32, target: &str, ptr: Option<u16>) -> &mut Self {
            self.u16(TYPE_CNAME).u16(CLASS_IN);
            self.0.extend_from_slice(&ttl.to_be_bytes());
            let len_at = self.0.len();
            self.u16(0);
            self.name(target, ptr);
            let len = (self.0.len() - len_at - 2) as u16;
            self.0[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
            self
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn octets(addr: &str) -> Vec<u8> {
        match ip(addr) {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// e7.whatsapp.net A, answered with two addresses whose owner points at the question.
    fn whatsapp_a() -> Vec<u8> {
        let mut m = Msg::new(QR_RD_RA, 1, 2);
        m.name("e7.whatsapp.net", None).question(TYPE_A);
        m.name("", Some(12)).rr(TYPE_A, 491, &octets("169.45.219.235"));
        m.name("", Some(12)).rr(TYPE_A, 300, &octets("169.47.40.142"));
        m.0
    }

    /// Chat.Example.COM -> cdn.example.net -> edge.cdn.example.net, with compression in both
    /// owner names and CNAME data, an A, an AAAA and an unrelated record.
    fn cname_chain() -> Vec<u8> {
        let mut m = Msg::new(QR_RD_RA, 1, 6);
        m.name("Chat.Example.COM.", None).question(TYPE_A);
        m.name("", Some(12)).cname(300, "cdn.example.net", None);
        // Each name in CNAME data starts 12 bytes into its record (owner pointer 2, fixed
        // fields 10); "example.net" is 4 bytes into "cdn.example.net".
        let cdn = 12 + 18 + 4 + 12;
        let edge_at = m.pos() + 12;
        m.name("", Some(cdn)).cname(60, "edge.cdn", Some(cdn + 4));
        m.name("", Some(edge_at)).rr(TYPE_A, 120, &octets("192.0.2.7"));
        m.name("", Some(edge_at)).rr(TYPE_AAAA, 3600, &octets("2001:db8::7"));
        m.name("other.example", None).rr(TYPE_A, 120, &octets("198.51.100.1"));
        m.name("", Some(edge_at)).rr(TYPE_A, 30, &octets("192.0.2.7"));
        m.0
    }

    #[test]
    fn a_records() {
        let r = parse_response(&whatsapp_a()).unwrap();
        assert_eq!((r.id, r.rcode, r.truncated), (0x1234, 0, false));
        assert_eq!(r.question(), Some(&Question { name: "e7.whatsapp.net".into(), qtype: TYPE_A, qclass: CLASS_IN }));
        assert_eq!(r.answers.len(), 2);
        assert_eq!(
            r.answers[0],
            Record { name: "e7.whatsapp.net".into(), ttl: 491, data: RData::A([169, 45, 219, 235].into()) }
        );
        let res = r.addresses_for_question();
        assert_eq!(res.names, ["e7.whatsapp.net"]);
        assert_eq!(
            res.addrs,
            [
                ResolvedAddr { addr: ip("169.45.219.235"), ttl: 491 },
                ResolvedAddr { addr: ip("169.47.40.142"), ttl: 300 }
            ]
        );
    }

    #[test]
    fn aaaa_record_and_skipped_records() {
        let mut m = Msg::new(QR_RD_RA, 1, 4);
        m.name("signal.org", None).question(TYPE_AAAA);
        // An RRSIG (skipped by RDLENGTH), a CHAOS-class A (skipped), a negative TTL, the AAAA.
        m.name("", Some(12)).rr(46, 300, &[0xff; 40]);
        m.name("", Some(12)).u16(TYPE_A).u16(3).u16(0).u16(60).u16(4).u16(0x7f00).u16(1);
        m.name("", Some(12)).rr(TYPE_AAAA, 0x8000_0001, &octets("2001:db8::1"));
        m.name("", Some(12)).rr(TYPE_AAAA, 600, &octets("2001:db8::2"));
        let r = parse_response(&m.0).unwrap();
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].ttl, 0, "RFC 2181 §8");
        let res = r.addresses_for_question();
        assert_eq!(res.addrs[0], ResolvedAddr { addr: ip("2001:db8::1"), ttl: 0 });
        assert_eq!(res.addrs[1], ResolvedAddr { addr: ip("2001:db8::2"), ttl: 600 });
    }

    #[test]
    fn cname_chain_with_compression() {
        let r = parse_response(&cname_chain()).unwrap();
        assert_eq!(r.question().unwrap().name, "chat.example.com");
        assert_eq!(r.answers[0].data, RData::Cname("cdn.example.net".into()));
        assert_eq!(r.answers[1].name, "cdn.example.net");
        assert_eq!(r.answers[1].data, RData::Cname("edge.cdn.example.net".into()));
        assert_eq!(r.answers[2].name, "edge.cdn.example.net");
        let res = r.addresses_for_question();
        assert_eq!(res.names, ["chat.example.com", "cdn.example.net", "edge.cdn.example.net"]);
        // Lowest TTL along the chain (60), the same address twice keeps the longer TTL.
        assert_eq!(
            res.addrs,
            [ResolvedAddr { addr: ip("192.0.2.7"), ttl: 60 }, ResolvedAddr { addr: ip("2001:db8::7"), ttl: 60 }]
        );
        // From the middle of the chain, and written the way a person would.
        let mid = r.resolve("CDN.example.net.");
        assert_eq!(mid.names, ["cdn.example.net", "edge.cdn.example.net"]);
        assert_eq!(mid.addrs[0].ttl, 60);
        assert_eq!(r.resolve("edge.cdn.example.net").addrs[0].ttl, 120);
        assert!(r.resolve("nothing.example").addrs.is_empty());
    }

    #[test]
    fn cname_loops_and_depth() {
        let mut m = Msg::new(QR_RD_RA, 1, 2);
        m.name("a.test", None).question(TYPE_A);
        m.name("a.test", None).cname(10, "b.test", None);
        m.name("b.test", None).cname(10, "a.test", None);
        let res = parse_response(&m.0).unwrap().addresses_for_question();
        assert_eq!(res.names, ["a.test", "b.test"]);
        assert!(res.addrs.is_empty());

        let mut m = Msg::new(QR_RD_RA, 1, 21);
        m.name("n0.test", None).question(TYPE_A);
        for i in 0..20 {
            m.name(&format!("n{i}.test"), None).cname(10, &format!("n{}.test", i + 1), None);
        }
        m.name("n8.test", None).rr(TYPE_A, 10, &octets("192.0.2.8"));
        m.name("n9.test", None).rr(TYPE_A, 10, &octets("192.0.2.9"));
        let res = parse_response(&m.0).unwrap().addresses_for_question();
        assert_eq!(res.names.len(), MAX_CNAME_CHAIN + 1);
        assert_eq!(res.names.last().unwrap(), "n8.test");
        assert_eq!(res.addrs, [ResolvedAddr { addr: ip("192.0.2.8"), ttl: 10 }]);
    }

    #[test]
    fn names() {
        // Pointer to a name that itself ends in a pointer.
        let mut m = Msg::new(QR_RD_RA, 3, 0);
        m.name("example.com", None).question(TYPE_A);
        let www = m.pos();
        m.name("www", Some(12)).question(TYPE_A);
        m.name("a.b", Some(www)).question(TYPE_A);
        let r = parse_response(&m.0).unwrap();
        let names: Vec<_> = r.questions.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["example.com", "www.example.com", "a.b.www.example.com"]);

        // Root, and bytes outside letters, digits, '-' and '_' escaped.
        let mut m = Msg::new(QR_RD_RA, 2, 0);
        m.name("", None).question(2);
        m.0.extend_from_slice(b"\x06a.b C\xff\x00");
        m.question(TYPE_A);
        let r = parse_response(&m.0).unwrap();
        assert_eq!(r.questions[0].name, "");
        assert_eq!(r.questions[1].name, "a\\046b\\032c\\255");

        // 255 octets in wire form is the longest name.
        let long = |last: usize| format!("{0}.{0}.{0}.{1}", "x".repeat(63), "y".repeat(last));
        let mut m = Msg::new(QR_RD_RA, 1, 0);
        m.name(&long(61), None).question(TYPE_A);
        assert_eq!(parse_response(&m.0).unwrap().questions[0].name.len(), 253);
        let mut m = Msg::new(QR_RD_RA, 1, 0);
        m.name(&long(62), None).question(TYPE_A);
        assert_eq!(parse_response(&m.0), Err(DnsError::NameTooLong));
    }

    #[test]
    fn pointer_loops() {
        let err = |body: &[u8]| {
            let mut m = Msg::new(QR_RD_RA, 1, 0);
            m.0.extend_from_slice(body);
            m.question(TYPE_A);
            parse_response(&m.0).unwrap_err()
        };
        // To itself, forward, into the header.
        assert_eq!(err(&[0xc0, 12]), DnsError::BadPointer(12));
        assert_eq!(err(&[0xc0, 14, 0]), DnsError::BadPointer(14));
        assert_eq!(err(&[0xc0, 2]), DnsError::BadPointer(2));
        // Back to a label before the pointer: the name grows each turn.
        assert_eq!(err(&[1, b'a', 0xc0, 12]), DnsError::NameTooLong);
        // Chains of pointers to pointers, each pointing at the one before, kept in the data of a
        // skipped record; the next record's owner name points at the end of the chain.
        let chain = |n: u16| {
            let mut m = Msg::new(QR_RD_RA, 0, 2);
            let rdata: Vec<u8> =
                (0..n).flat_map(|i| (0xc000 | if i == 0 { 12 } else { 23 + 2 * (i - 1) }).to_be_bytes()).collect();
            m.name("", None).rr(99, 1, &rdata);
            m.name("", Some(23 + 2 * (n - 1))).rr(TYPE_A, 1, &[192, 0, 2, 1]);
            parse_response(&m.0)
        };
        assert_eq!(chain(100).unwrap().answers[0].name, "");
        assert_eq!(chain(200), Err(DnsError::TooManyPointers));
        assert_eq!(err(&[0x40, 0]), DnsError::LabelType(0x40));
        assert_eq!(err(&[0x80, 0]), DnsError::LabelType(0x80));
    }

    #[test]
    fn header_checks() {
        let mut q = whatsapp_a();
        q[2] &= 0x7f;
        assert_eq!(parse_response(&q), Err(DnsError::NotResponse));
        let mut u = whatsapp_a();
        u[2] |= 5 << 3;
        assert_eq!(parse_response(&u), Err(DnsError::Opcode(5)));
        let mut nx = Msg::new(0x8183, 1, 0);
        nx.name("nope.example", None).question(TYPE_A);
        assert_eq!(parse_response(&nx.0).unwrap().rcode, 3);
        // Wrong RDATA lengths.
        let mut m = Msg::new(QR_RD_RA, 1, 1);
        m.name("x.test", None).question(TYPE_A);
        m.name("", Some(12)).rr(TYPE_A, 1, &[1, 2, 3]);
        assert_eq!(parse_response(&m.0), Err(DnsError::RdataLength { rtype: TYPE_A, len: 3 }));
        let mut m = Msg::new(QR_RD_RA, 1, 1);
        m.name("x.test", None).question(TYPE_A);
        m.name("", Some(12)).rr(TYPE_CNAME, 1, &[1, b'y', 0, 0]);
        assert_eq!(parse_response(&m.0), Err(DnsError::RdataLength { rtype: TYPE_CNAME, len: 4 }));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        for msg in [whatsapp_a(), cname_chain()] {
            for cut in 0..msg.len() {
                assert!(parse_response(&msg[..cut]).is_err(), "cut at {cut}");
            }
            assert!(parse_response(&msg).is_ok());
            // With TC set, a cut inside the answers keeps the whole records before it.
            let mut tc = msg.clone();
            tc[2] |= 0x02;
            let full = parse_response(&tc).unwrap().answers.len();
            let mut last = 0;
            let mut cut_ok = 0;
            for cut in 0..tc.len() {
                if let Ok(r) = parse_response(&tc[..cut]) {
                    assert!(r.truncated && r.answers.len() >= last && r.answers.len() < full);
                    last = r.answers.len();
                    cut_ok += 1;
                }
            }
            assert!(cut_ok > 0 && last > 0);
        }
    }

    /// xorshift64*, so that the test needs no crate and repeats exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut ok = 0;
        for _ in 0..20_000 {
            let len = rng.below(300);
            let mut msg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // A response header with small counts, so that the parser gets past the header.
            if msg.len() >= 12 {
                msg[2] = 0x81;
                msg[4] = 0;
                msg[5] = (msg[5] & 3).max(1);
                msg[6] = 0;
            }
            let _ = parse_tcp(&msg);
            if let Ok(r) = parse_response(&msg) {
                ok += 1;
                let _ = r.addresses_for_question();
            }
        }
        // Mutations of valid responses reach deeper: flipped bytes, overwritten pointers.
        for base in [whatsapp_a(), cname_chain()] {
            for _ in 0..20_000 {
                let mut msg = base.clone();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(msg.len());
                    msg[i] = match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => 0xc0,
                        _ => msg[i] ^ (1 << rng.below(8)),
                    };
                }
                msg.truncate(rng.below(msg.len() + 1).max(msg.len() - rng.below(8)));
                if let Ok(r) = parse_response(&msg) {
                    ok += 1;
                    let res = r.addresses_for_question();
                    assert!(res.names.len() <= MAX_CNAME_CHAIN + 1);
                }
            }
        }
        assert!(ok > 0);
    }

    fn tcp_frame(msg: &[u8]) -> Vec<u8> {
        let mut f = (msg.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn tcp_framing() {
        let first = tcp_frame(&whatsapp_a());
        let second = tcp_frame(&cname_chain());
        let mut stream = [first.clone(), second.clone()].concat();
        let whole = stream.len();
        // The tail: a third message cut short.
        stream.extend_from_slice(&tcp_frame(&whatsapp_a())[..20]);
        let t = parse_tcp(&stream);
        assert_eq!(t.consumed, whole);
        assert_eq!(t.messages.len(), 2);
        assert_eq!(t.messages[0].as_ref().unwrap().answers.len(), 2);
        assert_eq!(t.messages[1].as_ref().unwrap().addresses_for_question().names.len(), 3);
        // Every prefix: only whole messages, never past the cut.
        for cut in 0..stream.len() {
            let t = parse_tcp(&stream[..cut]);
            assert!(t.consumed <= cut);
            let expect = usize::from(cut >= first.len()) + usize::from(cut >= first.len() + second.len());
            assert_eq!(t.messages.len(), expect, "cut at {cut}");
        }
        // A bad message (a query, an empty frame) does not hide the one after it.
        let mut q = whatsapp_a();
        q[2] &= 0x7f;
        let t = parse_tcp(&[tcp_frame(&q), vec![0, 0], first].concat());
        assert_eq!(t.messages[0], Err(DnsError::NotResponse));
        assert_eq!(t.messages[1], Err(DnsError::Truncated));
        assert!(t.messages[2].is_ok());
        assert_eq!(parse_tcp(&[0]), TcpResponses { messages: vec![], consumed: 0 });
    }

    #[test]
    fn learning_clamps_ttl() {
        let mut t = LearnedAddrs::new(16, DEFAULT_MIN_TTL, DEFAULT_MAX_TTL);
        assert!(t.is_empty());
        assert_eq!(t.learn(ip("192.0.2.1"), 1, 5, 1000), Change::Inserted { evicted: None });
        assert_eq!(t.get(ip("192.0.2.1")), Some(Learned { app: 1, expires_at: 1060 }));
        t.learn(ip("192.0.2.2"), 1, 10_000_000, 1000);
        assert_eq!(t.get(ip("192.0.2.2")).unwrap().expires_at, 1000 + 86_400);
        t.learn(ip("192.0.2.3"), 1, 300, 1000);
        assert_eq!(t.get(ip("192.0.2.3")).unwrap().expires_at, 1300);
        t.learn(ip("192.0.2.4"), 1, u32::MAX, u64::MAX - 10);
        assert_eq!(t.get(ip("192.0.2.4")).unwrap().expires_at, u64::MAX);
        assert_eq!(t.len(), 4);
        // Bounds given the wrong way round and a zero capacity do not panic.
        let mut odd = LearnedAddrs::new(0, 600, 60);
        odd.learn(ip("192.0.2.1"), 1, 1, 0);
        assert_eq!(odd.get(ip("192.0.2.1")).unwrap().expires_at, 600);
        assert_eq!(odd.learn(ip("192.0.2.2"), 1, 1, 0), Change::Inserted { evicted: Some(ip("192.0.2.1")) });
        assert_eq!(odd.len(), 1);
    }

    #[test]
    fn learning_refresh_and_app_change() {
        let mut t = LearnedAddrs::new(16, 60, 3600);
        let addr = ip("2001:db8::1");
        t.learn(addr, 1, 600, 0);
        // Same app: the later expiry stays, whichever answer came last.
        assert_eq!(t.learn(addr, 1, 60, 100), Change::Refreshed);
        assert_eq!(t.get(addr), Some(Learned { app: 1, expires_at: 600 }));
        assert_eq!(t.learn(addr, 1, 600, 100), Change::Refreshed);
        assert_eq!(t.get(addr).unwrap().expires_at, 700);
        // Another app: the most recent answer wins, with its own expiry.
        assert_eq!(t.learn(addr, 2, 60, 200), Change::AppChanged { previous: 1 });
        assert_eq!(t.get(addr), Some(Learned { app: 2, expires_at: 260 }));
        assert_eq!(t.next_expiry(), Some(260));
        assert_eq!(t.len(), 1);
        assert!(t.expire(259).is_empty());
        assert_eq!(t.expire(260), [addr]);
        assert!(t.is_empty() && t.next_expiry().is_none());
    }

    #[test]
    fn learning_expiry_cap_and_eviction() {
        let mut t = LearnedAddrs::new(3, 60, 3600);
        let (a1, a2, a3, a4) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"), ip("192.0.2.4"));
        t.learn(a1, 1, 300, 0);
        t.learn(a2, 1, 100, 0);
        t.learn(a3, 2, 200, 0);
        // Full: the soonest to expire (a2) makes room, even though the new entry is shorter.
        assert_eq!(t.learn(a4, 3, 60, 10), Change::Inserted { evicted: Some(a2) });
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(a2), None);
        // Learning a known address never evicts.
        assert_eq!(t.learn(a1, 1, 300, 10), Change::Refreshed);
        assert_eq!(t.len(), 3);
        assert!(t.expire(69).is_empty());
        assert_eq!(t.expire(70), [a4]);
        assert_eq!(t.expire(1000), [a3, a1]);
        assert!(t.is_empty());
        // Remove keeps both indexes in step: a removed address does not come back from expire.
        t.learn(a1, 1, 60, 0);
        t.learn(a2, 1, 120, 0);
        assert_eq!(t.remove(a1), Some(Learned { app: 1, expires_at: 60 }));
        assert_eq!(t.remove(a1), None);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(a2, Learned { app: 1, expires_at: 120 })]);
        assert_eq!(t.expire(10_000), [a2]);
    }

    #[test]
    fn learning_many_stays_consistent() {
        let mut t = LearnedAddrs::new(100, 60, 600);
        let mut rng = Rng(42);
        let mut now = 0;
        for _ in 0..10_000 {
            now += rng.below(3) as u64;
            let addr = IpAddr::V4([10, 0, rng.below(2) as u8, rng.below(256) as u8].into());
            if let Change::Inserted { evicted: Some(old) } =
                t.learn(addr, rng.below(4) as u16, rng.below(1000) as u32, now)
            {
                assert_ne!(old, addr);
                assert!(t.get(old).is_none());
            }
            for gone in t.expire(now) {
                assert!(t.get(gone).is_none());
            }
            assert!(t.len() <= 100);
            assert_eq!(t.len(), t.by_expiry.len());
        }
    }

    /// The UDP payload of an Ethernet frame sent from port 53, through VLAN tags and PPP over Ethernet.
    fn udp_from_53(f: &[u8]) -> Option<&[u8]> {
        let mut off = 12;
        let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
        off += 2;
        loop {
            match et {
                0x8100 | 0x88a8 => {
                    et = u16::from_be_bytes([*f.get(off + 2)?, *f.get(off + 3)?]);
                    off += 4;
                }
                // PPPoE session (RFC 2516): 6 bytes, then the PPP protocol (IPv4 0x21, IPv6 0x57).
                0x8864 => {
                    et = match u16::from_be_bytes([*f.get(off + 6)?, *f.get(off + 7)?]) {
                        0x0021 => 0x0800,
                        0x0057 => 0x86dd,
                        _ => return None,
                    };
                    off += 8;
                }
                _ => break,
            }
        }
        let l4 = match et {
            0x0800 if *f.get(off + 9)? == 17 => off + usize::from(f.get(off)? & 0x0f) * 4,
            0x86dd if *f.get(off + 6)? == 17 => off + 40,
            _ => return None,
        };
        let sport = u16::from_be_bytes([*f.get(l4)?, *f.get(l4 + 1)?]);
        (sport == 53).then(|| f.get(l4 + 8..)).flatten()
    }

    #[test]
    fn captured_responses() {
        // The captures sit beside the repository, as `cargo xtask test` expects them.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps/dns.pcap");
        if !path.exists() {
            println!("{} not found; skipping the capture test", path.display());
            return;
        }
        let cap = crate::capture::read(&path).unwrap();
        let mut responses = 0;
        let mut a_records = 0;
        let mut learned = Vec::new();
        for payload in cap.frames.iter().filter_map(|f| udp_from_53(f)) {
            let r = parse_response(payload).unwrap();
            responses += 1;
            a_records += r.answers.iter().filter(|rec| matches!(rec.data, RData::A(_))).count();
            let res = r.addresses_for_question();
            if res.names.iter().any(|n| n == "e7.whatsapp.net") {
                learned = res.addrs;
            }
        }
        assert_eq!(responses, 3, "www.l.google.com, www.example.com (both AAAA, no answers), e7.whatsapp.net");
        assert!(a_records >= 1);
        assert_eq!(learned.len(), 8);
        assert!(learned.contains(&ResolvedAddr { addr: ip("169.45.219.235"), ttl: 491 }));
        assert!(learned.contains(&ResolvedAddr { addr: ip("108.168.176.234"), ttl: 491 }));
    }
}
