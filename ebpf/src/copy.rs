//! Copies of payloads for the controller, through the `IMFW_EVENTS` ring buffer.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use imfw_common::{
    event::{PAYLOAD_EVENT_DATA, PayloadEvent},
    flow::FlowKey,
};

use crate::maps::IMFW_EVENTS;

/// One payload to copy: where it lies in the packet and what the controller needs to place it.
pub struct Copy {
    pub kind: u32,
    pub key: FlowKey,
    pub payload_off: u32,
    pub payload_len: u32,
    pub seq: u32,
    pub dir: u8,
    pub client_is_a: u8,
    pub tcp_flags: u8,
}

/// Copies up to `PAYLOAD_EVENT_DATA` bytes of the payload (none for a bare FIN or RST) into a
/// ring buffer record. False when the ring is full or the packet could not be read: the caller
/// counts the loss.
#[inline(always)]
pub fn copy(ctx: &XdpContext, c: &Copy) -> bool {
    let Some(mut slot) = IMFW_EVENTS.reserve::<PayloadEvent>(0) else {
        return false;
    };
    let ev = slot.as_mut_ptr();
    let want = c.payload_len as usize & 0xffff;
    let want = if want > PAYLOAD_EVENT_DATA { PAYLOAD_EVENT_DATA } else { want };
    // SAFETY: `ev` points at the reserved record; the helper writes at most n bytes into its
    // data array, which holds PAYLOAD_EVENT_DATA.
    let rc = unsafe {
        (*ev).kind = c.kind;
        (*ev).ifindex = ctx.ingress_ifindex() as u32;
        (*ev).key = c.key;
        (*ev).seq = c.seq;
        (*ev).len = want as u16;
        (*ev).dir = c.dir;
        (*ev).client_is_a = c.client_is_a;
        (*ev).wire_len = if c.payload_len > 0xffff { 0xffff } else { c.payload_len as u16 };
        (*ev).tcp_flags = c.tcp_flags;
        (*ev)._pad = [0; 5];
        if want == 0 {
            0
        } else {
            // In [1, PAYLOAD_EVENT_DATA] for the helper's size argument.
            let n = (want.wrapping_sub(1) & (PAYLOAD_EVENT_DATA - 1)) + 1;
            bpf_xdp_load_bytes(ctx.ctx, c.payload_off, (*ev).data.as_mut_ptr().cast(), n as u32)
        }
    };
    if rc == 0 {
        slot.submit(0);
        true
    } else {
        slot.discard(0);
        false
    }
}
