//! The content path of the flows with verdict `monitor`, put together: the controller hands
//! every TCP segment XDP copied to [`Monitor::segment`], and gets back the [`Action`]s it must
//! carry out in the datapath.
//!
//! # Per flow
//! A flow gets one [`FlowReassembler`] and one [`Parser`] (chosen by [`FlowMeta::protocol`])
//! at its first segment. In-order bytes go to the parser; every [`Message`] goes through the
//! [`ContentPolicy`] and is appended to the archive with its [`Decision`](crate::message::Decision)
//! ([`Entry::Message`]). What the reassembly reports is recorded too:
//! - a gap: [`Entry::FlowGap`] (the archive marks the flow's later messages `incomplete`) and
//!   [`Parser::gap`]; under [`GapPolicy::Drop`](crate::reassembly::GapPolicy::Drop) a hole ends
//!   the flow and becomes an [`Action::Block`] (the monitor cannot vouch for what passed);
//! - a retransmission that differs from the first copy: counted and recorded as
//!   [`Entry::FlowAnomaly`] (the first 16 of a flow), since it shows the monitor and the
//!   receiver different streams;
//! - the end of the flow (FIN both ways, RST, idle): [`Entry::FlowEnd`].
//!
//! A message the policy blocks: [`Entry::FlowBlocked`], one [`Action::Block`] with the
//! sequence numbers an RST needs ([`RstSeqs`]), [`Entry::FlowEnd`]. When neither direction
//! can be read any more (TLS, compression, lost MQTT framing): one [`Action::StopCopy`],
//! [`Entry::FlowAnomaly`] saying why, [`Entry::FlowEnd`]. Either way the flow's state is
//! released at once and a small tombstone stays, so that copies still in the ring are
//! ignored instead of starting a new flow in mid-stream; the tombstone goes with
//! [`Monitor::end_flow`], with eviction, or after the reassembly's idle timeout.
//!
//! Messages completed by the same segment as a blocked one are archived and evaluated too:
//! that segment already reached the receiver.
//!
//! # Bounds
//! - At most [`MonitorConfig::max_flows`] flows (live and tombstones). A new flow beyond it
//!   evicts the least recently active one: a live one is finished (under `Skip` its held bytes
//!   are parsed after their gaps), gets its [`Entry::FlowEnd`] and is counted in
//!   [`MonitorStats::evictions`].
//! - Bytes held out of order: per flow by [`reassembly::Config`], across flows by one
//!   [`Budget`] of [`MonitorConfig::total_budget_bytes`].
//! - Per flow besides: the reassembly's recheck window (2 × `recheck_window`) and the parser's
//!   buffers (one item per direction, bounded by the parser module).
//!
//! # Failures
//! Nothing here panics on input. Parse errors are counted ([`MonitorStats::parse_errors`]);
//! parsing goes on where the protocol allows. Archive errors are counted
//! ([`MonitorStats::archive_errors`], the first or last cause in
//! [`MonitorStats::last_archive_error`]) and the record is lost; the pipeline goes on, since
//! blocking must not depend on the disk.

#![expect(
    clippy::similar_names,
    reason = "now_ns (monotonic, for the reassembly) and now_ms (wall clock, for the archive) \
              are the controller's names"
)]

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::archive::{Archive, ArchiveError, Entry, FlowId};
use crate::content::ContentPolicy;
use crate::message::{self, Direction, Message, Protocol};
use crate::parsers::{Parser, StreamState};
use crate::reassembly::{
    self, Budget, EndReason, Event, FlowReassembler, HoleCause, Segment, Sink,
};

/// Limits of a [`Monitor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Reassembly of each flow (gap policy, per-flow caps, timeouts).
    pub reassembly: reassembly::Config,
    /// Bytes held out of order by all flows together (the reassembly [`Budget`]).
    pub total_budget_bytes: usize,
    /// Flows tracked at once, tombstones included; 0 is read as 1.
    pub max_flows: usize,
}

impl Default for MonitorConfig {
    /// 16,384 flows: with the default 8 KiB recheck window per direction, the windows alone
    /// can take 256 MiB; 64 MiB of held bytes on top.
    fn default() -> MonitorConfig {
        MonitorConfig {
            reassembly: reassembly::Config::default(),
            total_budget_bytes: 64 << 20,
            max_flows: 16_384,
        }
    }
}

/// What the controller knows about a flow: its id, the application the classifier named and
/// the protocol whose parser reads it. Read at the flow's first segment only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowMeta {
    pub id: FlowId,
    pub app: String,
    pub protocol: Protocol,
}

/// What the controller must do in the datapath. Each is emitted at most once per flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A rule with action block matched (or the gap policy is drop and the stream lost bytes):
    /// the controller sets the flow's verdict to drop in XDP and resets both ends with TCP RST.
    Block {
        flow: FlowId,
        reason: String,
        /// `None` when a direction was never seen (its sequence numbers are unknown).
        rst: Option<RstSeqs>,
    },
    /// Nothing more can be read from this flow (TLS after STARTTLS, compression,
    /// unparseable): the controller stops the copies.
    StopCopy { flow: FlowId, reason: String },
}

/// What a RST needs: the next sequence number each side expects from the other, as far as
/// the monitor saw (the first byte not delivered yet; one past the FIN once a direction is
/// closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RstSeqs {
    /// The next sequence number the server expects from the client.
    pub client_next: u32,
    /// The next sequence number the client expects from the server.
    pub server_next: u32,
}

/// Counters since [`Monitor::new`]; bytes are TCP payload bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonitorStats {
    /// Live flows now (being reassembled and parsed).
    pub flows: usize,
    /// Flows tracked now: live ones and tombstones of ended ones.
    pub tracked: usize,
    /// Flows started.
    pub flows_started: u64,
    pub segments: u64,
    pub payload_bytes: u64,
    /// Segments of ended flows (tombstones), and RSTs of unknown flows.
    pub ignored_segments: u64,
    pub messages: u64,
    /// [`Action::Block`]s emitted.
    pub blocked: u64,
    /// [`Action::StopCopy`]s emitted.
    pub stopped: u64,
    /// Gaps skipped by the reassembly, and their bytes.
    pub gaps: u64,
    pub skipped_bytes: u64,
    /// Retransmissions that differed from the first copy.
    pub conflicts: u64,
    /// RSTs ignored as implausible (RFC 5961), a way to make a monitor stop looking.
    pub ignored_rsts: u64,
    pub parse_errors: u64,
    /// Live flows evicted by [`MonitorConfig::max_flows`].
    pub evictions: u64,
    /// Bytes held out of order now, all flows.
    pub held_bytes: usize,
    /// Records the archive refused (lost).
    pub archive_errors: u64,
    /// The cause of the last archive error (the first one once the archive is poisoned).
    pub last_archive_error: Option<String>,
}

/// The content path of all monitored flows; single-threaded, owned by the controller.
pub struct Monitor {
    config: MonitorConfig,
    policy: Arc<ContentPolicy>,
    budget: Budget,
    flows: HashMap<FlowId, Flow>,
    /// Flows by last activity, least recent first: stamp -> flow.
    lru: BTreeMap<u64, FlowId>,
    /// The last stamp given out.
    clock: u64,
    rec: Recorder,
}

struct Flow {
    /// Key of the flow in [`Monitor::lru`]: the clock of an earlier activity. It is moved
    /// only when it lags [`LRU_LAG`] behind `last`, and made exact when the flow comes up for
    /// eviction, so the order of evictions is exactly least recently active first.
    stamp: u64,
    /// The clock of the flow's last activity.
    last: u64,
    state: FlowState,
}

enum FlowState {
    Live(Box<Live>),
    /// Blocked, stopped or ended at `since_ns`: later segments are ignored.
    Done {
        since_ns: u64,
    },
}

struct Live {
    app: String,
    reasm: FlowReassembler,
    parser: Parser,
    /// A direction that became unreadable was recorded.
    unreadable: [bool; 2],
    /// Conflicting retransmissions seen.
    conflicts: u32,
}

/// Where records and counters go.
struct Recorder {
    archive: Option<Archive>,
    stats: MonitorStats,
    /// The parser's output, reused for every feed.
    msgs: Vec<Message>,
}

impl Recorder {
    fn append(&mut self, now_ms: u64, entry: &Entry<'_>) {
        let Some(archive) = &mut self.archive else {
            return;
        };
        if let Err(e) = archive.append(now_ms, entry) {
            self.stats.archive_errors += 1;
            // Once poisoned every append fails the same way: keep the cause.
            if !matches!(e, ArchiveError::Poisoned) || self.stats.last_archive_error.is_none() {
                self.stats.last_archive_error = Some(e.to_string());
            }
        }
    }
}

/// What one call needs besides the flow.
struct Ctx<'a> {
    policy: &'a ContentPolicy,
    rec: &'a mut Recorder,
    budget: &'a mut Budget,
    now_ns: u64,
    now_ms: u64,
}

/// Receives one flow's bytes and events from the reassembler during one call.
struct FlowSink<'a> {
    flow: FlowId,
    app: &'a str,
    parser: &'a mut Parser,
    policy: &'a ContentPolicy,
    rec: &'a mut Recorder,
    now_ms: u64,
    /// Why the first blocking message blocked.
    block: Option<String>,
    ended: Option<EndReason>,
    conflicts: &'a mut u32,
}

/// How far (in segments of all flows) a flow's key in the LRU index may lag its last activity
/// before it is moved: most segments then cost no index update.
const LRU_LAG: u64 = 4096;

/// Conflicting retransmissions recorded per flow; later ones are only counted
/// ([`MonitorStats::conflicts`]), so that a peer cannot fill the archive with them.
const MAX_CONFLICT_RECORDS: u32 = 16;

impl Sink for FlowSink<'_> {
    fn data(&mut self, direction: Direction, offset: u64, bytes: &[u8]) {
        let errors = self.parser.error_count();
        let mut msgs = std::mem::take(&mut self.rec.msgs);
        // Errors are counted from the parser's total; parsing goes on after them.
        let _ = self.parser.feed(direction, offset, bytes, &mut msgs);
        self.rec.stats.parse_errors += self.parser.error_count().saturating_sub(errors);
        for msg in msgs.drain(..) {
            let decision = self.policy.evaluate(&msg);
            self.rec.stats.messages += 1;
            if decision.action == message::Action::Block && self.block.is_none() {
                let why = decision
                    .matches
                    .iter()
                    .find(|m| m.action == message::Action::Block)
                    .map_or_else(
                        || "content policy: block".to_owned(),
                        |m| format!("rule {}: {}", m.rule, m.reason),
                    );
                self.block = Some(why);
            }
            self.rec.append(
                self.now_ms,
                &Entry::Message {
                    app: self.app,
                    flow: self.flow,
                    message: &msg,
                    decision: &decision,
                },
            );
        }
        self.rec.msgs = msgs;
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Gap { direction, len, .. } => {
                self.rec.stats.gaps += 1;
                self.rec.stats.skipped_bytes += len;
                self.rec.append(
                    self.now_ms,
                    &Entry::FlowGap {
                        app: self.app,
                        flow: self.flow,
                        direction,
                        bytes: len,
                    },
                );
                self.parser.gap(direction);
            }
            Event::ConflictingOverlap {
                direction,
                offset,
                len,
            } => {
                self.rec.stats.conflicts += 1;
                *self.conflicts += 1;
                if *self.conflicts > MAX_CONFLICT_RECORDS {
                    return;
                }
                let more = if *self.conflicts == MAX_CONFLICT_RECORDS {
                    "; further conflicts of this flow are only counted"
                } else {
                    ""
                };
                let reason = format!(
                    "conflicting retransmission: {} bytes {offset}..{} differ from the first copy \
                     (the receiver may see other content than the monitor){more}",
                    dir_name(direction),
                    offset.saturating_add(len),
                );
                self.rec.append(
                    self.now_ms,
                    &Entry::FlowAnomaly {
                        app: self.app,
                        flow: self.flow,
                        reason: &reason,
                    },
                );
            }
            Event::IgnoredRst { .. } => self.rec.stats.ignored_rsts += 1,
            Event::DirectionClosed { .. } => {}
            Event::FlowEnded(reason) => self.ended = Some(reason),
        }
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::ClientToServer => "client-to-server",
        Direction::ServerToClient => "server-to-client",
    }
}

fn cause_name(c: HoleCause) -> &'static str {
    match c {
        HoleCause::Fin => "missing below the FIN",
        HoleCause::Timeout => "hole timed out",
        HoleCause::FlowCap => "flow's reassembly cap reached",
        HoleCause::BudgetCap => "reassembly memory exhausted",
        HoleCause::RingLoss => "copies lost in the ring",
        HoleCause::Truncated => "copy truncated",
        HoleCause::FlowEnd => "flow ended",
    }
}

fn state_reason(s: StreamState) -> &'static str {
    match s {
        StreamState::Readable | StreamState::Resyncing => "readable",
        StreamState::Encrypted => "switched to TLS (STARTTLS, or TLS from the first byte)",
        StreamState::Compressed => "stream compression negotiated (XEP-0138)",
        StreamState::Unparseable => {
            "framing lost (bytes missing or malformed) with no boundary to resume at"
        }
        StreamState::Upgraded => {
            "switched to another protocol (WebSocket, h2c or a CONNECT tunnel)"
        }
    }
}

fn unreadable_reason(parser: &Parser) -> String {
    let c = parser.state(Direction::ClientToServer);
    let s = parser.state(Direction::ServerToClient);
    if c == s {
        format!("content unreadable: {}", state_reason(c))
    } else {
        format!(
            "content unreadable: client-to-server {}; server-to-client {}",
            state_reason(c),
            state_reason(s)
        )
    }
}

fn rst_seqs(reasm: &FlowReassembler) -> Option<RstSeqs> {
    Some(RstSeqs {
        client_next: reasm.next_seq(Direction::ClientToServer)?,
        server_next: reasm.next_seq(Direction::ServerToClient)?,
    })
}

/// Runs `op` on a live flow's reassembler with the flow's sink, then acts on what happened
/// (see [`conclude`]) and releases the flow when it is over.
fn drive(
    ctx: &mut Ctx<'_>,
    id: FlowId,
    flow: &mut Flow,
    out: Option<&mut Vec<Action>>,
    op: impl FnOnce(&mut FlowReassembler, &mut Budget, &mut FlowSink<'_>),
) {
    let FlowState::Live(live) = &mut flow.state else {
        return;
    };
    let (block, ended) = {
        let Live {
            app,
            reasm,
            parser,
            conflicts,
            ..
        } = &mut **live;
        let mut sink = FlowSink {
            flow: id,
            app,
            parser,
            policy: ctx.policy,
            rec: ctx.rec,
            now_ms: ctx.now_ms,
            block: None,
            ended: None,
            conflicts,
        };
        op(reasm, ctx.budget, &mut sink);
        (sink.block, sink.ended)
    };
    let outcome = Outcome { block, ended };
    if conclude(ctx.rec, ctx.now_ms, id, live, outcome, out) {
        ctx.rec.append(
            ctx.now_ms,
            &Entry::FlowEnd {
                app: &live.app,
                flow: id,
            },
        );
        let state = std::mem::replace(
            &mut flow.state,
            FlowState::Done {
                since_ns: ctx.now_ns,
            },
        );
        if let FlowState::Live(live) = state {
            live.reasm.release(ctx.budget);
            ctx.rec.stats.flows = ctx.rec.stats.flows.saturating_sub(1);
        }
    }
}

/// What one call on a flow's reassembler brought.
struct Outcome {
    /// Why the first blocking message blocked.
    block: Option<String>,
    ended: Option<EndReason>,
}

/// Blocks, stops copying, or records a direction that became unreadable; true when the flow
/// is over. `out` is `None` when the flow is going away anyway (end, eviction, close): no
/// action is emitted then.
fn conclude(
    rec: &mut Recorder,
    now_ms: u64,
    id: FlowId,
    live: &mut Live,
    outcome: Outcome,
    out: Option<&mut Vec<Action>>,
) -> bool {
    let block = outcome.block.or_else(|| match outcome.ended {
        Some(EndReason::GapDropped(g)) => Some(format!(
            "stream lost bytes, policy drop: {} bytes of {} at offset {} ({})",
            g.len,
            dir_name(g.direction),
            g.offset,
            cause_name(g.cause)
        )),
        _ => None,
    });
    let app = live.app.as_str();
    match (block, out) {
        (Some(reason), Some(out)) => {
            rec.stats.blocked += 1;
            rec.append(
                now_ms,
                &Entry::FlowBlocked {
                    app,
                    flow: id,
                    reason: &reason,
                },
            );
            out.push(Action::Block {
                flow: id,
                reason,
                rst: rst_seqs(&live.reasm),
            });
            true
        }
        _ if outcome.ended.is_some() => true,
        (_, out) if !live.parser.is_inspectable() => {
            let reason = unreadable_reason(&live.parser);
            rec.stats.stopped += 1;
            rec.append(
                now_ms,
                &Entry::FlowAnomaly {
                    app,
                    flow: id,
                    reason: &reason,
                },
            );
            if let Some(out) = out {
                out.push(Action::StopCopy { flow: id, reason });
            }
            true
        }
        _ => {
            // One direction may be lost while the other is still read (an MQTT hole).
            for d in [Direction::ClientToServer, Direction::ServerToClient] {
                let state = live.parser.state(d);
                let noted = live.unreadable.get_mut(d.index());
                if let Some(noted) = noted.filter(|n| !**n && !state.is_inspectable()) {
                    *noted = true;
                    let reason = format!("{} unreadable: {}", dir_name(d), state_reason(state));
                    rec.append(
                        now_ms,
                        &Entry::FlowAnomaly {
                            app,
                            flow: id,
                            reason: &reason,
                        },
                    );
                }
            }
            false
        }
    }
}

impl Monitor {
    /// A monitor applying `policy`, recording into `archive` when there is one.
    pub fn new(
        config: MonitorConfig,
        policy: Arc<ContentPolicy>,
        archive: Option<Archive>,
    ) -> Monitor {
        Monitor {
            budget: Budget::new(config.total_budget_bytes),
            config,
            policy,
            flows: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            rec: Recorder {
                archive,
                stats: MonitorStats::default(),
                msgs: Vec::new(),
            },
        }
    }

    /// Replaces the content policy; messages completed from now on are evaluated with it.
    pub fn set_policy(&mut self, policy: Arc<ContentPolicy>) {
        self.policy = policy;
    }

    /// Writes the archive's buffered records to its file (no fsync: they survive a crash
    /// of the controller, not of the machine). Nothing to do without an archive.
    pub fn flush_archive(&mut self) -> Result<(), ArchiveError> {
        match &mut self.rec.archive {
            Some(a) => a.flush(),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Feeds one segment XDP copied at `now_ns` (monotonic, as in the ring record) and
    /// `now_ms` (wall clock, for the archive); appends what the datapath must do to `out`.
    pub fn segment(
        &mut self,
        meta: &FlowMeta,
        seg: &Segment<'_>,
        now_ns: u64,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let stats = &mut self.rec.stats;
        stats.segments += 1;
        stats.payload_bytes += seg.payload.len() as u64;
        let id = meta.id;
        // One table lookup for a known flow, the common case.
        if let Some(flow) = self.flows.get_mut(&id) {
            if flow.last != self.clock {
                self.clock += 1;
                flow.last = self.clock;
                if flow.last - flow.stamp >= LRU_LAG {
                    self.lru.remove(&flow.stamp);
                    flow.stamp = flow.last;
                    self.lru.insert(flow.stamp, id);
                }
            }
            let mut ctx = Ctx {
                policy: &self.policy,
                rec: &mut self.rec,
                budget: &mut self.budget,
                now_ns,
                now_ms,
            };
            Monitor::feed(&mut ctx, id, flow, seg, out);
            return;
        }
        if seg.rst {
            // Nothing to monitor, and an RST must not create state.
            stats.ignored_segments += 1;
            return;
        }
        self.make_room(now_ns, now_ms);
        self.clock += 1;
        self.lru.insert(self.clock, id);
        let live = Live {
            app: meta.app.clone(),
            reasm: FlowReassembler::new(self.config.reassembly.clone(), now_ns),
            parser: Parser::new(meta.protocol),
            unreadable: [false; 2],
            conflicts: 0,
        };
        let flow = self.flows.entry(id).insert(Flow {
            stamp: self.clock,
            last: self.clock,
            state: FlowState::Live(Box::new(live)),
        });
        self.rec.stats.flows_started += 1;
        self.rec.stats.flows += 1;
        let mut ctx = Ctx {
            policy: &self.policy,
            rec: &mut self.rec,
            budget: &mut self.budget,
            now_ns,
            now_ms,
        };
        Monitor::feed(&mut ctx, id, flow.into_mut(), seg, out);
    }

    fn feed(
        ctx: &mut Ctx<'_>,
        id: FlowId,
        flow: &mut Flow,
        seg: &Segment<'_>,
        out: &mut Vec<Action>,
    ) {
        if matches!(flow.state, FlowState::Done { .. }) {
            ctx.rec.stats.ignored_segments += 1;
            return;
        }
        let now_ns = ctx.now_ns;
        drive(ctx, id, flow, Some(out), |reasm, budget, sink| {
            reasm.segment(seg, now_ns, budget, sink);
        });
    }

    /// XDP lost copies of `flow`: the holes they leave are resolved now (see
    /// [`FlowReassembler::ring_loss`]).
    pub fn ring_loss(&mut self, flow: &FlowId, now_ns: u64, now_ms: u64, out: &mut Vec<Action>) {
        let Some(f) = self.flows.get_mut(flow) else {
            return;
        };
        let mut ctx = Ctx {
            policy: &self.policy,
            rec: &mut self.rec,
            budget: &mut self.budget,
            now_ns,
            now_ms,
        };
        drive(&mut ctx, *flow, f, Some(out), |reasm, budget, sink| {
            reasm.ring_loss(now_ns, budget, sink);
        });
    }

    /// Runs the timers (hole and idle timeouts, FIN grace), drops expired tombstones and
    /// lets the archive seal and flush. Call it about once a second.
    pub fn poll(&mut self, now_ns: u64, now_ms: u64, out: &mut Vec<Action>) {
        let mut ctx = Ctx {
            policy: &self.policy,
            rec: &mut self.rec,
            budget: &mut self.budget,
            now_ns,
            now_ms,
        };
        for (id, flow) in &mut self.flows {
            drive(
                &mut ctx,
                *id,
                flow,
                Some(&mut *out),
                |reasm, budget, sink| {
                    reasm.poll(now_ns, budget, sink);
                },
            );
        }
        let idle = self.config.reassembly.idle_timeout_ns;
        let lru = &mut self.lru;
        self.flows.retain(|_, f| match f.state {
            FlowState::Done { since_ns } if now_ns.saturating_sub(since_ns) >= idle => {
                lru.remove(&f.stamp);
                false
            }
            _ => true,
        });
        if let Some(archive) = &mut self.rec.archive {
            if let Err(e) = archive.tick(now_ms) {
                self.rec.stats.archive_errors += 1;
                self.rec.stats.last_archive_error = Some(e.to_string());
            }
        }
    }

    /// The sequence number up to which `direction` of a live flow has been read (delivered
    /// to the parser, and every message it completed evaluated): segments ending at or below
    /// it may pass. `None` for a flow that is not live (blocked, stopped, unknown).
    pub fn read_up_to(&self, flow: &FlowId, direction: Direction) -> Option<u32> {
        match &self.flows.get(flow)?.state {
            FlowState::Live(live) => live.reasm.next_seq(direction),
            FlowState::Done { .. } => None,
        }
    }

    /// Deletes whole archive segments older than `max_age_ms` (an authenticated retention
    /// record marks the cut); `None` without an archive.
    pub fn retain(
        &mut self,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Option<Result<crate::archive::RetentionReport, ArchiveError>> {
        self.rec
            .archive
            .as_mut()
            .map(|a| a.retain(now_ms, max_age_ms))
    }

    /// The flow left the controller's table: held bytes are parsed (after their gaps, under
    /// `Skip`), the flow's end is recorded, and all its state goes.
    pub fn end_flow(&mut self, flow: &FlowId, now_ms: u64) {
        if let Some(f) = self.flows.remove(flow) {
            self.lru.remove(&f.stamp);
            self.retire(*flow, f, now_ms);
        }
    }

    pub fn stats(&self) -> MonitorStats {
        let mut stats = self.rec.stats.clone();
        stats.tracked = self.flows.len();
        stats.held_bytes = self.budget.used();
        stats
    }

    /// Ends every flow (recorded as by [`Monitor::end_flow`]) and closes the archive with a
    /// closing seal. Returns the final counters.
    pub fn close(mut self, now_ms: u64) -> Result<MonitorStats, ArchiveError> {
        for (_, id) in std::mem::take(&mut self.lru) {
            if let Some(f) = self.flows.remove(&id) {
                self.retire(id, f, now_ms);
            }
        }
        let stats = self.stats();
        match self.rec.archive.take() {
            Some(archive) => archive.close(now_ms).map(|()| stats),
            None => Ok(stats),
        }
    }

    /// Evicts the least recently active flows until a new one fits.
    fn make_room(&mut self, now_ns: u64, now_ms: u64) {
        let max = self.config.max_flows.max(1);
        while self.flows.len() >= max {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            // A key that lags is put right and the next oldest looked at: every key is at
            // most its flow's last activity, so an exact key at the front is the least
            // recently active flow.
            if let Some(f) = self.flows.get_mut(&victim).filter(|f| f.stamp != f.last) {
                f.stamp = f.last;
                self.lru.insert(f.stamp, victim);
                continue;
            }
            if let Some(f) = self.flows.remove(&victim) {
                if matches!(f.state, FlowState::Live(_)) {
                    self.rec.stats.evictions += 1;
                }
                self.retire_at(victim, f, now_ns, now_ms);
            }
        }
    }

    fn retire(&mut self, id: FlowId, flow: Flow, now_ms: u64) {
        self.retire_at(id, flow, 0, now_ms);
    }

    /// Finishes a flow removed from the table.
    fn retire_at(&mut self, id: FlowId, mut flow: Flow, now_ns: u64, now_ms: u64) {
        let mut ctx = Ctx {
            policy: &self.policy,
            rec: &mut self.rec,
            budget: &mut self.budget,
            now_ns,
            now_ms,
        };
        drive(&mut ctx, id, &mut flow, None, |reasm, budget, sink| {
            reasm.finish(budget, sink);
        });
        // `finish` always ends the flow; this only guards the budget should it not.
        if let FlowState::Live(live) = flow.state {
            live.reasm.release(&mut self.budget);
            self.rec.stats.flows = self.rec.stats.flows.saturating_sub(1);
        }
    }
}
