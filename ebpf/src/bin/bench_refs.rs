//! Reference programs for the XDP cost bench (`cargo xtask bench`, `examples/bench_xdp.rs`):
//! imfw's figures are read against what an XDP program costs at all, and against what any
//! stateful XDP firewall must pay per packet.
//!
//! - `bench_empty` returns `XDP_PASS` and does nothing else: the floor of a program run.
//! - `bench_stateful` parses Ethernet (up to two VLAN tags), IPv4 or IPv6, TCP or UDP ports,
//!   builds the same canonical 5-tuple key as imfw (both directions share one entry), does one
//!   lookup in its own LRU hash of imfw's default capacity, inserts an entry on a miss and
//!   returns the stored verdict. It walks no IPv6 extension headers and inspects no payload:
//!   that is the minimum, not a firewall.
//!
//! Not loaded by imfw: the bench embeds this object on its own.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::LruHashMap, programs::XdpContext,
};
use imfw_common::{flow::FlowKey, maps::FLOWS_DEFAULT};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// What a minimal stateful firewall keeps per flow: its verdict and a packet counter.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RefEntry {
    pub packets: u64,
    pub verdict: u32,
    pub _pad: u32,
}

#[map]
static BENCH_REF_FLOWS: LruHashMap<FlowKey, RefEntry> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT, 0);

/// The floor: a program run that does nothing.
#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Parse, one flow-table lookup (insert on a miss), the stored verdict. Anything it cannot
/// parse passes, as one verdict on error.
#[xdp]
pub fn bench_stateful(ctx: XdpContext) -> u32 {
    match try_stateful(&ctx) {
        Some(v) => v,
        None => xdp_action::XDP_PASS,
    }
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

#[inline(always)]
fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: ptr_at checked both bytes are inside the packet.
    ptr_at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn try_stateful(ctx: &XdpContext) -> Option<u32> {
    let mut off = 12usize;
    let mut proto = be16_at(ctx, off)?;
    off += 2;
    // Up to two tags, as imfw parses them.
    let mut tags = 0;
    while tags < 2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16_at(ctx, off + 2)?;
        off += 4;
        tags += 1;
    }
    let (src, dst, l4proto, l4, family) = match proto {
        ETH_P_IP => {
            // The fixed header in one checked read, before the variable-offset L4 read.
            // SAFETY: 20 bytes checked by ptr_at.
            let h = unsafe { *ptr_at::<[u8; 20]>(ctx, off)? };
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if h[0] >> 4 != 4 || ihl < 20 {
                return None;
            }
            let src = [u32::from_ne_bytes([h[12], h[13], h[14], h[15]]), 0, 0, 0];
            let dst = [u32::from_ne_bytes([h[16], h[17], h[18], h[19]]), 0, 0, 0];
            (src, dst, h[9], off + ihl, 4u8)
        }
        ETH_P_IPV6 => {
            // SAFETY: 40 bytes checked by ptr_at.
            let h = unsafe { core::ptr::read_unaligned(ptr_at::<[u32; 10]>(ctx, off)?) };
            let next = h[1].to_ne_bytes()[2];
            (
                [h[2], h[3], h[4], h[5]],
                [h[6], h[7], h[8], h[9]],
                next,
                off + 40,
                6u8,
            )
        }
        _ => return None,
    };
    if l4proto != IPPROTO_TCP && l4proto != IPPROTO_UDP {
        return None;
    }
    // SAFETY: 4 bytes checked by ptr_at; both TCP and UDP start with the two ports.
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, l4)? };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let (key, _) = FlowKey::canonical(src, sport, dst, dport, l4proto, family);
    if let Some(e) = BENCH_REF_FLOWS.get_ptr_mut(&key) {
        // SAFETY: pointer into the map's value, valid for this run; the counter is a statistic.
        unsafe {
            (*e).packets += 1;
            return Some((*e).verdict);
        }
    }
    let e = RefEntry {
        packets: 1,
        verdict: xdp_action::XDP_PASS,
        _pad: 0,
    };
    if BENCH_REF_FLOWS.insert(&key, &e, 0).is_err() {
        return None;
    }
    Some(e.verdict)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
