//! Raw frame builders for `BPF_PROG_TEST_RUN` tests and raw sockets: Ethernet with optional
//! 802.1Q / 802.1ad tags, IPv4 (options, fragments), IPv6 (extension header chain), TCP and
//! UDP with correct checksums.
//!
//! Each layer is a plain struct with an `encode` that wraps the bytes of the layer above;
//! [`tcp4`], [`tcp6`], [`udp4`] and [`udp6`] build a whole frame in one call.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
/// 802.1Q customer tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (outer tag of Q-in-Q).
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// TCP flag bits (RFC 9293 §3.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Lab MAC addresses (locally administered).
pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const MAC_GW: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The Internet checksum (RFC 1071) of `data`, with `initial` folded in (a pseudo-header sum).
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sum of the pseudo-header used by the TCP and UDP checksums (RFC 9293 §3.1, RFC 8200 §8.1).
fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&[0, proto]);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("pseudo-header with mixed address families"),
    }
    let mut sum = 0u32;
    for c in bytes.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum
}

/// A TCP header.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// [`tcp_flags`] bits.
    pub flags: u8,
    pub window: u16,
    /// Options, padded with zeros (End of Option List) to a multiple of 4; the data offset
    /// follows their length, so the payload starts at `doff * 4`.
    pub options: Vec<u8>,
}

impl Tcp {
    pub fn new(sport: u16, dport: u16, flags: u8) -> Self {
        Tcp {
            sport,
            dport,
            seq: 1000,
            ack: u32::from(flags & tcp_flags::ACK != 0),
            flags,
            window: 64240,
            options: Vec::new(),
        }
    }

    /// Typical SYN options: MSS 1460, SACK permitted, timestamps, window scale 7 (20 bytes).
    pub fn syn_options() -> Vec<u8> {
        vec![
            2, 4, 0x05, 0xb4, // MSS 1460
            4, 2, // SACK permitted
            8, 10, 0, 0, 0, 1, 0, 0, 0, 0, // timestamps
            1, // NOP
            3, 3, 7, // window scale 7
        ]
    }

    /// The segment (header and payload) with its checksum for `src` -> `dst`.
    pub fn encode(&self, src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        assert!(opts.len() <= 40, "TCP options are at most 40 bytes");
        let hlen = 20 + opts.len();
        let mut s = Vec::with_capacity(hlen + payload.len());
        s.extend_from_slice(&self.sport.to_be_bytes());
        s.extend_from_slice(&self.dport.to_be_bytes());
        s.extend_from_slice(&self.seq.to_be_bytes());
        s.extend_from_slice(&self.ack.to_be_bytes());
        s.push(((hlen / 4) as u8) << 4);
        s.push(self.flags);
        s.extend_from_slice(&self.window.to_be_bytes());
        s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        s.extend_from_slice(&opts);
        s.extend_from_slice(payload);
        let c = checksum(pseudo_sum(src, dst, IPPROTO_TCP, s.len()), &s);
        s[16..18].copy_from_slice(&c.to_be_bytes());
        s
    }
}

/// A UDP header.
#[derive(Clone, Debug)]
pub struct Udp {
    pub sport: u16,
    pub dport: u16,
}

impl Udp {
    /// The datagram with its checksum (0 is sent as 0xffff, RFC 768).
    pub fn encode(&self, src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
        let len = 8 + payload.len();
        let mut d = Vec::with_capacity(len);
        d.extend_from_slice(&self.sport.to_be_bytes());
        d.extend_from_slice(&self.dport.to_be_bytes());
        d.extend_from_slice(&(len as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(payload);
        let mut c = checksum(pseudo_sum(src, dst, IPPROTO_UDP, len), &d);
        if c == 0 {
            c = 0xffff;
        }
        d[6..8].copy_from_slice(&c.to_be_bytes());
        d
    }
}

/// An IPv4 header (RFC 791).
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub id: u16,
    pub tos: u8,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// Options, padded with zeros (End of Options List) to a multiple of 4.
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Ipv4 {
            src,
            dst,
            protocol,
            ttl: 64,
            id: 0x1234,
            tos: 0,
            dont_fragment: true,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
        }
    }

    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        assert!(opts.len() <= 40, "IPv4 options are at most 40 bytes");
        let hlen = 20 + opts.len();
        let total = hlen + payload.len();
        let mut p = Vec::with_capacity(total);
        p.push(0x40 | (hlen / 4) as u8);
        p.push(self.tos);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&self.id.to_be_bytes());
        let mut ff = self.frag_offset & 0x1fff;
        if self.dont_fragment {
            ff |= 0x4000;
        }
        if self.more_fragments {
            ff |= 0x2000;
        }
        p.extend_from_slice(&ff.to_be_bytes());
        p.push(self.ttl);
        p.push(self.protocol);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&opts);
        let c = checksum(0, &p[..hlen]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }
}

/// An IPv6 extension header (RFC 8200 §4).
#[derive(Clone, Debug)]
pub enum Ext6 {
    /// Hop-by-hop options: the option bytes, padded with `PadN` to a multiple of 8 with the
    /// two-byte header.
    HopByHop(Vec<u8>),
    /// Routing header: type, segments left, and type-specific data.
    Routing {
        routing_type: u8,
        segments_left: u8,
        data: Vec<u8>,
    },
    /// Destination options (padded like hop-by-hop).
    DestOpts(Vec<u8>),
    /// Fragment header: offset in 8-byte units.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext6 {
    fn protocol(&self) -> u8 {
        match self {
            Ext6::HopByHop(_) => IPPROTO_HOPOPTS,
            Ext6::Routing { .. } => IPPROTO_ROUTING,
            Ext6::DestOpts(_) => IPPROTO_DSTOPTS,
            Ext6::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn encode(&self, next: u8) -> Vec<u8> {
        let padded = |mut body: Vec<u8>| {
            let total = 2 + body.len();
            let pad = (8 - total % 8) % 8;
            match pad {
                0 => {}
                1 => body.push(0), // Pad1
                n => {
                    body.push(1); // PadN
                    body.push((n - 2) as u8);
                    body.extend(std::iter::repeat_n(0, n - 2));
                }
            }
            body
        };
        match self {
            Ext6::HopByHop(opts) | Ext6::DestOpts(opts) => {
                let body = padded(opts.clone());
                let mut h = vec![next, ((2 + body.len()) / 8 - 1) as u8];
                h.extend_from_slice(&body);
                h
            }
            Ext6::Routing {
                routing_type,
                segments_left,
                data,
            } => {
                let mut body = vec![*routing_type, *segments_left];
                body.extend_from_slice(data);
                while (2 + body.len()) % 8 != 0 {
                    body.push(0);
                }
                let mut h = vec![next, ((2 + body.len()) / 8 - 1) as u8];
                h.extend_from_slice(&body);
                h
            }
            Ext6::Fragment { offset, more, id } => {
                let mut h = vec![next, 0];
                let v = (offset << 3) | u16::from(*more);
                h.extend_from_slice(&v.to_be_bytes());
                h.extend_from_slice(&id.to_be_bytes());
                h
            }
        }
    }
}

/// An IPv6 header (RFC 8200 §3) and its chain of extension headers.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The upper-layer protocol after the extension headers.
    pub protocol: u8,
    pub hop_limit: u8,
    pub flow_label: u32,
    pub ext: Vec<Ext6>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8) -> Self {
        Ipv6 {
            src,
            dst,
            protocol,
            hop_limit: 64,
            flow_label: 0,
            ext: Vec::new(),
        }
    }

    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.protocol, Ext6::protocol);
            chain.extend_from_slice(&e.encode(next));
        }
        let first = self.ext.first().map_or(self.protocol, Ext6::protocol);
        let plen = chain.len() + payload.len();
        let mut p = Vec::with_capacity(40 + plen);
        p.extend_from_slice(&(0x6000_0000u32 | (self.flow_label & 0xf_ffff)).to_be_bytes());
        p.extend_from_slice(&(plen as u16).to_be_bytes());
        p.push(first);
        p.push(self.hop_limit);
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&chain);
        p.extend_from_slice(payload);
        p
    }
}

/// A VLAN tag: the TPID that announces it and the TCI (priority, DEI, VLAN id).
#[derive(Clone, Copy, Debug)]
pub struct Vlan {
    pub tpid: u16,
    pub tci: u16,
}

impl Vlan {
    /// An 802.1Q tag with VLAN id `vid`.
    pub fn dot1q(vid: u16) -> Self {
        Vlan {
            tpid: ETH_P_8021Q,
            tci: vid & 0x0fff,
        }
    }

    /// An 802.1ad service tag with VLAN id `vid`.
    pub fn dot1ad(vid: u16) -> Self {
        Vlan {
            tpid: ETH_P_8021AD,
            tci: vid & 0x0fff,
        }
    }
}

/// An Ethernet II header with its VLAN tags, outermost first.
#[derive(Clone, Debug)]
pub struct Ethernet {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub vlans: Vec<Vlan>,
}

impl Default for Ethernet {
    fn default() -> Self {
        Ethernet {
            dst: MAC_GW,
            src: MAC_CLIENT,
            vlans: Vec::new(),
        }
    }
}

impl Ethernet {
    pub fn encode(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + 4 * self.vlans.len() + payload.len());
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        for v in &self.vlans {
            f.extend_from_slice(&v.tpid.to_be_bytes());
            f.extend_from_slice(&v.tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
}

/// An IPv4 TCP frame with default addresses' MACs, `seq` 1000 and no options.
pub fn tcp4(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let seg = Tcp::new(sport, dport, flags).encode(src.into(), dst.into(), payload);
    Ethernet::default().encode(ETH_P_IPV4, &Ipv4::new(src, dst, IPPROTO_TCP).encode(&seg))
}

/// An IPv6 TCP frame.
pub fn tcp6(
    src: Ipv6Addr,
    sport: u16,
    dst: Ipv6Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let seg = Tcp::new(sport, dport, flags).encode(src.into(), dst.into(), payload);
    Ethernet::default().encode(ETH_P_IPV6, &Ipv6::new(src, dst, IPPROTO_TCP).encode(&seg))
}

/// An IPv4 UDP frame.
pub fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let d = Udp { sport, dport }.encode(src.into(), dst.into(), payload);
    Ethernet::default().encode(ETH_P_IPV4, &Ipv4::new(src, dst, IPPROTO_UDP).encode(&d))
}

/// An IPv6 UDP frame.
pub fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let d = Udp { sport, dport }.encode(src.into(), dst.into(), payload);
    Ethernet::default().encode(ETH_P_IPV6, &Ipv6::new(src, dst, IPPROTO_UDP).encode(&d))
}

/// Inserts `tag` as the outermost VLAN tag of an Ethernet frame.
pub fn with_tag(frame: &[u8], tag: Vlan) -> Vec<u8> {
    assert!(frame.len() >= 14, "not an Ethernet frame");
    let mut f = Vec::with_capacity(frame.len() + 4);
    f.extend_from_slice(&frame[..12]);
    f.extend_from_slice(&tag.tpid.to_be_bytes());
    f.extend_from_slice(&tag.tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// The frame with an 802.1Q tag for VLAN `vid`.
pub fn with_vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    with_tag(frame, Vlan::dot1q(vid))
}

/// The frame with Q-in-Q tags: 802.1ad `outer`, then 802.1Q `inner`.
pub fn with_qinq(frame: &[u8], outer: u16, inner: u16) -> Vec<u8> {
    with_tag(&with_tag(frame, Vlan::dot1q(inner)), Vlan::dot1ad(outer))
}

/// Where the layers of a frame start, as a parser that follows the same rules finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub l3: usize,
    pub l4: usize,
    pub payload: usize,
    pub protocol: u8,
}

/// Finds the L3, L4 and payload offsets of a TCP or UDP frame built here (VLAN tags, IPv4
/// options, IPv6 extension headers). For tests of the builders and of captured frames.
pub fn offsets(frame: &[u8]) -> Option<Offsets> {
    let mut p = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(p)?, *frame.get(p + 1)?]);
    let mut tags = 0;
    while (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) && tags < 4 {
        p += 4;
        tags += 1;
        ethertype = u16::from_be_bytes([*frame.get(p)?, *frame.get(p + 1)?]);
    }
    let l3 = p + 2;
    let (mut proto, mut l4) = match ethertype {
        ETH_P_IPV4 => (
            *frame.get(l3 + 9)?,
            l3 + usize::from(frame.get(l3)? & 0x0f) * 4,
        ),
        ETH_P_IPV6 => (*frame.get(l3 + 6)?, l3 + 40),
        _ => return None,
    };
    let mut n = 0;
    while ethertype == ETH_P_IPV6 && n < 8 {
        match proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let next = *frame.get(l4)?;
                l4 += (usize::from(*frame.get(l4 + 1)?) + 1) * 8;
                proto = next;
            }
            IPPROTO_FRAGMENT => {
                proto = *frame.get(l4)?;
                l4 += 8;
            }
            _ => break,
        }
        n += 1;
    }
    let payload = match proto {
        IPPROTO_TCP => l4 + usize::from(frame.get(l4 + 12)? >> 4) * 4,
        IPPROTO_UDP => l4 + 8,
        _ => return None,
    };
    (payload <= frame.len()).then_some(Offsets {
        l3,
        l4,
        payload,
        protocol: proto,
    })
}

/// A data segment's payload that no matcher claims: a fixed xorshift stream, which looks like
/// ciphertext and is the same on every run.
pub fn opaque(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

    fn be16(b: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([b[i], b[i + 1]])
    }

    /// A correct checksum sums (with itself included) to zero.
    fn l4_checksum_ok(frame: &[u8]) -> bool {
        let o = offsets(frame).unwrap();
        let seg = &frame[o.l4..];
        let (src, dst): (IpAddr, IpAddr) = if frame[o.l3] >> 4 == 4 {
            (
                Ipv4Addr::from(<[u8; 4]>::try_from(&frame[o.l3 + 12..o.l3 + 16]).unwrap()).into(),
                Ipv4Addr::from(<[u8; 4]>::try_from(&frame[o.l3 + 16..o.l3 + 20]).unwrap()).into(),
            )
        } else {
            (
                Ipv6Addr::from(<[u8; 16]>::try_from(&frame[o.l3 + 8..o.l3 + 24]).unwrap()).into(),
                Ipv6Addr::from(<[u8; 16]>::try_from(&frame[o.l3 + 24..o.l3 + 40]).unwrap()).into(),
            )
        };
        checksum(pseudo_sum(src, dst, o.protocol, seg.len()), seg) == 0
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2, its complement 220d.
        assert_eq!(
            checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
        // An odd length pads with a zero byte.
        assert_eq!(checksum(0, &[0x01]), !0x0100);
    }

    #[test]
    fn tcp4_frame_layout_and_checksums() {
        let f = tcp4(
            A4,
            40000,
            B4,
            443,
            tcp_flags::PSH | tcp_flags::ACK,
            b"hello",
        );
        assert_eq!(f.len(), 14 + 20 + 20 + 5);
        assert_eq!(be16(&f, 12), ETH_P_IPV4);
        assert_eq!(f[14], 0x45);
        assert_eq!(usize::from(be16(&f, 16)), 20 + 20 + 5);
        assert_eq!(checksum(0, &f[14..34]), 0, "IPv4 header checksum");
        assert_eq!(f[14 + 9], IPPROTO_TCP);
        assert_eq!(be16(&f, 34), 40000);
        assert_eq!(be16(&f, 36), 443);
        assert_eq!(f[34 + 13], tcp_flags::PSH | tcp_flags::ACK);
        assert!(l4_checksum_ok(&f));
        assert_eq!(&f[offsets(&f).unwrap().payload..], b"hello");
    }

    #[test]
    fn tcp_options_move_the_payload() {
        let mut t = Tcp::new(1, 2, tcp_flags::SYN);
        t.options = Tcp::syn_options();
        let seg = t.encode(A4.into(), B4.into(), b"x");
        assert_eq!(seg[12] >> 4, 10, "20 bytes of options: data offset 10");
        assert_eq!(seg[40], b'x');
        let f =
            Ethernet::default().encode(ETH_P_IPV4, &Ipv4::new(A4, B4, IPPROTO_TCP).encode(&seg));
        assert!(l4_checksum_ok(&f));
        assert_eq!(offsets(&f).unwrap().payload, 14 + 20 + 40);
    }

    #[test]
    fn ipv4_options_and_fragment_fields() {
        let mut ip = Ipv4::new(A4, B4, IPPROTO_UDP);
        ip.options = vec![7, 7, 4, 0, 0, 0, 0]; // record route, padded to 8
        ip.dont_fragment = false;
        ip.more_fragments = true;
        ip.frag_offset = 185;
        let p = ip.encode(&[0; 16]);
        assert_eq!(p[0], 0x47, "IHL 7 words");
        assert_eq!(p.len(), 28 + 16);
        assert_eq!(be16(&p, 6), 0x2000 | 0x00b9);
        assert_eq!(checksum(0, &p[..28]), 0);
    }

    #[test]
    fn udp_frames_both_families() {
        let f4 = udp4(A4, 5000, B4, 3478, b"abc");
        assert_eq!(f4.len(), 14 + 20 + 8 + 3);
        assert_eq!(be16(&f4, 38), 11, "UDP length");
        assert!(l4_checksum_ok(&f4));
        let f6 = udp6(A6, 5000, B6, 3478, b"abcd");
        assert_eq!(f6.len(), 14 + 40 + 8 + 4);
        assert_eq!(be16(&f6, 12), ETH_P_IPV6);
        assert_eq!(be16(&f6, 18), 12, "payload length");
        assert_eq!(f6[20], IPPROTO_UDP);
        assert!(l4_checksum_ok(&f6));
    }

    #[test]
    fn ipv6_extension_chain_links_next_headers() {
        let mut ip = Ipv6::new(A6, B6, IPPROTO_TCP);
        ip.ext = vec![
            Ext6::HopByHop(vec![]),
            Ext6::Routing {
                routing_type: 0,
                segments_left: 0,
                data: vec![0; 4],
            },
            Ext6::DestOpts(vec![0x1e, 2, 0, 0]),
            Ext6::Fragment {
                offset: 0,
                more: true,
                id: 7,
            },
        ];
        let seg = Tcp::new(1234, 5222, tcp_flags::ACK).encode(A6.into(), B6.into(), b"<?xml");
        let p = ip.encode(&seg);
        assert_eq!(p[6], IPPROTO_HOPOPTS);
        let mut off = 40;
        let mut kinds = Vec::new();
        for _ in 0..4 {
            kinds.push(p[off]);
            let len = if kinds.len() == 4 {
                8
            } else {
                (usize::from(p[off + 1]) + 1) * 8
            };
            assert_eq!(len % 8, 0);
            off += len;
        }
        assert_eq!(
            kinds,
            vec![
                IPPROTO_ROUTING,
                IPPROTO_DSTOPTS,
                IPPROTO_FRAGMENT,
                IPPROTO_TCP
            ]
        );
        assert_eq!(usize::from(be16(&p, 4)), p.len() - 40);
        let f = Ethernet::default().encode(ETH_P_IPV6, &p);
        let o = offsets(&f).unwrap();
        assert_eq!(o.protocol, IPPROTO_TCP);
        assert_eq!(&f[o.payload..], b"<?xml");
        assert!(l4_checksum_ok(&f));
    }

    #[test]
    fn vlan_tags_are_inserted_outermost_first() {
        let f = udp4(A4, 1, B4, 2, b"x");
        let v = with_vlan(&f, 100);
        assert_eq!(v.len(), f.len() + 4);
        assert_eq!(be16(&v, 12), ETH_P_8021Q);
        assert_eq!(be16(&v, 14), 100);
        assert_eq!(be16(&v, 16), ETH_P_IPV4);
        let q = with_qinq(&f, 10, 20);
        assert_eq!(be16(&q, 12), ETH_P_8021AD);
        assert_eq!(be16(&q, 14), 10);
        assert_eq!(be16(&q, 16), ETH_P_8021Q);
        assert_eq!(be16(&q, 18), 20);
        assert_eq!(be16(&q, 20), ETH_P_IPV4);
        assert_eq!(&q[offsets(&q).unwrap().payload..], b"x");
    }
}
