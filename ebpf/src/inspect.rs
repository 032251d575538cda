//! The payload inspector: a second XDP program, tail-called by the main one for the first
//! payload packets of a flow. It runs the matchers, decides the flow, then counts and enforces
//! the packet, exactly as the main program would have.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use imfw_common::{
    app::APP_NONE,
    verdict::{Method, Stat, Verdict},
};

use crate::{
    enforce,
    flow::decide,
    maps::{IMFW_FLOWS, IMFW_SCRATCH, config, count_stat, count_verdict},
    matching,
};

#[xdp]
pub fn imfw_inspect(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (Some(cfg), Some(scratch)) = (config(), IMFW_SCRATCH.get_ptr_mut(0)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU scratch written by the main program just before the tail call. A volatile
    // read: its fields are unknown values to the verifier, one state for all callers.
    let job = unsafe { core::ptr::read_volatile(&(*scratch).job) };
    let Some(e) = IMFW_FLOWS.get_ptr_mut(&job.key) else {
        count_verdict(APP_NONE, Verdict::Pending as u8, len);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: pointer into the flow table's value, valid for this run.
    let e = unsafe { &mut *e };
    match matching::inspect(&ctx, cfg, &job, scratch) {
        Some((app, method)) => {
            count_stat(Stat::Classified);
            decide(&ctx, &job.key, e, app, method);
        }
        None if e.budget_client == 0 && e.budget_server == 0 => {
            count_stat(Stat::Unclassified);
            decide(&ctx, &job.key, e, APP_NONE, Method::None);
        }
        None => {}
    }
    count_verdict(e.app, e.verdict, len);
    enforce(e.verdict, e.redirect_slot, len)
}
