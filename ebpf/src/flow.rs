//! Flow state: find or create the flow's entry, spend its inspection budget, decide once.

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key, programs::XdpContext};
use imfw_common::{
    app::APP_NONE,
    config::{ACTION_DROP, Config, SRC_NETS_V4, SRC_NETS_V6},
    maps::{LPM_GEN_BITS, lpm4, lpm6},
    ranges::{range_bucket_index, range_lookup, range_step_index, range_sub_index},
    event::{EVENT_CLASSIFIED, EVENT_STREAM, FlowEvent},
    flow::{ADDR_UNRESOLVED, DIR_CLIENT, DIR_SERVER, FLAG_CLASS_KNOWN, FLAG_CLEARED_CLIENT, FLAG_CONTROLLER, FLAG_CLEARED_SERVER, FLAG_NO_COPY, FLAG_PAYLOAD_SEEN, FLAG_SERVER_SPOKE_FIRST, FlowEntry, FlowKey, STATE_DECIDED, STATE_INSPECTING},
    verdict::{DropReason, Method, Stat, Verdict},
};

use imfw_common::maps::JUMP_INSPECT;

use crate::{
    copy::{Copy, copy},
    finish, inspect, klog,
    matching,
    pass_undecided,
    maps::{
        IMFW_ADDR4, IMFW_ADDR6, IMFW_FLOWS, IMFW_RANGEIDX4, IMFW_RANGES4, IMFW_RANGESUB4, IMFW_JUMP, IMFW_SCRATCH, IMFW_SRC4, IMFW_SRC6, Job,
        controller_alive, count_drop, count_stat, count_verdict, gen_of, policy,
    },
    parse::{IPPROTO_TCP, Pkt, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// A one-way flow (the other side never sends payload) is given up after this many of its
/// packets per unit of budget, so `unclassified: drop` applies to it too.
const ONE_WAY_FACTOR: u64 = 8;

#[inline(always)]
pub fn handle(ctx: &XdpContext, cfg: &Config, pkt: &Pkt, len: u64) -> u32 {
    let e = match IMFW_FLOWS.get_ptr_mut(&pkt.key) {
        Some(e) => {
            // SAFETY: a pointer into the flow table's value, valid for this program run.
            // Concurrent updates from another CPU may race on the counters; they are statistics.
            let e = unsafe { &mut *e };
            e.packets += 1;
            e.bytes += len;
            e
        }
        None => {
            // The table refused the entry (counted): the packet passes undecided.
            let Some(new) = create(ctx, cfg, pkt, len) else { return pass_undecided(len) };
            if pkt.payload_len == 0 {
                // A SYN (or a packet without payload of a flow picked up midway): nothing to
                // inspect and no verdict yet, so the entry as inserted has all it needs and
                // the table is not searched a second time for it.
                return finish(cfg, new, len);
            }
            let Some(e) = IMFW_FLOWS.get_ptr_mut(&pkt.key) else { return pass_undecided(len) };
            // SAFETY: as above.
            unsafe { &mut *e }
        }
    };
    if e.state == STATE_INSPECTING && pkt.payload_len > 0 {
        resolve_class(cfg, &pkt.key, e);
        if let Some((dir, client_first)) = spend_budget(ctx, cfg, pkt, e) {
            // A whole ClientHello is matched here: most first payloads are one, and this path
            // spares them the stages' tail calls, job and second flow lookup.
            let server_port = pkt.key.server(e.client_is_a != 0).1;
            if dir == DIR_CLIENT && e.flags & FLAG_CONTROLLER == 0 {
                if let Some(outcome) = matching::client_hello(ctx, cfg, pkt, server_port) {
                    if let Some((app, method)) = inspect::settle(cfg, &pkt.key, e, outcome) {
                        decide(ctx, cfg, &pkt.key, e, app, method);
                    }
                    return finish(cfg, e, len);
                }
            }
            if let Some(s) = IMFW_SCRATCH.get_ptr_mut(0) {
                let job = Job {
                    key: pkt.key,
                    payload_off: pkt.payload_off as u32,
                    payload_len: pkt.payload_len as u32,
                    seq: pkt.seq,
                    dir,
                    client_first: client_first as u8,
                    server_port,
                    tcp_flags: pkt.tcp_flags,
                    controller: (e.flags & FLAG_CONTROLLER != 0) as u8,
                    generation: gen_of(cfg) as u8,
                };
                // SAFETY: per-CPU scratch, ours for this run; the inspector reads it next.
                unsafe {
                    (*s).job = job;
                    // The matchers run in their own program, verified on their own: inlined
                    // here, the many parse paths would each walk their loops and exhaust the
                    // verifier. On success this does not return; the inspector counts and
                    // enforces this packet.
                    IMFW_JUMP.tail_call(ctx, JUMP_INSPECT);
                }
            }
            count_stat(Stat::InspectorMissing);
            klog::stage_missing(cfg, JUMP_INSPECT);
        }
    }
    if e.verdict == Verdict::Monitor as u8 && pkt.key.proto == IPPROTO_TCP && e.flags & FLAG_NO_COPY == 0 {
        let dir = if pkt.src_is_a == (e.client_is_a != 0) { DIR_CLIENT } else { DIR_SERVER };
        let c = Copy {
            kind: EVENT_STREAM,
            key: pkt.key,
            payload_off: pkt.payload_off as u32,
            payload_len: pkt.payload_len as u32,
            seq: pkt.seq,
            dir,
            client_is_a: e.client_is_a,
            tcp_flags: pkt.tcp_flags,
        };
        if let Some(reason) = stream(ctx, cfg, &c, e) {
            return held(e, len, reason);
        }
    }
    finish(cfg, e, len)
}

/// A held segment of a monitored flow: dropped now, counted under its own reason (`Held`, or
/// `ControllerDown` when no controller will read it).
#[inline(always)]
pub fn held(e: &FlowEntry, len: u64, reason: DropReason) -> u32 {
    count_verdict(e.app, Verdict::Monitor as u8, len);
    count_drop(reason, len);
    xdp_action::XDP_DROP
}

/// Copies a segment of a monitored flow (payload, or a bare FIN or RST) to the controller,
/// which reassembles it and applies the content policy. A copy the ring has no room for is
/// counted, in total and in the flow's `copies_lost`: the controller then knows the stream
/// has a hole it will not fill, never silently.
///
/// With `monitor_hold`, a payload segment the controller has not read yet is held: `Some`
/// means drop it, counted under that reason. The sender retransmits it; once the controller
/// has read it and raised the direction's `cleared` mark, that copy passes without being
/// copied again. While the controller is down nothing is copied (nobody reads the ring), and
/// a segment that would be held follows the policy's `controller_down` choice.
#[inline(always)]
pub fn stream(ctx: &XdpContext, cfg: &Config, c: &Copy, e: &mut FlowEntry) -> Option<DropReason> {
    if c.payload_len == 0 && c.tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return None;
    }
    let hold = cfg.monitor_hold != 0 && c.payload_len > 0;
    if hold {
        let (flag, mark) = if c.dir == DIR_CLIENT { (FLAG_CLEARED_CLIENT, e.cleared[0]) } else { (FLAG_CLEARED_SERVER, e.cleared[1]) };
        let end = c.seq.wrapping_add(c.payload_len);
        // Read already when its end is at or below the mark (sequence arithmetic).
        if e.flags & flag != 0 && (mark.wrapping_sub(end) as i32) >= 0 {
            return None;
        }
    }
    if !controller_alive() {
        return if hold && cfg.controller_down == ACTION_DROP { Some(DropReason::ControllerDown) } else { None };
    }
    if copy(ctx, c) {
        count_stat(Stat::Streamed);
    } else {
        count_stat(Stat::StreamLost);
        e.copies_lost = e.copies_lost.saturating_add(1);
    }
    if hold { Some(DropReason::Held) } else { None }
}

/// Inserts a new flow's entry, counting this packet, and returns it as inserted. Neither the
/// client's class nor the server's app is looked up yet (see [`resolve_class`] and
/// [`resolve_addr`]): a flow that never sends payload never walks a trie.
#[inline(always)]
fn create(ctx: &XdpContext, cfg: &Config, pkt: &Pkt, len: u64) -> Option<&'static FlowEntry> {
    // A SYN-ACK seen first means we missed the SYN: its receiver opened the flow.
    let synack = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK);
    let client_is_a = if synack { !pkt.src_is_a } else { pkt.src_is_a };
    let budget = if cfg.inspect_packets > 255 { 255 } else { cfg.inspect_packets as u8 };
    let s = IMFW_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, ours for this run; the entry is read back before the run ends.
    let e = unsafe { &mut (*s).entry };
    *e = FlowEntry {
        packets: 1,
        bytes: len,
        client_is_a: client_is_a as u8,
        budget_client: budget,
        budget_server: budget,
        addr_app: ADDR_UNRESOLVED,
        ..FlowEntry::default()
    };
    count_stat(Stat::FlowsCreated);
    if IMFW_FLOWS.insert(&pkt.key, &*e, 0).is_err() {
        count_stat(Stat::FlowInsertFailed);
        klog::flow_insert_failed(cfg, ctx.ingress_ifindex() as u32, pkt.key.proto);
        return None;
    }
    Some(e)
}

#[inline(always)]
fn v6_bytes(a: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = a[i].to_ne_bytes();
        out[i * 4] = w[0];
        out[i * 4 + 1] = w[1];
        out[i * 4 + 2] = w[2];
        out[i * 4 + 3] = w[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn src_class(cfg: &Config, family: u8, addr: &[u32; 4]) -> u16 {
    let generation = gen_of(cfg);
    let nets = if family == 4 { SRC_NETS_V4 } else { SRC_NETS_V6 };
    if cfg.src_nets & nets == 0 {
        // No rule names a network of this family: its trie is empty.
        return 0;
    }
    let class = if family == 4 {
        IMFW_SRC4.get(Key::new(32 + LPM_GEN_BITS, lpm4(generation, addr[0].to_ne_bytes()))).map(|c| c.class)
    } else {
        IMFW_SRC6.get(Key::new(128 + LPM_GEN_BITS, lpm6(generation, &v6_bytes(addr)))).map(|c| c.class)
    };
    class.unwrap_or(0) as u16
}

/// The app of the network holding the server's address: for IPv4, a learned address first,
/// where the address's bucket may hold one, then the range table (see `imfw_common::ranges`).
#[inline(always)]
fn server_app(generation: u32, family: u8, addr: &[u32; 4]) -> Option<u16> {
    if family == 4 {
        let octets = addr[0].to_ne_bytes();
        let a = u32::from_be_bytes(octets);
        let bucket = *IMFW_RANGEIDX4.get(range_bucket_index(generation, a >> 16))?;
        if bucket.learned() {
            if let Some(m) = IMFW_ADDR4.get(Key::new(32 + LPM_GEN_BITS, lpm4(generation, octets))) {
                return Some(m.app);
            }
        }
        let app = range_lookup(
            bucket,
            a,
            |i| IMFW_RANGESUB4.get(range_sub_index(generation, i)).copied(),
            |i| IMFW_RANGES4.get(range_step_index(generation, i)).copied(),
        );
        if app == APP_NONE { None } else { Some(app) }
    } else {
        IMFW_ADDR6.get(Key::new(128 + LPM_GEN_BITS, lpm6(generation, &v6_bytes(addr)))).map(|m| m.app)
    }
}

/// Looks the client's class up on a payload packet of a flow still inspected, before anything
/// can decide it: once per flow (its entry is created without it), and again after a reload
/// came while it was inspected, since classes are numbered per policy. Here in the main program
/// rather than in the stages, whose verifier budget the name loops spend.
#[inline(always)]
fn resolve_class(cfg: &Config, key: &FlowKey, e: &mut FlowEntry) {
    if !e.class_is_from(cfg.version) {
        let (client, _) = key.client(e.client_is_a != 0);
        e.src_class = FlowEntry::tagged_class(src_class(cfg, key.family, &client), cfg.version);
        e.flags |= FLAG_CLASS_KNOWN;
    }
}

/// The app of the server's address (`APP_NONE` for none), looked up in the packet's policy
/// generation the first time something asks.
#[inline(always)]
pub fn resolve_addr(cfg: &Config, key: &FlowKey, e: &mut FlowEntry) -> u16 {
    if e.addr_app == ADDR_UNRESOLVED {
        let (server, _) = key.server(e.client_is_a != 0);
        e.addr_app = server_app(gen_of(cfg), key.family, &server).unwrap_or(APP_NONE);
    }
    e.addr_app
}

/// Spends one unit of the inspection budget of the packet's direction. Returns the direction
/// and whether this is the flow's first payload, from the client, when the packet is to be
/// inspected.
#[inline(always)]
fn spend_budget(ctx: &XdpContext, cfg: &Config, pkt: &Pkt, e: &mut FlowEntry) -> Option<(u8, bool)> {
    let dir = if pkt.src_is_a == (e.client_is_a != 0) { DIR_CLIENT } else { DIR_SERVER };
    let left = if dir == DIR_CLIENT { e.budget_client } else { e.budget_server };
    if left == 0 {
        if e.packets > ONE_WAY_FACTOR * cfg.inspect_packets as u64 {
            give_up(ctx, cfg, &pkt.key, e);
        }
        return None;
    }
    if dir == DIR_CLIENT {
        e.budget_client = left - 1;
    } else {
        e.budget_server = left - 1;
    }
    let first_payload = e.flags & FLAG_PAYLOAD_SEEN == 0;
    if first_payload && dir == DIR_SERVER {
        e.flags |= FLAG_SERVER_SPOKE_FIRST;
    }
    e.flags |= FLAG_PAYLOAD_SEEN;
    count_stat(Stat::Inspected);
    Some((dir, first_payload && dir == DIR_CLIENT))
}

/// Ends inspection without a payload match: the server's address decides, if it is known.
#[inline(always)]
pub fn give_up(ctx: &XdpContext, cfg: &Config, key: &FlowKey, e: &mut FlowEntry) {
    let (app, method) = given_up(cfg, key, e);
    decide(ctx, cfg, key, e, app, method);
}

/// What [`give_up`] decides a flow as (counted): the server address's app, or none.
#[inline(always)]
pub fn given_up(cfg: &Config, key: &FlowKey, e: &mut FlowEntry) -> (u16, Method) {
    let addr_app = resolve_addr(cfg, key, e);
    if addr_app != APP_NONE {
        count_stat(Stat::Classified);
        (addr_app, Method::Address)
    } else {
        count_stat(Stat::Unclassified);
        (APP_NONE, Method::None)
    }
}

/// Sets the app and the verdict the policy gives it for the client's network, and reports the
/// classification. The verdict stays until the controller rewrites the entry.
///
///
/// The class is the one [`resolve_class`] checked for this packet's generation before the
/// packet's inspection.
#[inline(always)]
pub fn decide(ctx: &XdpContext, cfg: &Config, key: &FlowKey, e: &mut FlowEntry, app: u16, method: Method) {
    let action = policy(gen_of(cfg), e.class(), app);
    e.app = app;
    e.method = method as u8;
    e.verdict = action.verdict;
    e.redirect_slot = action.redirect_slot;
    e.state = STATE_DECIDED;
    if app == APP_NONE {
        return;
    }
    klog::classified(cfg, app, method as u8, action.verdict, key.server(e.client_is_a != 0).1, key.proto);
    let (client_is_a, src_class) = (e.client_is_a, e.class());
    // Written field by field where it goes, once there is room for it: a whole `FlowEvent`
    // value is built on the stack first and copied.
    let event = #[inline(always)]
    |ev: &mut FlowEvent| {
        ev.kind = EVENT_CLASSIFIED;
        ev.ifindex = ctx.ingress_ifindex() as u32;
        ev.key = *key;
        ev.app = app;
        ev.method = method as u8;
        ev.verdict = action.verdict;
        ev.client_is_a = client_is_a;
        ev.redirect_slot = action.redirect_slot;
        ev.src_class = src_class;
    };
    if !report(event) {
        count_stat(Stat::EventsLost);
        klog::ring_full(cfg, klog::LOST_EVENT);
    }
}

/// Hands a classification to the controller: appended to this CPU's section of the
/// classification log (see `imfw_common::event::ClassLogPos`), two array lookups and a few
/// stores, where the ring buffer's reserve and submit take a lock, two helper calls and the
/// calls within them. False when the section is full. `fill` writes every field of the
/// record in its slot: built before, a `FlowEvent` lived on the stack across the lookups and
/// was copied (and a copy on the stack got byte fields merged into unaligned wide stores,
/// which the verifier refuses on the stack).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn report(fill: impl FnOnce(&mut FlowEvent)) -> bool {
    use aya_ebpf::helpers::generated::bpf_get_smp_processor_id;
    use imfw_common::maps::CLASS_LOG_SLOTS;

    use crate::maps::{IMFW_CLASSLOG, IMFW_CLASSPOS};

    // SAFETY: a helper without arguments or side effects (inlined by the verifier).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(pos) = IMFW_CLASSPOS.get_ptr_mut(cpu) else { return false };
    // SAFETY: pointers into map values, valid for this run. This CPU's position and section
    // are written by this program on this CPU only, one run at a time; `read` is the
    // controller's, read once.
    unsafe {
        let written = core::ptr::read_volatile(&(*pos).written);
        let read = core::ptr::read_volatile(&(*pos).read);
        if written.wrapping_sub(read) >= CLASS_LOG_SLOTS as u64 {
            return false;
        }
        let index = cpu.wrapping_mul(CLASS_LOG_SLOTS) | (written as u32 & (CLASS_LOG_SLOTS - 1));
        let Some(slot) = IMFW_CLASSLOG.get_ptr_mut(index) else { return false };
        fill(&mut *slot);
        // The record's stores stay before the count's: x86-64 keeps stores in order, so the
        // controller, which reads the count first, never sees a record before it is written.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        core::ptr::write_volatile(&mut (*pos).written, written.wrapping_add(1));
    }
    true
}

/// As above, through the ring buffer, on CPUs that may reorder stores (see
/// `imfw_common::event::ClassLogPos`).
#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
fn report(fill: impl FnOnce(&mut FlowEvent)) -> bool {
    use aya_ebpf::bindings::BPF_RB_NO_WAKEUP;

    use crate::maps::IMFW_EVENTS;

    match IMFW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut slot) => {
            // SAFETY: the reserved record, zeroed first (every field is an integer), then filled.
            unsafe {
                let ev = slot.as_mut_ptr();
                ev.write_bytes(0, 1);
                fill(&mut *ev);
            }
            // No wakeup: waking the reader costs an interrupt (a VM exit on a virtual
            // machine) whenever it had caught up, which on a quiet ring is every event. The
            // controller reads the ring every 50 ms anyway; copies it must act on soon (held
            // segments, ClientHellos to reassemble) keep the wakeup.
            slot.submit(BPF_RB_NO_WAKEUP as u64);
            true
        }
        None => false,
    }
}
