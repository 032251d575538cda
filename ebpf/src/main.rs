//! imfw's XDP program: parse -> flow state -> match -> verdict.
//!
//! Every packet of a flow costs one flow-table lookup; only the first payload packets of each
//! direction go through the matchers, whose cost is bounded by the number of signature shapes
//! and domain labels, never by the number of apps or domains in the policy.
#![no_std]
#![no_main]
// `#[inline(always)]` on a closure (the name matcher's lookup, see matching.rs): the program
// is built with the nightly toolchain anyway (`-Z build-std`).
#![feature(stmt_expr_attributes)]

mod copy;
mod flow;
mod inspect;
mod klog;
mod maps;
mod matching;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use imfw_common::{
    app::APP_NONE,
    config::{ACTION_DROP, Config},
    flow::{FLAG_CONTROLLER, FlowEntry, STATE_INSPECTING},
    matcher::{NAME_HASH_INIT, name_hash_word},
    verdict::{DropReason, Stat, Verdict},
};

use crate::{
    maps::{count_drop, count_stat},
    parse::{Parsed, parse},
};

#[xdp]
pub fn imfw_xdp(ctx: XdpContext) -> u32 {
    // Every packet ends in exactly one counter (a verdict cell, or one of the stats of the
    // arms below), so userspace sums them into `Stat::Packets`: no counter of its own on the
    // per-packet path.
    let len = (ctx.data_end() - ctx.data()) as u64;
    let all = match maps::config() {
        Some(c) => c,
        None => {
            // The array's one slot always exists; the verifier makes us handle its absence.
            // In a tagged build this arm, which never runs, carries the tag, so that a rebuilt
            // binary loads new code (another program tag). An untagged build compiles to the
            // code it had without it.
            if BUILD_TAG_HASH != 0 {
                core::hint::black_box(BUILD_TAG_HASH);
            }
            return xdp_action::XDP_PASS;
        }
    };
    let cfg = maps::active(all);
    match parse(&ctx) {
        Parsed::Flow(pkt) => {
            if all.ready == 0 {
                return xdp_action::XDP_PASS;
            }
            flow::handle(&ctx, cfg, &pkt, len)
        }
        Parsed::NonIp => {
            count_stat(Stat::NonIp);
            xdp_action::XDP_PASS
        }
        Parsed::OtherL4 => {
            count_stat(Stat::OtherL4);
            xdp_action::XDP_PASS
        }
        Parsed::Fragment => {
            count_stat(Stat::Fragments);
            explicit(cfg.fragment_action, DropReason::Fragment, len)
        }
        Parsed::Malformed => {
            count_stat(Stat::Unparsed);
            klog::malformed(cfg, ctx.ingress_ifindex() as u32, len, cfg.unparsed_action == ACTION_DROP);
            explicit(cfg.unparsed_action, DropReason::Unparsed, len)
        }
    }
}

/// A hash of `IMFW_BUILD_TAG` at build time (0 untagged): see the `None` arm above. Any hash
/// that differs between tags would do; the name hash's step is at hand.
const BUILD_TAG_HASH: u64 = match option_env!("IMFW_BUILD_TAG") {
    Some(t) => {
        let (b, mut h, mut i) = (t.as_bytes(), NAME_HASH_INIT, 0);
        while i < b.len() {
            h = name_hash_word(h, b[i] as u64);
            i += 1;
        }
        h
    }
    None => 0,
};

/// A packet of a flow without an entry (the table refused it, or lost it since): it passes
/// undecided, counted in the pending cell of no app.
#[inline(always)]
pub(crate) fn pass_undecided(len: u64) -> u32 {
    maps::count_verdict(APP_NONE, Verdict::Pending as u8, len);
    xdp_action::XDP_PASS
}

/// The policy's explicit choice for packets that cannot be classified.
#[inline(always)]
fn explicit(action: u32, reason: DropReason, len: u64) -> u32 {
    if action == ACTION_DROP {
        count_drop(reason, len);
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The last step for a packet of a known flow: a flow the controller is deciding follows the
/// policy's `pending` choice (`controller_down` while the controller is down), any other its
/// verdict. Every packet is counted here.
#[inline(always)]
pub(crate) fn finish(cfg: &Config, e: &FlowEntry, len: u64) -> u32 {
    if e.state == STATE_INSPECTING && e.flags & FLAG_CONTROLLER != 0 {
        // A controller that is down will never decide: the policy's `controller_down` choice
        // replaces `pending` until its heartbeat returns.
        let (action, reason) = if maps::controller_alive() {
            (cfg.pending_action, DropReason::Pending)
        } else {
            (cfg.controller_down, DropReason::ControllerDown)
        };
        if action == ACTION_DROP {
            // The client retransmits once the controller's verdict allows the flow.
            maps::count_verdict(e.app, Verdict::Pending as u8, len);
            count_drop(reason, len);
            return xdp_action::XDP_DROP;
        }
    }
    maps::count_verdict(e.app, e.verdict, len);
    enforce(cfg, e.verdict, e.redirect_slot, len)
}

/// Applies a flow's verdict.
#[inline(always)]
pub(crate) fn enforce(cfg: &Config, verdict: u8, redirect_slot: u8, len: u64) -> u32 {
    match Verdict::from_u8(verdict) {
        // Counted once, in the flow's verdict cell: userspace reads the `policy` drop reason
        // as the sum of the drop cells.
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Redirect => match maps::IMFW_REDIRECT.redirect(redirect_slot as u32, 0) {
            Ok(action) => action,
            Err(_) => {
                // Fail closed: a redirect target that vanished must not let the flow through.
                count_drop(DropReason::RedirectFailed, len);
                klog::redirect_failed(cfg, redirect_slot);
                xdp_action::XDP_DROP
            }
        },
        _ => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
