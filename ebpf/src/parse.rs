//! Header parsing: Ethernet (up to two VLAN tags), IPv4 with options, IPv6 with a bounded
//! extension-header chain, TCP and UDP. Every read is bounds-checked against `data_end`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use imfw_common::{
    flow::FlowKey,
    matcher::{Bytes, HELLO_WINDOW, SCRATCH_MASK},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers walked before giving up (RFC 8200 §4.1 recommends an order in which
/// each appears at most once or twice; six covers hop-by-hop, destination (twice), routing,
/// fragment and AH).
const IPV6_EXT_MAX: usize = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP or UDP packet's place in its flow.
pub struct Pkt {
    pub key: FlowKey,
    /// The sender is endpoint `a` of the canonical key.
    pub src_is_a: bool,
    pub payload_off: usize,
    pub payload_len: usize,
    pub tcp_flags: u8,
    /// TCP sequence number (0 for UDP).
    pub seq: u32,
}

pub enum Parsed {
    Flow(Pkt),
    NonIp,
    OtherL4,
    Fragment,
    Malformed,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Two bytes at once: a one-byte check compiles to a `>=` comparison the verifier does not
/// turn into a packet range.
#[inline(always)]
fn two_at(ctx: &XdpContext, off: usize) -> Option<[u8; 2]> {
    // SAFETY: ptr_at checked both bytes are inside the packet.
    ptr_at::<[u8; 2]>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: ptr_at checked both bytes are inside the packet.
    ptr_at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// A payload read where it lies in the packet (see [`Bytes`]), each read bounds-checked: a
/// parser that needs a few of its bytes (a ClientHello's lengths and extension headers, the
/// prefilter's eight, a name's words) costs no copy of them all.
#[derive(Clone, Copy)]
pub struct InPacket {
    start: usize,
    end: usize,
}

impl InPacket {
    /// The payload at `payload_off` of `ctx`'s packet.
    #[inline(always)]
    pub fn new(ctx: &XdpContext, payload_off: usize) -> InPacket {
        // Bounded for the verifier (with an index below SCRATCH_LEN, within its 64 KiB limit on
        // packet offsets); a frame without fragments is a page at most.
        InPacket { start: ctx.data() + (payload_off & PAYLOAD_OFF_MASK), end: ctx.data_end() }
    }

    /// Where payload bytes `i .. i + n` lie, when the packet holds them all.
    #[inline(always)]
    fn bytes(&self, i: usize, n: usize) -> Option<*const u8> {
        // Compared as pointers, without `inbounds`: compared as integers, LLVM turns `p + 1 >
        // end` into `p >= end`, from which the verifier learns no packet range.
        let p = (self.start as *const u8).wrapping_add(i & SCRATCH_MASK);
        if p.wrapping_add(n) > self.end as *const u8 { None } else { Some(p) }
    }

    /// The payload's first [`HELLO_WINDOW`] bytes, when the packet holds them all.
    #[inline(always)]
    pub fn window(&self) -> Option<Window> {
        let p = self.bytes(0, HELLO_WINDOW)?;
        // SAFETY: the packet holds HELLO_WINDOW bytes from `p`; the kernel reads unaligned
        // packet memory (see build.rs).
        let word = |k: usize| unsafe { core::ptr::read_unaligned(p.wrapping_add(8 * k).cast::<u64>()) };
        Some(Window(core::array::from_fn(word)))
    }
}

/// The first [`HELLO_WINDOW`] bytes of a payload (see [`InPacket::window`]), read from the
/// packet in four words at constant offsets after one bounds check: the verifier keeps a
/// checked range only for constant offsets from the checked pointer, so a byte at an offset
/// from the data (a prefilter position) is taken from these words instead.
pub struct Window([u64; HELLO_WINDOW / 8]);

impl Window {
    /// Byte `i % HELLO_WINDOW`.
    #[inline(always)]
    pub fn at(&self, i: usize) -> u8 {
        let i = i & (HELLO_WINDOW - 1);
        (self.0[i >> 3] >> ((i & 7) * 8)) as u8
    }
}

/// Payload offsets [`InPacket`] reads from: every offset in a frame.
const PAYLOAD_OFF_MASK: usize = 0x7fff;

impl Bytes for InPacket {
    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        // SAFETY: the byte lies before the packet's end, checked by `bytes`.
        self.bytes(i, 1).map_or(0, |p| unsafe { *p })
    }

    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        // SAFETY: the eight bytes lie before the packet's end, checked by `bytes`; the kernel
        // reads unaligned packet memory (see build.rs).
        self.bytes(i, 8).map_or(0, |p| unsafe { core::ptr::read_unaligned(p.cast::<u64>()) })
    }

    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        // SAFETY: as for `word`, two bytes.
        self.bytes(i, 2).map_or(0, |p| u16::from_be(unsafe { core::ptr::read_unaligned(p.cast::<u16>()) }))
    }

    #[inline(always)]
    fn be32(&self, i: usize) -> u32 {
        // SAFETY: as for `word`, four bytes.
        self.bytes(i, 4).map_or(0, |p| u32::from_be(unsafe { core::ptr::read_unaligned(p.cast::<u32>()) }))
    }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    match try_parse(ctx) {
        Ok(p) => p,
        Err(()) => Parsed::Malformed,
    }
}

#[inline(always)]
fn try_parse(ctx: &XdpContext) -> Result<Parsed, ()> {
    let mut off = 12usize;
    let mut proto = be16_at(ctx, off).ok_or(())?;
    off += 2;
    // Up to two tags: 802.1ad outer + 802.1Q inner, or one of them.
    let mut tags = 0;
    while tags < 2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16_at(ctx, off + 2).ok_or(())?;
        off += 4;
        tags += 1;
    }
    match proto {
        ETH_P_IP => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        // A third tag is more than we parse: say so rather than misread it.
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        _ => Ok(Parsed::NonIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Parsed, ()> {
    // The fixed header in one checked read, before any variable-offset check: LLVM otherwise
    // folds these fixed-offset checks into the options check below, which the verifier cannot
    // follow. Read as words: the addresses are used whole, and the other fields come out of
    // registers, where a byte array had each byte loaded and spilled on its own.
    // SAFETY: 20 bytes checked by ptr_at.
    let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u32; 5]>(ctx, l3).ok_or(())?) };
    let w0 = h[0].to_ne_bytes();
    if w0[0] >> 4 != 4 {
        return Err(());
    }
    let ihl = ((w0[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(());
    }
    let total = u16::from_be_bytes([w0[2], w0[3]]) as usize;
    if total < ihl {
        return Err(());
    }
    let w1 = h[1].to_ne_bytes();
    let frag = u16::from_be_bytes([w1[2], w1[3]]);
    let proto = h[2].to_ne_bytes()[1];
    if frag & 0x1fff != 0 {
        // A non-first fragment carries no L4 header: reading one would misread payload.
        return Ok(Parsed::Fragment);
    }
    l4(ctx, l3 + ihl, total - ihl, proto, [h[3], 0, 0, 0], [h[4], 0, 0, 0], 4)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Parsed, ()> {
    // SAFETY: 40 bytes checked by ptr_at.
    let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u32; 10]>(ctx, l3).ok_or(())?) };
    let b = h[0].to_ne_bytes();
    if b[0] >> 4 != 6 {
        return Err(());
    }
    let w1 = h[1].to_ne_bytes();
    let plen = u16::from_be_bytes([w1[0], w1[1]]) as usize;
    let mut next = w1[2];
    let src = [h[2], h[3], h[4], h[5]];
    let dst = [h[6], h[7], h[8], h[9]];
    let mut off = l3 + 40;
    let mut ext_len = 0usize;
    let mut i = 0;
    while i < IPV6_EXT_MAX {
        // Each header is at most 2 KiB; bounding the running offset keeps it a small range.
        if off > 4096 {
            return Err(());
        }
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units beyond the first.
            0 | 43 | 60 => {
                let [n, l] = two_at(ctx, off).ok_or(())?;
                let hl = (l as usize + 1) * 8;
                next = n;
                off += hl;
                ext_len += hl;
            }
            // Fragment header (RFC 8200 §4.5): a non-first fragment has no L4 header.
            44 => {
                // SAFETY: 4 bytes checked by ptr_at.
                let h = unsafe { *ptr_at::<[u8; 4]>(ctx, off).ok_or(())? };
                let n = h[0];
                let fo = u16::from_be_bytes([h[2], h[3]]);
                if fo & 0xfff8 != 0 {
                    return Ok(Parsed::Fragment);
                }
                next = n;
                off += 8;
                ext_len += 8;
            }
            // AH (RFC 4302 §2.2): length in 4-octet units, minus 2.
            51 => {
                let [n, l] = two_at(ctx, off).ok_or(())?;
                let hl = (l as usize + 2) * 4;
                next = n;
                off += hl;
                ext_len += hl;
            }
            _ => break,
        }
        i += 1;
    }
    match next {
        0 | 43 | 60 | 44 | 51 => Err(()),
        _ => {
            if plen < ext_len {
                return Err(());
            }
            l4(ctx, off, plen - ext_len, next, src, dst, 6)
        }
    }
}

/// `ip_payload` is the L4 length the IP header declares: frames may carry Ethernet padding past
/// it, which is not payload.
#[inline(always)]
fn l4(
    ctx: &XdpContext,
    off: usize,
    ip_payload: usize,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    family: u8,
) -> Result<Parsed, ()> {
    // Bound the offset for the verifier; real headers end far below this.
    if off > 1024 {
        return Err(());
    }
    let (sport, dport, hdr, flags, seq) = match proto {
        IPPROTO_TCP => {
            // Ports, sequence number, acknowledgment number, data offset and flags, as words.
            // SAFETY: 16 bytes checked by ptr_at (the fixed header is 20).
            let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u32; 4]>(ctx, off).ok_or(())?) };
            let ports = h[0].to_ne_bytes();
            let w3 = h[3].to_ne_bytes();
            // The payload starts at data offset * 4, not after the fixed 20 bytes (options).
            let doff = ((w3[0] >> 4) as usize) * 4;
            if doff < 20 {
                return Err(());
            }
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
                doff,
                w3[1],
                u32::from_be(h[1]),
            )
        }
        IPPROTO_UDP => {
            let h = ptr_at::<[u8; 8]>(ctx, off).ok_or(())?;
            // SAFETY: 8 bytes checked by ptr_at.
            let h = unsafe { *h };
            (u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]), 8, 0, 0)
        }
        _ => return Ok(Parsed::OtherL4),
    };
    if ip_payload < hdr {
        return Err(());
    }
    let frame = ctx.data_end() - ctx.data();
    let payload_off = off + hdr;
    if payload_off > frame {
        return Err(());
    }
    // Truncated captures or snapped frames: inspect what is there.
    let mut payload_len = ip_payload - hdr;
    if payload_off + payload_len > frame {
        payload_len = frame - payload_off;
    }
    let (key, src_is_a) = FlowKey::canonical(src, sport, dst, dport, proto, family);
    Ok(Parsed::Flow(Pkt { key, src_is_a, payload_off, payload_len, tcp_flags: flags, seq }))
}
