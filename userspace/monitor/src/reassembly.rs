//! TCP stream reassembly for monitored flows.
//!
//! XDP copies each segment of a monitored flow into a ring buffer; the controller feeds them,
//! in ring order, to the flow's [`FlowReassembler`], which hands the parser each direction's
//! bytes in order through a [`Sink`], with the stream offset of every chunk, and reports what
//! it could not deliver faithfully as [`Event`]s.
//!
//! # Rules
//! - Sequence numbers are 32-bit and wrap (RFC 9293 §3.4): a segment is placed relative to the
//!   next expected byte, within ±2^31. A direction starts at SYN+1 when its SYN is seen (the
//!   SYN occupies one sequence number); a direction first seen mid-stream starts at the
//!   sequence number of its first segment, and bytes that later arrive before that point are
//!   counted ([`Counters::before_start_bytes`]) and dropped.
//! - In-order bytes with nothing held go straight from the segment to the sink (no copy into a
//!   reassembly buffer). Bytes beyond a hole are held until the hole is filled or resolved.
//! - The first copy of a byte wins, as in the receivers we protect. A later copy that differs
//!   raises [`Event::ConflictingOverlap`]: someone is showing the monitor and the receiver
//!   different streams. Delivered bytes are compared against the last
//!   [`Config::recheck_window`] bytes kept per direction; older ones are counted as unchecked.
//! - A hole that cannot be filled is resolved under the caller's [`GapPolicy`]: `Skip`
//!   reports [`Event::Gap`] and goes on after it, `Drop` ends the flow with
//!   [`EndReason::GapDropped`]. What resolves a hole is a [`HoleCause`]: the FIN was received
//!   with bytes missing below it (after [`Config::fin_grace_ns`]), the hole outlived
//!   [`Config::hole_timeout_ns`], a memory cap, a ring-loss notice, a segment truncated by the
//!   ring, or the end of the flow (RST, idle, [`FlowReassembler::finish`]).
//! - A FIN ends its direction: bytes at or beyond the FIN's sequence number are counted and
//!   dropped. An RST whose sequence number is plausible ends the flow; one that is not (RFC
//!   5961 §3: receivers ignore it) is ignored and reported, since a blind RST would otherwise
//!   stop monitoring while the connection goes on.
//!
//! # Memory
//! Bytes held out of order are bounded per flow (both directions together) by
//! [`Config::max_held_bytes`] and [`Config::max_held_chunks`], and across all flows by the
//! caller's [`Budget`]. When a segment does not fit, the lowest hole of its direction is
//! resolved under the gap policy (cause [`HoleCause::FlowCap`] or [`HoleCause::BudgetCap`])
//! until it fits or until the segment is in order and delivered directly; the policy decides,
//! nothing is dropped silently. Every byte taken from the budget is returned when it is
//! delivered, discarded, or when the flow is [released](FlowReassembler::release).
//! Besides held bytes, each direction keeps a recheck window of
//! [`Config::recheck_window`] bytes, allocated on first delivery and not charged to the
//! budget (it is a fixed size per flow).
//!
//! # Time
//! `now` is a `u64` of nanoseconds from a monotonic clock: the `bpf_ktime_get_ns` timestamp
//! XDP puts in each ring record (CLOCK_MONOTONIC) is the natural source. Only differences are
//! used; a clock that goes backwards is treated as no time passing.

mod recent;
mod stream;
#[cfg(test)]
mod tests;

use crate::message::Direction;
use stream::{GapInfo, Stream};

/// What to do with a hole that will not be filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapPolicy {
    /// Report [`Event::Gap`], go on after the hole (the archive marks what it cut as
    /// incomplete).
    Skip,
    /// End the flow with [`EndReason::GapDropped`].
    Drop,
}

/// Limits and policy of one flow's reassembly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub gap_policy: GapPolicy,
    /// Bytes held out of order by one flow, both directions together.
    pub max_held_bytes: usize,
    /// Separate held chunks of one flow, both directions together: bounds the bookkeeping
    /// when a peer sends many one-byte islands.
    pub max_held_chunks: usize,
    /// How long a hole may wait to be filled (ns), counted from the arrival of the oldest
    /// bytes held above it.
    pub hole_timeout_ns: u64,
    /// How long holes below a received FIN may wait for a retransmission (ns). 0 resolves them
    /// when the FIN arrives; a little grace keeps a reordered FIN from turning the last
    /// segment into a gap (which a sender could use to hide it from the monitor).
    pub fin_grace_ns: u64,
    /// A flow with no segment for this long is ended by [`FlowReassembler::poll`] (ns).
    pub idle_timeout_ns: u64,
    /// Delivered bytes kept per direction to compare retransmissions against; 0 disables the
    /// check of retransmitted bytes that were already delivered.
    pub recheck_window: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            gap_policy: GapPolicy::Skip,
            max_held_bytes: 256 * 1024,
            max_held_chunks: 512,
            hole_timeout_ns: 2_000_000_000,
            fin_grace_ns: 200_000_000,
            idle_timeout_ns: 300_000_000_000,
            recheck_window: 8 * 1024,
        }
    }
}

/// One TCP segment as XDP copied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub direction: Direction,
    /// The segment's sequence number (that of the SYN itself when `syn` is set).
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    /// The payload bytes the ring carried.
    pub payload: &'a [u8],
    /// The payload length on the wire; larger than `payload.len()` when the ring truncated the
    /// copy (a smaller value is taken as `payload.len()`).
    pub wire_len: u32,
}

impl<'a> Segment<'a> {
    /// A segment with no flags whose payload was copied whole.
    pub fn data(direction: Direction, seq: u32, payload: &'a [u8]) -> Segment<'a> {
        Segment {
            direction,
            seq,
            syn: false,
            fin: false,
            rst: false,
            payload,
            wire_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        }
    }
}

/// Why a hole was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoleCause {
    /// Bytes were missing below the direction's FIN.
    Fin,
    /// The hole outlived [`Config::hole_timeout_ns`].
    Timeout,
    /// The flow's held bytes or chunks reached their cap.
    FlowCap,
    /// The shared [`Budget`] was exhausted.
    BudgetCap,
    /// The ring lost records of this flow.
    RingLoss,
    /// The ring truncated a segment: its tail will not come.
    Truncated,
    /// The flow was reset, went idle or was finished by the caller with bytes still held.
    FlowEnd,
}

/// A hole under [`GapPolicy::Drop`] ended the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedGap {
    pub direction: Direction,
    pub offset: u64,
    pub len: u64,
    pub cause: HoleCause,
}

/// Why a flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Both directions reached their FIN.
    Closed,
    /// An acceptable RST was sent in `direction`.
    Reset { direction: Direction },
    /// No segment for [`Config::idle_timeout_ns`].
    IdleTimeout,
    /// The caller called [`FlowReassembler::finish`].
    Finished,
    /// A hole under [`GapPolicy::Drop`].
    GapDropped(DroppedGap),
}

/// Something the parser and the archive must know besides the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `len` bytes at `offset` were skipped under [`GapPolicy::Skip`]; the next data chunk of
    /// this direction starts at `offset + len` or later.
    Gap {
        direction: Direction,
        offset: u64,
        len: u64,
        cause: HoleCause,
    },
    /// A segment carried bytes that differ from the first copy received: `offset` is the first
    /// differing byte, `len` reaches the last differing byte of that segment.
    ConflictingOverlap {
        direction: Direction,
        offset: u64,
        len: u64,
    },
    /// The direction reached its FIN: `offset` is its length.
    DirectionClosed { direction: Direction, offset: u64 },
    /// An RST outside the plausible window was ignored; `offset` is where its sequence number
    /// falls in the stream (negative: before the start).
    IgnoredRst { direction: Direction, offset: i64 },
    /// The flow ended; later calls deliver nothing.
    FlowEnded(EndReason),
}

/// Where the in-order bytes and the events go.
pub trait Sink {
    /// `bytes` are the direction's bytes from stream `offset` on, in order: each call starts
    /// where the previous one ended or after a [`Event::Gap`].
    fn data(&mut self, direction: Direction, offset: u64, bytes: &[u8]);
    fn event(&mut self, event: Event);
}

/// Whether the flow still takes segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Open,
    Ended(EndReason),
}

/// Counters of one direction (bytes are payload bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub segments: u64,
    /// Bytes given to the sink.
    pub delivered_bytes: u64,
    /// Bytes that had to be held because a hole came before them.
    pub out_of_order_bytes: u64,
    /// Segments that brought no new byte (exact retransmissions and conflicting ones).
    pub retransmitted_segments: u64,
    /// Segments that covered bytes already received (delivered or held).
    pub overlaps: u64,
    /// Bytes received again, equal to the first copy.
    pub duplicate_bytes: u64,
    /// [`Event::ConflictingOverlap`]s raised.
    pub conflicts: u64,
    /// Bytes that differed from the first copy.
    pub conflicting_bytes: u64,
    /// Bytes received again that could not be compared: older than the recheck window or
    /// inside a skipped gap.
    pub unchecked_bytes: u64,
    /// Gaps skipped, and their bytes.
    pub gaps: u64,
    pub skipped_bytes: u64,
    /// Bytes at or beyond the FIN's sequence number.
    pub after_fin_bytes: u64,
    /// Bytes before the start of a direction first seen mid-stream.
    pub before_start_bytes: u64,
    /// Bytes the ring cut off segments.
    pub truncated_bytes: u64,
    /// Held bytes thrown away when the flow ended without skipping.
    pub discarded_bytes: u64,
    /// RSTs ignored as implausible.
    pub ignored_rsts: u64,
    /// Segments received after the flow ended.
    pub after_end_segments: u64,
}

/// The shared cap on bytes held out of order across all flows; the caller owns it and passes
/// it to every call (single-threaded).
#[derive(Debug, PartialEq, Eq)]
pub struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { limit, used: 0 }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now by all flows.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    fn take(&mut self, bytes: usize) -> bool {
        if bytes > self.available() {
            return false;
        }
        self.used += bytes;
        true
    }

    fn give(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.used, "budget returned more than taken");
        self.used = self.used.saturating_sub(bytes);
    }
}

/// The reassembly state of one TCP flow, both directions.
///
/// Dropping it without [`release`](FlowReassembler::release) keeps its held bytes counted in
/// the [`Budget`]: always release.
#[derive(Debug)]
pub struct FlowReassembler {
    config: Config,
    streams: [Stream; 2],
    ended: Option<EndReason>,
    last_seen: u64,
}

/// What a stream operation needs from the flow and the caller.
struct Ctx<'c, S: Sink + ?Sized> {
    config: &'c Config,
    budget: &'c mut Budget,
    sink: &'c mut S,
    now: u64,
    /// Held bytes and chunks of the other direction, for the per-flow caps.
    other_bytes: usize,
    other_chunks: usize,
}

impl FlowReassembler {
    /// A flow whose first segment arrives at `now` (ns, monotonic).
    pub fn new(config: Config, now: u64) -> FlowReassembler {
        FlowReassembler {
            config,
            streams: [
                Stream::new(Direction::ClientToServer),
                Stream::new(Direction::ServerToClient),
            ],
            ended: None,
            last_seen: now,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn status(&self) -> Status {
        self.ended.map_or(Status::Open, Status::Ended)
    }

    pub fn counters(&self, direction: Direction) -> &Counters {
        &self.stream(direction).counters
    }

    /// Bytes held out of order now, both directions.
    pub fn held_bytes(&self) -> usize {
        self.streams.iter().map(|s| s.held_bytes).sum()
    }

    /// The stream offset of the next byte the direction will deliver.
    pub fn next_offset(&self, direction: Direction) -> u64 {
        self.stream(direction).next
    }

    /// The sequence number the receiver of `direction` expects next, as far as this flow
    /// delivered: that of the first byte not delivered yet, or one past the FIN once the
    /// direction is closed. `None` before the direction's first segment. An RST needs it
    /// (RFC 5961 section 3.2: only an RST at exactly the expected number is accepted at once).
    pub fn next_seq(&self, direction: Direction) -> Option<u32> {
        self.stream(direction).next_seq()
    }

    /// Feeds one segment copied by XDP at `now`.
    pub fn segment<S: Sink + ?Sized>(
        &mut self,
        segment: &Segment<'_>,
        now: u64,
        budget: &mut Budget,
        sink: &mut S,
    ) -> Status {
        let d = segment.direction.index();
        if self.ended.is_some() {
            if let Some(stream) = self.streams.get_mut(d) {
                stream.counters.after_end_segments += 1;
            }
            return self.status();
        }
        self.last_seen = self.last_seen.max(now);
        if segment.rst {
            let Some(stream) = self.streams.get_mut(d) else {
                return self.status();
            };
            stream.counters.segments += 1;
            match stream.rst_offset(segment.seq) {
                Ok(()) => {
                    self.end(
                        EndReason::Reset {
                            direction: segment.direction,
                        },
                        true,
                        budget,
                        sink,
                    );
                }
                Err(offset) => {
                    stream.counters.ignored_rsts += 1;
                    sink.event(Event::IgnoredRst {
                        direction: segment.direction,
                        offset,
                    });
                }
            }
            return self.status();
        }
        let result = self.with_stream(d, now, budget, sink, |stream, ctx| {
            stream.on_segment(segment, ctx)
        });
        self.after(result, budget, sink)
    }

    /// The ring lost records of this flow (which direction is unknown): the holes present are
    /// resolved now, and in a direction without a hole, a hole left by its next segment is.
    pub fn ring_loss<S: Sink + ?Sized>(
        &mut self,
        now: u64,
        budget: &mut Budget,
        sink: &mut S,
    ) -> Status {
        if self.ended.is_some() {
            return self.status();
        }
        let mut result = Ok(());
        for d in 0..2 {
            result = self.with_stream(d, now, budget, sink, Stream::on_ring_loss);
            if result.is_err() {
                break;
            }
        }
        self.after(result, budget, sink)
    }

    /// Runs the timers: hole timeouts, FIN grace, idle timeout. Call it periodically.
    pub fn poll<S: Sink + ?Sized>(
        &mut self,
        now: u64,
        budget: &mut Budget,
        sink: &mut S,
    ) -> Status {
        if self.ended.is_some() {
            return self.status();
        }
        if now.saturating_sub(self.last_seen) >= self.config.idle_timeout_ns {
            self.end(EndReason::IdleTimeout, true, budget, sink);
            return self.status();
        }
        let mut result = Ok(());
        for d in 0..2 {
            result = self.with_stream(d, now, budget, sink, Stream::on_timers);
            if result.is_err() {
                break;
            }
        }
        self.after(result, budget, sink)
    }

    /// Ends the flow now (evicted, connection gone): under [`GapPolicy::Skip`] the held bytes
    /// are delivered with their holes reported as gaps, under `Drop` they are discarded.
    pub fn finish<S: Sink + ?Sized>(&mut self, budget: &mut Budget, sink: &mut S) -> Status {
        if self.ended.is_none() {
            self.end(EndReason::Finished, true, budget, sink);
        }
        self.status()
    }

    /// Gives the held bytes back to the budget and returns the counters, indexed by
    /// [`Direction::index`].
    pub fn release(mut self, budget: &mut Budget) -> [Counters; 2] {
        for stream in &mut self.streams {
            stream.discard(budget);
        }
        [self.streams[0].counters, self.streams[1].counters]
    }

    fn stream(&self, direction: Direction) -> &Stream {
        match direction {
            Direction::ClientToServer => &self.streams[0],
            Direction::ServerToClient => &self.streams[1],
        }
    }

    /// Runs `op` on stream `d` with the other stream's holdings for the per-flow caps.
    fn with_stream<S: Sink + ?Sized>(
        &mut self,
        d: usize,
        now: u64,
        budget: &mut Budget,
        sink: &mut S,
        op: impl FnOnce(&mut Stream, &mut Ctx<'_, S>) -> Result<(), GapInfo>,
    ) -> Result<(), GapInfo> {
        let (first, second) = self.streams.split_at_mut(1);
        let (Some(a), Some(b)) = (first.first_mut(), second.first_mut()) else {
            return Ok(());
        };
        let (stream, other) = if d == 0 { (a, b) } else { (b, a) };
        let mut ctx = Ctx {
            config: &self.config,
            budget,
            sink,
            now,
            other_bytes: other.held_bytes,
            other_chunks: other.held_chunks(),
        };
        op(stream, &mut ctx)
    }

    /// Ends the flow on a dropped gap, or when both directions reached their FIN.
    fn after<S: Sink + ?Sized>(
        &mut self,
        result: Result<(), GapInfo>,
        budget: &mut Budget,
        sink: &mut S,
    ) -> Status {
        match result {
            Err(gap) => {
                let reason = EndReason::GapDropped(DroppedGap {
                    direction: gap.direction,
                    offset: gap.offset,
                    len: gap.len,
                    cause: gap.cause,
                });
                self.end(reason, false, budget, sink);
            }
            Ok(()) => {
                if self.streams.iter().all(|s| s.closed) {
                    self.end(EndReason::Closed, false, budget, sink);
                }
            }
        }
        self.status()
    }

    /// Ends the flow; with `flush`, under `Skip`, held bytes are delivered after their gaps.
    fn end<S: Sink + ?Sized>(
        &mut self,
        reason: EndReason,
        flush: bool,
        budget: &mut Budget,
        sink: &mut S,
    ) {
        if flush && self.config.gap_policy == GapPolicy::Skip {
            for d in 0..2 {
                // Under Skip a gap never fails.
                let _ = self.with_stream(d, self.last_seen, budget, sink, Stream::flush);
            }
        }
        for stream in &mut self.streams {
            stream.discard(budget);
        }
        self.ended = Some(reason);
        sink.event(Event::FlowEnded(reason));
    }
}
