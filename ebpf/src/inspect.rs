//! The payload inspector: a second XDP program, tail-called by the main one for the first
//! payload packets of a flow. It runs the matchers, decides the flow, then counts and enforces
//! the packet, exactly as the main program would have. A whole TLS ClientHello that no
//! signature shape can match is matched in the main program instead
//! (`matching::client_hello`), with the same functions and the same conclusion ([`settle`]).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use imfw_common::{
    app::{APP_ECH, APP_NONE},
    verdict::{DropReason, Method, Stat, Verdict},
};

use imfw_common::{
    config::Config,
    maps::JUMP_NAMES,
    event::{EVENT_PAYLOAD, EVENT_STREAM},
    flow::{DIR_CLIENT, FLAG_CONTROLLER, FLAG_NO_COPY, FlowEntry, FlowKey},
};

use crate::{
    copy::{Copy, copy},
    finish, klog, pass_undecided,
    parse::IPPROTO_TCP,
    flow::{decide, given_up, held, resolve_addr, stream},
    maps::{IMFW_FLOWS, IMFW_JUMP, IMFW_SCRATCH, Job, Scratch, config, controller_alive, count_stat, generation},
    matching::{self, Outcome, Sigs},
};

/// Copies the payload into the event ring for the controller: a payload to reassemble (the
/// flow is then marked `FLAG_CONTROLLER` and waits for the controller's verdict) or a DNS
/// answer to learn from (the flow goes on).
/// Nothing is copied while the controller is down: nobody reads the ring, and its stale
/// records would reach the next controller first.
#[inline(always)]
fn hand_over(ctx: &XdpContext, cfg: &Config, job: &Job, client_is_a: u8) {
    if !controller_alive() {
        return;
    }
    let c = Copy {
        kind: EVENT_PAYLOAD,
        key: job.key,
        payload_off: job.payload_off,
        payload_len: job.payload_len,
        seq: job.seq,
        dir: job.dir,
        client_is_a,
        tcp_flags: 0,
    };
    if copy(ctx, &c) {
        count_stat(Stat::ToController);
    } else {
        count_stat(Stat::ToControllerLost);
        klog::ring_full(cfg, klog::LOST_PAYLOAD);
    }
}

/// The payload that decided a flow `monitor` is its content's first segment: it goes to the
/// controller like the segments after it (see `flow::stream`), and is held like them. Only
/// in the signature stage, where the protocols with readable content (XMPP, IRC, MQTT) are
/// decided: after the name matchers' loops, its branches would multiply their verifier
/// states past the limit; flows the later stages decide are TLS or HTTP, whose content
/// starts with the next segment.
#[inline(always)]
fn stream_first(ctx: &XdpContext, cfg: &Config, job: &Job, e: &mut FlowEntry) -> Option<DropReason> {
    if e.verdict != Verdict::Monitor as u8 || job.key.proto != IPPROTO_TCP || e.flags & FLAG_NO_COPY != 0 {
        return None;
    }
    let c = Copy {
        kind: EVENT_STREAM,
        key: job.key,
        payload_off: job.payload_off,
        payload_len: job.payload_len,
        seq: job.seq,
        dir: job.dir,
        client_is_a: e.client_is_a,
        tcp_flags: job.tcp_flags,
    };
    stream(ctx, cfg, &c, e)
}

/// The first inspection stage: byte signatures. A payload they do not decide goes on to
/// [`imfw_names`] by a tail call: each program is verified on its own, so the signature loop's
/// paths do not multiply with the parsers' paths.
#[xdp]
pub fn imfw_inspect(ctx: XdpContext) -> u32 {
    stage(&ctx, true, |ctx, cfg, job, scratch| match matching::signatures(ctx, cfg, job, scratch) {
        Sigs::Found(app, method) => Outcome::Found(app, method),
        Sigs::Nothing => Outcome::Nothing,
        Sigs::Continue => {
            // SAFETY: on success this does not return; the names stage counts and enforces the packet.
            unsafe { IMFW_JUMP.tail_call(ctx, JUMP_NAMES) };
            count_stat(Stat::InspectorMissing);
            klog::stage_missing(cfg, JUMP_NAMES);
            Outcome::Nothing
        }
    })
}

/// The second inspection stage: STUN attributes, TLS server names, HTTP hosts, and whether a
/// ClientHello's unclaimed name is only the outer name of an Encrypted Client Hello.
#[xdp]
pub fn imfw_names(ctx: XdpContext) -> u32 {
    stage(&ctx, false, matching::names)
}

/// What a payload's outcome decides the flow as, if anything (counted), for the outcomes that
/// need no copy for the controller: the stages' and the main program's ClientHello path's.
#[inline(always)]
pub(crate) fn settle(cfg: &Config, key: &FlowKey, e: &mut FlowEntry, outcome: Outcome) -> Option<(u16, Method)> {
    match outcome {
        Outcome::Found(app, method) => {
            count_stat(Stat::Classified);
            Some((app, method))
        }
        // A server name no app claims: the address no longer speaks for the flow.
        Outcome::Named => {
            e.addr_app = APP_NONE;
            None
        }
        // A TLS name no app claims: nothing after it can name the flow, so it is decided now
        // as the spent budget would decide it, without inspecting the rest of the handshake.
        Outcome::NamedTls => {
            e.addr_app = APP_NONE;
            Some(given_up(cfg, key, e))
        }
        // The real name is encrypted: the address still speaks for the flow; without one, the
        // policy's choice for hidden names (app `ech`) applies.
        Outcome::Hidden => {
            count_stat(Stat::Classified);
            let addr_app = resolve_addr(cfg, key, e);
            Some(if addr_app != APP_NONE { (addr_app, Method::Address) } else { (APP_ECH, Method::Ech) })
        }
        // A payload without a name: the server's address decides now, if it is known.
        Outcome::Nothing => {
            if resolve_addr(cfg, key, e) != APP_NONE || (e.budget_client == 0 && e.budget_server == 0) {
                Some(given_up(cfg, key, e))
            } else {
                None
            }
        }
        // Handled by the stage, which copies the payload.
        Outcome::Controller | Outcome::Copy => None,
    }
}

/// Runs one inspection stage for the job the main program left in the scratch buffer, decides
/// the flow from its outcome, then counts and enforces the packet as the main program would.
#[inline(always)]
fn stage(ctx: &XdpContext, stream: bool, run: impl FnOnce(&XdpContext, &Config, &Job, *mut Scratch) -> Outcome) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (Some(all), Some(scratch)) = (config(), IMFW_SCRATCH.get_ptr_mut(0)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU scratch written by the main program just before the tail call. A volatile
    // read: its fields are unknown values to the verifier, one state for all callers.
    let job = unsafe { core::ptr::read_volatile(&(*scratch).job) };
    // The generation the main program read for this packet, not the one in force now.
    let cfg = generation(all, job.generation as u32);
    let outcome = if job.controller != 0 && job.dir == DIR_CLIENT {
        // The controller is reassembling this flow: the rest of the ClientHello goes there.
        Outcome::Controller
    } else {
        // A stage that passes the payload on tail-calls the next one from here: the flow is
        // looked up only by the stage that ends the inspection, below.
        run(ctx, cfg, &job, scratch)
    };
    let Some(e) = IMFW_FLOWS.get_ptr_mut(&job.key) else { return pass_undecided(len) };
    // SAFETY: pointer into the flow table's value, valid for this run.
    let e = unsafe { &mut *e };
    // One call of `decide` for every outcome: inlined once, the verifier walks it once per
    // state out of the matchers rather than once per outcome.
    let decision = match outcome {
        Outcome::Controller => {
            e.flags |= FLAG_CONTROLLER;
            hand_over(ctx, cfg, &job, e.client_is_a);
            None
        }
        Outcome::Copy => {
            hand_over(ctx, cfg, &job, e.client_is_a);
            if e.budget_client == 0 && e.budget_server == 0 { Some(given_up(cfg, &job.key, e)) } else { None }
        }
        other => settle(cfg, &job.key, e, other),
    };
    if let Some((app, method)) = decision {
        decide(ctx, cfg, &job.key, e, app, method);
    }
    if stream {
        if let Some(reason) = stream_first(ctx, cfg, &job, e) {
            return held(e, len, reason);
        }
    }
    finish(cfg, e, len)
}
