//! A userspace reading of a frame's flow tuple, for offline reports. The XDP program decides;
//! this only names the flow the way a person reads it (who sent the first packet).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use imfw_common::flow::FlowKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Tuple {
    /// The canonical key the kernel uses for this packet's flow.
    pub fn key(&self) -> FlowKey {
        FlowKey::canonical(words(self.src), self.sport, words(self.dst), self.dport, self.proto, family(self.src)).0
    }

    pub fn l4(&self) -> &'static str {
        if self.proto == 6 { "tcp" } else { "udp" }
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() { 4 } else { 6 }
}

/// Address words as the kernel loads them from the packet (native order of network bytes).
pub fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut w = [0u32; 4];
            for (i, c) in o.chunks_exact(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            w
        }
    }
}

/// The address a key word array holds.
pub fn addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// The TCP/UDP tuple of an Ethernet frame; `None` for anything else (and for non-first
/// fragments, which carry no ports).
pub fn tuple(f: &[u8]) -> Option<Tuple> {
    let mut off = 12;
    let mut et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    off += 2;
    for _ in 0..2 {
        if et != 0x8100 && et != 0x88a8 {
            break;
        }
        et = u16::from_be_bytes([*f.get(off + 2)?, *f.get(off + 3)?]);
        off += 4;
    }
    let (proto, src, dst, l4) = match et {
        0x0800 => {
            let ihl = usize::from(f.get(off)? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*f.get(off + 6)?, *f.get(off + 7)?]);
            if frag & 0x1fff != 0 || ihl < 20 {
                return None;
            }
            let s: [u8; 4] = f.get(off + 12..off + 16)?.try_into().ok()?;
            let d: [u8; 4] = f.get(off + 16..off + 20)?.try_into().ok()?;
            (*f.get(off + 9)?, IpAddr::from(s), IpAddr::from(d), off + ihl)
        }
        0x86dd => {
            let s: [u8; 16] = f.get(off + 8..off + 24)?.try_into().ok()?;
            let d: [u8; 16] = f.get(off + 24..off + 40)?.try_into().ok()?;
            let mut next = *f.get(off + 6)?;
            let mut p = off + 40;
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 => {
                        next = *f.get(p)?;
                        p += (usize::from(*f.get(p + 1)?) + 1) * 8;
                    }
                    44 => {
                        let fo = u16::from_be_bytes([*f.get(p + 2)?, *f.get(p + 3)?]);
                        if fo & 0xfff8 != 0 {
                            return None;
                        }
                        next = *f.get(p)?;
                        p += 8;
                    }
                    51 => {
                        next = *f.get(p)?;
                        p += (usize::from(*f.get(p + 1)?) + 2) * 4;
                    }
                    _ => break,
                }
            }
            (next, IpAddr::from(s), IpAddr::from(d), p)
        }
        _ => return None,
    };
    if proto != 6 && proto != 17 {
        return None;
    }
    let sport = u16::from_be_bytes([*f.get(l4)?, *f.get(l4 + 1)?]);
    let dport = u16::from_be_bytes([*f.get(l4 + 2)?, *f.get(l4 + 3)?]);
    Some(Tuple { proto, src, sport, dst, dport })
}
