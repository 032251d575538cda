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
//! - `bench_gen` is no reference but the end-to-end bench's traffic generator: run with
//!   `BPF_PROG_TEST_RUN` in live-frames mode on a veth, it rewrites each frame it is given into
//!   the next frame of a traffic mix held in `BENCH_GEN_FRAMES` and sends it out of that veth
//!   (`XDP_TX`), so that one call plays a whole mix, in order, to the program on the peer.
//! - `bench_replay` is no reference either but the in-kernel benches' player: run with
//!   `BPF_PROG_TEST_RUN` and `repeat` N, it rewrites the frame into the next of the frames in
//!   `BENCH_GEN_FRAMES` (as `bench_gen` does) and tail-calls the program under test in
//!   `BENCH_REPLAY_TARGET`. One call runs N different frames back to back, as a driver's poll
//!   loop does, so a figure carries the player's copy of each frame (measured on its own with
//!   the empty program as the target) but not a system call per frame.
//!
//! Not loaded by imfw: the bench embeds this object on its own.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::map,
    macros::xdp,
    maps::{Array, LruHashMap, ProgramArray},
    programs::XdpContext,
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

/// The longest frame the generator sends: an Ethernet frame of a 1500-byte MTU with two VLAN
/// tags fits.
pub const GEN_FRAME_MAX: usize = 1528;

/// Room for a frame in the map: a power of two, so that a mask bounds the length for the
/// verifier whatever the compiler does with the range check before it.
const GEN_FRAME_ROOM: usize = 2048;

/// One frame of the mix: its length and bytes.
#[repr(C)]
pub struct GenFrame {
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; GEN_FRAME_ROOM],
}

/// Where the generator stands in its mix: the next frame to send and the mix's length.
#[repr(C)]
pub struct GenCursor {
    pub next: u32,
    pub count: u32,
}

/// The mix, in sending order; sized by the loader to the mix's length.
#[map]
static BENCH_GEN_FRAMES: Array<GenFrame> = Array::with_max_entries(1, 0);

/// One cursor. A plain array, not a per-CPU one: one injector runs the generator at a time,
/// on one CPU (a test run does not migrate), and userspace reads and rewinds one value.
#[map]
static BENCH_GEN_CURSOR: Array<GenCursor> = Array::with_max_entries(1, 0);

/// The program the player hands each frame to (slot 0), set by the loader.
#[map]
static BENCH_REPLAY_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

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

/// The traffic generator: the frame becomes the mix's next frame, sent back out of the
/// interface it was injected on. A frame it cannot write is aborted (counted by the kernel's
/// `xdp_exception` tracepoint) rather than sent wrong.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match try_gen(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// The player: the frame becomes the next frame of `BENCH_GEN_FRAMES`, which the program in
/// `BENCH_REPLAY_TARGET` then runs on; its action is the run's. A frame it cannot write, or a
/// missing target, aborts the run.
#[xdp]
pub fn bench_replay(ctx: XdpContext) -> u32 {
    if try_gen(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call on this program's own context; it returns only if it failed.
    unsafe { BENCH_REPLAY_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Option<()> {
    let cur = BENCH_GEN_CURSOR.get_ptr_mut(0)?;
    // SAFETY: pointer into the map's one value, valid for this run; only this program and,
    // between runs, userspace write it.
    let i = unsafe {
        let i = (*cur).next;
        let n = (*cur).count;
        if n == 0 {
            return None;
        }
        (*cur).next = if i + 1 >= n { 0 } else { i + 1 };
        i
    };
    let f = BENCH_GEN_FRAMES.get_ptr(i)?;
    // SAFETY: pointer into the map's value, valid for this run.
    let len = unsafe { (*f).len } as usize;
    if !(14..=GEN_FRAME_MAX).contains(&len) {
        return None;
    }
    // The same length, in 1..=GEN_FRAME_ROOM for the verifier (the store reads `len` bytes
    // of the value): LLVM turns the range check above into one on a copy, which it cannot
    // follow.
    let len = ((len - 1) & (GEN_FRAME_ROOM - 1)) + 1;
    let have = ctx.data_end() - ctx.data();
    // Both lengths are below a page: the casts are exact.
    let delta = len as i32 - have as i32;
    if delta != 0 {
        // SAFETY: a helper call on this program's own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return None;
        }
    }
    // SAFETY: `len` bytes of the map value, bounds checked above; the frame is `len` long now.
    let rc = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, (*f).data.as_ptr() as *mut _, len as u32) };
    (rc == 0).then_some(())
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
