//! One direction of a flow: sequence space, held chunks, delivery.

use std::collections::BTreeMap;

use super::recent::{count_differing, diff_span, Recent};
use super::{Counters, Ctx, Event, GapPolicy, HoleCause, Segment, Sink};
use crate::message::Direction;

/// Longest payload placed in sequence space; the rest of a longer one counts as truncated.
/// Real segments are at most 64 KiB (256 KiB with BIG TCP GSO); 2^30 keeps every offset
/// computation far from the ±2^31 reach of sequence arithmetic.
const MAX_SEGMENT: usize = 1 << 30;

/// A hole resolved under [`GapPolicy::Drop`]: the flow ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct GapInfo {
    pub(super) direction: Direction,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) cause: HoleCause,
}

#[derive(Debug)]
struct Chunk {
    data: Vec<u8>,
    /// When it arrived (ns): the hole below it is at least this old.
    arrived: u64,
}

#[derive(Debug)]
pub(super) struct Stream {
    direction: Direction,
    /// Whether the first segment was seen, which fixed `base_seq`.
    started: bool,
    /// Sequence number of stream offset 0.
    base_seq: u32,
    /// Next offset to deliver; every held chunk starts above it.
    pub(super) next: u64,
    /// Highest offset any segment reached (for the RST check).
    highest: u64,
    /// Offset of the FIN, once seen; and when.
    fin: Option<u64>,
    fin_at: u64,
    pub(super) closed: bool,
    /// Bytes beyond holes, by offset; chunks never overlap.
    held: BTreeMap<u64, Chunk>,
    pub(super) held_bytes: usize,
    /// Arrival of the oldest held chunk: the age of the lowest hole.
    hole_since: Option<u64>,
    /// The ring lost records while this direction had no hole.
    loss_pending: bool,
    recent: Recent,
    /// Scratch for the new parts of a segment, reused (at most held chunks + 1 entries).
    regions: Vec<(u64, u64)>,
    pub(super) counters: Counters,
}

/// First and last differing offset of a segment, merged over its overlaps.
#[derive(Default)]
struct ConflictSpan(Option<(u64, u64)>);

impl ConflictSpan {
    fn add(&mut self, base: u64, span: Option<(usize, usize)>) {
        if let Some((a, b)) = span {
            let (a, b) = (base + a as u64, base + b as u64);
            self.0 = Some(self.0.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
        }
    }
}

impl Stream {
    pub(super) fn new(direction: Direction) -> Stream {
        Stream {
            direction,
            started: false,
            base_seq: 0,
            next: 0,
            highest: 0,
            fin: None,
            fin_at: 0,
            closed: false,
            held: BTreeMap::new(),
            held_bytes: 0,
            hole_since: None,
            loss_pending: false,
            recent: Recent::default(),
            regions: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// Sequence number of the next byte not yet delivered, one past the FIN once the
    /// direction is closed (the FIN takes one number); `None` before the first segment.
    pub(super) fn next_seq(&self) -> Option<u32> {
        self.started.then(|| {
            self.base_seq
                .wrapping_add(self.next as u32)
                .wrapping_add(u32::from(self.closed))
        })
    }

    pub(super) fn held_chunks(&self) -> usize {
        self.held.len()
    }

    /// Where `seq` falls in the stream, relative to the next byte (RFC 9293 §3.4: sequence
    /// comparisons are modulo 2^32, within half the space).
    fn offset_of(&self, seq: u32) -> i64 {
        let next_seq = self.base_seq.wrapping_add(self.next as u32);
        self.next.cast_signed() + i64::from(seq.wrapping_sub(next_seq).cast_signed())
    }

    /// Accepts an RST whose sequence number lies between the next byte and one past the
    /// highest seen (a FIN takes one number); RFC 5961 §3.2 has receivers ignore the others.
    pub(super) fn rst_offset(&self, seq: u32) -> Result<(), i64> {
        if !self.started {
            return Ok(());
        }
        let offset = self.offset_of(seq);
        let high = self.highest.max(self.next) + 1;
        if offset >= self.next.cast_signed() && offset <= high.cast_signed() {
            Ok(())
        } else {
            Err(offset)
        }
    }

    pub(super) fn on_segment<S: Sink + ?Sized>(
        &mut self,
        segment: &Segment<'_>,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        self.counters.segments += 1;
        // The SYN takes one sequence number; its data (TCP Fast Open) starts after it.
        let data_seq = if segment.syn {
            segment.seq.wrapping_add(1)
        } else {
            segment.seq
        };
        if !self.started {
            self.started = true;
            self.base_seq = data_seq;
        }
        let captured = segment
            .payload
            .get(..MAX_SEGMENT)
            .unwrap_or(segment.payload);
        let wire_len = (segment.wire_len as u64).max(segment.payload.len() as u64);
        let truncated = wire_len - captured.len() as u64;
        self.counters.truncated_bytes += truncated;
        let start = self.offset_of(data_seq);
        let wire_end = start + wire_len.cast_signed();
        self.highest = self.highest.max(wire_end.max(0).cast_unsigned());
        // A FIN below the next byte is an old duplicate; the first FIN wins.
        if segment.fin && wire_end >= self.next.cast_signed() {
            self.set_fin(wire_end.cast_unsigned(), ctx);
        }

        let mut bytes = captured;
        let mut offset = start;
        if offset < 0 {
            let cut = offset.unsigned_abs().min(bytes.len() as u64) as usize;
            self.counters.before_start_bytes += cut as u64;
            bytes = bytes.get(cut..).unwrap_or_default();
            offset += (cut as u64).cast_signed();
        }
        let offset = offset.max(0).cast_unsigned();
        if let Some(fin) = self.fin {
            let keep = fin.saturating_sub(offset).min(bytes.len() as u64) as usize;
            self.counters.after_fin_bytes += (bytes.len() - keep) as u64;
            bytes = bytes.get(..keep).unwrap_or_default();
        }
        if !bytes.is_empty() {
            self.accept(offset, bytes, ctx)?;
        }
        if truncated > 0 {
            // The ring cut the copy, not the wire: the receiver has the tail, so no
            // retransmission will bring it; waiting would only delay what follows.
            let limit = wire_end.max(0).cast_unsigned();
            let limit = self.fin.map_or(limit, |fin| limit.min(fin));
            self.resolve_below(limit, HoleCause::Truncated, ctx)?;
        }
        if self.loss_pending {
            self.loss_pending = false;
            if let Some(end) = self.held_end() {
                self.resolve_below(end, HoleCause::RingLoss, ctx)?;
            }
        }
        self.on_timers(ctx)
    }

    /// Places `bytes` at stream `offset` (>= 0, below the FIN).
    fn accept<S: Sink + ?Sized>(
        &mut self,
        offset: u64,
        bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        let mut conflict = ConflictSpan::default();
        let mut overlapped = false;
        let mut equal = 0;
        let mut differing = 0;
        let (mut start, mut bytes) = (offset, bytes);
        if start < self.next {
            let old_len = (self.next - start).min(bytes.len() as u64) as usize;
            let (old, new) = bytes.split_at(old_len);
            let cmp = self.recent.compare(self.next, start, old);
            equal += cmp.equal;
            differing += cmp.differing;
            self.counters.unchecked_bytes += cmp.unchecked;
            conflict.add(start, cmp.span);
            overlapped = true;
            start += old_len as u64;
            bytes = new;
        }

        if bytes.is_empty() || (start == self.next && self.held.is_empty()) {
            self.count_overlap(
                overlapped,
                bytes.is_empty(),
                equal,
                differing,
                &conflict,
                ctx,
            );
            if !bytes.is_empty() {
                // The fast path: in order with nothing held, straight to the sink.
                self.deliver(bytes, ctx);
            }
            return Ok(());
        }

        // Compare with the held chunks the segment covers; the parts between are new.
        let end = start + bytes.len() as u64;
        let mut regions = std::mem::take(&mut self.regions);
        regions.clear();
        let from = self
            .held
            .range(..start)
            .next_back()
            .filter(|(s, c)| **s + c.data.len() as u64 > start)
            .map_or(start, |(s, _)| *s);
        let mut cur = start;
        for (&chunk_start, chunk) in self.held.range(from..end) {
            let chunk_end = chunk_start + chunk.data.len() as u64;
            if chunk_start > cur {
                regions.push((cur, chunk_start));
            }
            let a = chunk_start.max(cur);
            let b = chunk_end.min(end);
            if a < b {
                overlapped = true;
                let held = chunk
                    .data
                    .get((a - chunk_start) as usize..(b - chunk_start) as usize)
                    .unwrap_or_default();
                let got = bytes
                    .get((a - start) as usize..(b - start) as usize)
                    .unwrap_or_default();
                let diff = count_differing(held, got);
                differing += diff;
                equal += (b - a) - diff;
                conflict.add(a, diff_span(held, got));
                cur = b;
            }
        }
        if cur < end {
            regions.push((cur, end));
        }
        self.count_overlap(
            overlapped,
            regions.is_empty(),
            equal,
            differing,
            &conflict,
            ctx,
        );

        let mut result = Ok(());
        for &(a, b) in &regions {
            let piece = bytes
                .get((a - start) as usize..(b - start) as usize)
                .unwrap_or_default();
            result = self.place(a, piece, ctx);
            if result.is_err() {
                break;
            }
        }
        self.regions = regions;
        result
    }

    fn count_overlap<S: Sink + ?Sized>(
        &mut self,
        overlapped: bool,
        nothing_new: bool,
        equal: u64,
        differing: u64,
        conflict: &ConflictSpan,
        ctx: &mut Ctx<'_, S>,
    ) {
        if overlapped {
            self.counters.overlaps += 1;
        }
        if nothing_new {
            self.counters.retransmitted_segments += 1;
        }
        self.counters.duplicate_bytes += equal;
        self.counters.conflicting_bytes += differing;
        if let Some((first, last)) = conflict.0 {
            self.counters.conflicts += 1;
            ctx.sink.event(Event::ConflictingOverlap {
                direction: self.direction,
                offset: first,
                len: last - first + 1,
            });
        }
    }

    /// Places new bytes (covering nothing received) at `offset` >= next.
    fn place<S: Sink + ?Sized>(
        &mut self,
        offset: u64,
        piece: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        if offset < self.next {
            // Cannot happen (new parts lie between held chunks, above next); never deliver twice.
            self.counters.unchecked_bytes += piece.len() as u64;
            return Ok(());
        }
        if offset > self.next && self.make_room(offset, piece.len(), ctx)? {
            self.held_bytes += piece.len();
            self.counters.out_of_order_bytes += piece.len() as u64;
            self.held.insert(
                offset,
                Chunk {
                    data: piece.to_vec(),
                    arrived: ctx.now,
                },
            );
            self.hole_since.get_or_insert(ctx.now);
            return Ok(());
        }
        self.deliver(piece, ctx);
        self.drain(ctx);
        Ok(())
    }

    /// Makes room to hold `len` bytes at `offset`, resolving the lowest hole while a cap is
    /// reached. True: the budget was taken; false: the bytes are now in order.
    fn make_room<S: Sink + ?Sized>(
        &mut self,
        offset: u64,
        len: usize,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<bool, GapInfo> {
        loop {
            if self.next >= offset {
                return Ok(false);
            }
            let flow_bytes = self.held_bytes + ctx.other_bytes;
            let flow_chunks = self.held.len() + ctx.other_chunks;
            let cause = if flow_bytes.saturating_add(len) > ctx.config.max_held_bytes
                || flow_chunks >= ctx.config.max_held_chunks
            {
                HoleCause::FlowCap
            } else if ctx.budget.take(len) {
                return Ok(true);
            } else {
                HoleCause::BudgetCap
            };
            self.resolve_lowest(offset, cause, ctx)?;
        }
    }

    fn deliver<S: Sink + ?Sized>(&mut self, bytes: &[u8], ctx: &mut Ctx<'_, S>) {
        ctx.sink.data(self.direction, self.next, bytes);
        self.recent.push(ctx.config.recheck_window, bytes);
        self.next += bytes.len() as u64;
        self.counters.delivered_bytes += bytes.len() as u64;
    }

    /// Delivers the held chunks that became contiguous.
    fn drain<S: Sink + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>) {
        let mut changed = false;
        while let Some(entry) = self.held.first_entry() {
            let start = *entry.key();
            if start > self.next {
                break;
            }
            let chunk = entry.remove();
            changed = true;
            self.held_bytes -= chunk.data.len();
            ctx.budget.give(chunk.data.len());
            let skip = usize::try_from(self.next - start).unwrap_or(usize::MAX);
            if let Some(rest) = chunk.data.get(skip..).filter(|r| !r.is_empty()) {
                self.deliver(rest, ctx);
            }
        }
        if changed {
            self.hole_since = self.held.values().map(|c| c.arrived).min();
        }
    }

    /// Resolves the hole at `next` (ending at the first held chunk or at `limit`).
    fn resolve_lowest<S: Sink + ?Sized>(
        &mut self,
        limit: u64,
        cause: HoleCause,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        if self.next >= limit {
            return Ok(());
        }
        let hole_end = self.held.keys().next().map_or(limit, |&s| s.min(limit));
        let len = hole_end - self.next;
        if ctx.config.gap_policy == GapPolicy::Drop {
            return Err(GapInfo {
                direction: self.direction,
                offset: self.next,
                len,
                cause,
            });
        }
        ctx.sink.event(Event::Gap {
            direction: self.direction,
            offset: self.next,
            len,
            cause,
        });
        self.counters.gaps += 1;
        self.counters.skipped_bytes += len;
        self.next = hole_end;
        // The window must end at `next`: what came before the gap can no longer be placed.
        self.recent.clear();
        self.drain(ctx);
        Ok(())
    }

    /// Resolves every hole below `limit`.
    fn resolve_below<S: Sink + ?Sized>(
        &mut self,
        limit: u64,
        cause: HoleCause,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        while self.next < limit {
            self.resolve_lowest(limit, cause, ctx)?;
        }
        Ok(())
    }

    fn held_end(&self) -> Option<u64> {
        self.held
            .last_key_value()
            .map(|(s, c)| s + c.data.len() as u64)
    }

    /// Records the FIN at `fin` and drops what is held at or beyond it.
    fn set_fin<S: Sink + ?Sized>(&mut self, fin: u64, ctx: &mut Ctx<'_, S>) {
        if self.fin.is_some() {
            return;
        }
        self.fin = Some(fin);
        self.fin_at = ctx.now;
        let beyond = self.held.split_off(&fin);
        let mut cut: usize = beyond.values().map(|c| c.data.len()).sum();
        if let Some(mut last) = self.held.last_entry() {
            let keep = (fin - *last.key()) as usize;
            let chunk = last.get_mut();
            if chunk.data.len() > keep {
                cut += chunk.data.len() - keep;
                chunk.data.truncate(keep);
            }
        }
        if cut > 0 {
            self.held_bytes -= cut;
            ctx.budget.give(cut);
            self.counters.after_fin_bytes += cut as u64;
            self.hole_since = self.held.values().map(|c| c.arrived).min();
        }
    }

    /// Hole timeout and FIN grace; then whether the FIN was reached.
    pub(super) fn on_timers<S: Sink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        while let (Some(since), Some(first)) = (self.hole_since, self.held.keys().next().copied()) {
            if ctx.now.saturating_sub(since) < ctx.config.hole_timeout_ns {
                break;
            }
            self.resolve_lowest(first, HoleCause::Timeout, ctx)?;
        }
        if let Some(fin) = self.fin {
            if self.next < fin && ctx.now.saturating_sub(self.fin_at) >= ctx.config.fin_grace_ns {
                self.resolve_below(fin, HoleCause::Fin, ctx)?;
            }
        }
        self.check_closed(ctx);
        Ok(())
    }

    pub(super) fn on_ring_loss<S: Sink + ?Sized>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
    ) -> Result<(), GapInfo> {
        match self.held_end() {
            Some(end) => self.resolve_below(end, HoleCause::RingLoss, ctx)?,
            None => self.loss_pending = true,
        }
        self.check_closed(ctx);
        Ok(())
    }

    /// Resolves every hole up to the last held byte or the FIN (the flow is ending).
    pub(super) fn flush<S: Sink + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>) -> Result<(), GapInfo> {
        let end = self.held_end().unwrap_or(0).max(self.fin.unwrap_or(0));
        self.resolve_below(end, HoleCause::FlowEnd, ctx)?;
        self.check_closed(ctx);
        Ok(())
    }

    fn check_closed<S: Sink + ?Sized>(&mut self, ctx: &mut Ctx<'_, S>) {
        if let Some(fin) = self.fin {
            if !self.closed && self.next >= fin {
                self.closed = true;
                ctx.sink.event(Event::DirectionClosed {
                    direction: self.direction,
                    offset: fin,
                });
            }
        }
    }

    /// Throws away what is held (the flow ended) and returns it to the budget.
    pub(super) fn discard(&mut self, budget: &mut super::Budget) {
        self.counters.discarded_bytes += self.held_bytes as u64;
        budget.give(self.held_bytes);
        self.held.clear();
        self.held_bytes = 0;
        self.hole_since = None;
    }
}
