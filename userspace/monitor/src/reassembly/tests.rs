use proptest::prelude::*;

use super::*;

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;
const MS: u64 = 1_000_000;

/// Records what the reassembler hands out and checks that each direction is contiguous:
/// every chunk or gap starts where the previous one ended.
#[derive(Default)]
struct Rec {
    /// Per direction, by stream offset: Some(byte) delivered, None skipped.
    streams: [Vec<Option<u8>>; 2],
    events: Vec<Event>,
    /// Number of `data` calls.
    chunks: usize,
    /// Only check continuity, do not keep the bytes (gaps may be gigabytes long).
    lean: bool,
    ends: [u64; 2],
}

impl Sink for Rec {
    fn data(&mut self, direction: Direction, offset: u64, bytes: &[u8]) {
        let end = &mut self.ends[direction.index()];
        assert_eq!(offset, *end, "data out of order in {direction:?}");
        assert!(!bytes.is_empty(), "empty chunk");
        *end += bytes.len() as u64;
        self.chunks += 1;
        if !self.lean {
            self.streams[direction.index()].extend(bytes.iter().copied().map(Some));
        }
    }

    fn event(&mut self, event: Event) {
        if let Event::Gap {
            direction,
            offset,
            len,
            ..
        } = event
        {
            let end = &mut self.ends[direction.index()];
            assert_eq!(offset, *end, "gap out of order in {direction:?}");
            assert!(len > 0, "empty gap");
            *end += len;
            if !self.lean {
                self.streams[direction.index()].extend(std::iter::repeat_n(None, len as usize));
            }
        }
        self.events.push(event);
    }
}

impl Rec {
    fn bytes(&self, d: Direction) -> Vec<u8> {
        self.streams[d.index()]
            .iter()
            .map(|b| b.unwrap_or(b'?'))
            .collect()
    }

    fn gaps(&self) -> Vec<(Direction, u64, u64, HoleCause)> {
        self.events
            .iter()
            .filter_map(|e| match *e {
                Event::Gap {
                    direction,
                    offset,
                    len,
                    cause,
                } => Some((direction, offset, len, cause)),
                _ => None,
            })
            .collect()
    }

    fn conflicts(&self) -> Vec<(u64, u64)> {
        self.events
            .iter()
            .filter_map(|e| match *e {
                Event::ConflictingOverlap { offset, len, .. } => Some((offset, len)),
                _ => None,
            })
            .collect()
    }
}

fn seg(direction: Direction, seq: u32, payload: &[u8]) -> Segment<'_> {
    Segment::data(direction, seq, payload)
}

fn syn(direction: Direction, seq: u32) -> Segment<'static> {
    Segment {
        syn: true,
        ..Segment::data(direction, seq, &[])
    }
}

fn fin(direction: Direction, seq: u32, payload: &[u8]) -> Segment<'_> {
    Segment {
        fin: true,
        ..Segment::data(direction, seq, payload)
    }
}

fn rst(direction: Direction, seq: u32) -> Segment<'static> {
    Segment {
        rst: true,
        ..Segment::data(direction, seq, &[])
    }
}

/// A flow, its budget and its recorder.
struct Harness {
    flow: FlowReassembler,
    budget: Budget,
    rec: Rec,
}

impl Harness {
    fn new(config: Config) -> Harness {
        Harness {
            flow: FlowReassembler::new(config, 0),
            budget: Budget::new(1 << 20),
            rec: Rec::default(),
        }
    }

    fn feed(&mut self, segment: &Segment<'_>, now: u64) -> Status {
        let status = self
            .flow
            .segment(segment, now, &mut self.budget, &mut self.rec);
        assert_eq!(
            self.budget.used(),
            self.flow.held_bytes(),
            "budget and held bytes disagree"
        );
        status
    }

    fn poll(&mut self, now: u64) -> Status {
        let status = self.flow.poll(now, &mut self.budget, &mut self.rec);
        assert_eq!(self.budget.used(), self.flow.held_bytes());
        status
    }

    fn c(&self) -> &Counters {
        self.flow.counters(C2S)
    }
}

fn patient() -> Config {
    Config {
        hole_timeout_ns: u64::MAX,
        fin_grace_ns: 0,
        idle_timeout_ns: u64::MAX,
        ..Config::default()
    }
}

#[test]
fn in_order_across_the_wrap_is_delivered_without_holding() {
    let mut h = Harness::new(patient());
    let isn = u32::MAX - 5;
    h.feed(&syn(C2S, isn), 0);
    let data: Vec<u8> = (0..40).collect();
    let mut seq = isn.wrapping_add(1);
    for piece in data.chunks(7) {
        h.feed(&seg(C2S, seq, piece), 0);
        assert_eq!(h.flow.held_bytes(), 0);
        seq = seq.wrapping_add(piece.len() as u32);
    }
    assert_eq!(h.rec.bytes(C2S), data);
    assert_eq!(h.rec.chunks, 6, "one sink call per segment");
    assert_eq!(h.c().delivered_bytes, 40);
    assert_eq!(h.c().out_of_order_bytes, 0);
    assert_eq!(h.flow.next_offset(C2S), 40);
}

#[test]
fn next_seq_follows_delivery_across_the_wrap_and_counts_the_fin() {
    let mut h = Harness::new(patient());
    assert_eq!(h.flow.next_seq(C2S), None);
    let isn = u32::MAX - 2;
    h.feed(&syn(C2S, isn), 0);
    assert_eq!(h.flow.next_seq(C2S), Some(u32::MAX - 1));
    assert_eq!(h.flow.next_seq(S2C), None);
    h.feed(&seg(C2S, u32::MAX - 1, b"abcd"), 0);
    assert_eq!(h.flow.next_seq(C2S), Some(2));
    // Held beyond a hole: not delivered, so not counted.
    h.feed(&seg(C2S, 4, b"xy"), 0);
    assert_eq!(h.flow.next_seq(C2S), Some(2));
    h.feed(&seg(C2S, 2, b"zz"), 0);
    assert_eq!(h.flow.next_offset(C2S), 8);
    assert_eq!(h.flow.next_seq(C2S), Some(6));
    h.feed(&fin(C2S, 6, b""), 0);
    assert_eq!(
        h.flow.next_seq(C2S),
        Some(7),
        "six bytes after the wrap, plus the FIN"
    );
    // A direction first seen mid-stream starts at its first segment.
    h.feed(&seg(S2C, 5000, b"hello"), 0);
    assert_eq!(h.flow.next_seq(S2C), Some(5005));
}

#[test]
fn out_of_order_is_held_until_the_hole_fills() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 100), 0);
    h.feed(&seg(C2S, 106, b"world"), 0);
    h.feed(&seg(C2S, 111, b"!"), 0);
    assert!(h.rec.bytes(C2S).is_empty());
    assert_eq!(h.flow.held_bytes(), 6);
    assert_eq!(h.budget.used(), 6);
    h.feed(&seg(C2S, 101, b"hello"), 0);
    assert_eq!(h.rec.bytes(C2S), b"helloworld!");
    assert_eq!(h.budget.used(), 0);
    assert_eq!(h.c().out_of_order_bytes, 6);
    assert_eq!(h.c().delivered_bytes, 11);
}

#[test]
fn exact_retransmissions_are_counted_not_delivered_twice() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"abcd"), 0);
    h.feed(&seg(C2S, 9, b"ijk"), 0);
    h.feed(&seg(C2S, 1, b"abcd"), 0); // delivered bytes again
    h.feed(&seg(C2S, 9, b"ijk"), 0); // held bytes again
    h.feed(&seg(C2S, 3, b"cdefgh"), 0); // half old, half new
    assert_eq!(h.rec.bytes(C2S), b"abcdefghijk");
    let c = h.c();
    assert_eq!(c.retransmitted_segments, 2);
    assert_eq!(c.overlaps, 3);
    assert_eq!(c.duplicate_bytes, 4 + 3 + 2);
    assert_eq!(c.conflicts, 0);
    assert!(h.rec.conflicts().is_empty());
}

#[test]
fn conflicting_overlaps_keep_the_first_copy_and_are_reported() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"abcdef"), 0);
    // Against delivered bytes: offsets 2..5 differ at 2 and 4.
    h.feed(&seg(C2S, 3, b"XdYf"), 0);
    assert_eq!(h.rec.conflicts(), vec![(2, 3)]);
    // Against held bytes, and new bytes in the same segment.
    h.feed(&seg(C2S, 11, b"klmn"), 0);
    h.feed(&seg(C2S, 9, b"ijkLmnop"), 0);
    assert_eq!(h.rec.conflicts(), vec![(2, 3), (11, 1)]);
    h.feed(&seg(C2S, 7, b"gh"), 0);
    assert_eq!(h.rec.bytes(C2S), b"abcdefghijklmnop");
    assert_eq!(h.c().conflicts, 2);
    assert_eq!(h.c().conflicting_bytes, 3);
}

#[test]
fn retransmissions_older_than_the_window_are_unchecked() {
    let mut h = Harness::new(Config {
        recheck_window: 4,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"abcdefgh"), 0);
    h.feed(&seg(C2S, 1, b"XXXXefgY"), 0);
    assert_eq!(h.rec.conflicts(), vec![(7, 1)]);
    assert_eq!(h.c().unchecked_bytes, 4);
    assert_eq!(h.c().duplicate_bytes, 3);
}

#[test]
fn mid_stream_start_takes_the_first_sequence_number() {
    let mut h = Harness::new(patient());
    h.feed(&seg(S2C, 5000, b"later"), 0);
    h.feed(&seg(S2C, 4998, b"xxlat"), 0); // before the start: dropped, counted
    h.feed(&seg(S2C, 5005, b"!"), 0);
    assert_eq!(h.rec.bytes(S2C), b"later!");
    assert_eq!(h.flow.counters(S2C).before_start_bytes, 2);
    assert_eq!(h.flow.counters(S2C).duplicate_bytes, 3);
    assert!(h.rec.bytes(C2S).is_empty());
}

#[test]
fn syn_takes_one_sequence_number_and_may_carry_data() {
    let mut h = Harness::new(patient());
    // TCP Fast Open: data in the SYN starts at ISN+1.
    let s = Segment {
        syn: true,
        ..seg(C2S, 41, b"GET")
    };
    h.feed(&s, 0);
    h.feed(&s, 0); // a retransmitted SYN
    h.feed(&syn(S2C, 7000), 0);
    h.feed(&seg(S2C, 7001, b"ok"), 0);
    h.feed(&seg(C2S, 45, b" /"), 0);
    assert_eq!(h.rec.bytes(C2S), b"GET /");
    assert_eq!(h.rec.bytes(S2C), b"ok");
    assert_eq!(h.c().retransmitted_segments, 1);
}

#[test]
fn fin_with_a_hole_skips_it_and_closes_the_direction() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"abc"), 0);
    h.feed(&seg(C2S, 7, b"gh"), 0);
    h.feed(&fin(C2S, 9, b"ij"), 0);
    assert_eq!(h.rec.gaps(), vec![(C2S, 3, 3, HoleCause::Fin)]);
    assert_eq!(h.rec.bytes(C2S), b"abc???ghij");
    assert!(h.rec.events.contains(&Event::DirectionClosed {
        direction: C2S,
        offset: 10
    }));
    // Bytes at or beyond the FIN are ignored.
    h.feed(&seg(C2S, 11, b"zz"), 0);
    h.feed(&seg(C2S, 4, b"def"), 0);
    assert_eq!(h.c().after_fin_bytes, 2);
    assert_eq!(h.c().unchecked_bytes, 3);
    assert_eq!(h.rec.bytes(C2S).len(), 10);
    assert_eq!(h.flow.status(), Status::Open, "the other direction is open");
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn fin_grace_lets_a_retransmission_fill_the_hole() {
    let mut h = Harness::new(Config {
        fin_grace_ns: 100 * MS,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 4, b"def"), 0);
    h.feed(&fin(C2S, 7, b""), MS);
    h.feed(&seg(C2S, 1, b"abc"), 50 * MS);
    assert_eq!(h.rec.bytes(C2S), b"abcdef");
    assert!(h.rec.gaps().is_empty());
    assert!(h.rec.events.contains(&Event::DirectionClosed {
        direction: C2S,
        offset: 6
    }));

    let mut h = Harness::new(Config {
        fin_grace_ns: 100 * MS,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 4, b"def"), 0);
    h.feed(&fin(C2S, 7, b""), MS);
    h.poll(50 * MS);
    assert!(h.rec.gaps().is_empty());
    h.poll(101 * MS);
    assert_eq!(h.rec.gaps(), vec![(C2S, 0, 3, HoleCause::Fin)]);
    assert_eq!(h.rec.bytes(C2S), b"???def");
}

#[test]
fn data_held_beyond_a_later_fin_is_dropped() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 5, b"efgh"), 0);
    h.feed(&seg(C2S, 11, b"klm"), 0);
    assert_eq!(h.budget.used(), 7);
    h.feed(&fin(C2S, 7, b""), 0); // FIN at offset 6
    assert_eq!(h.c().after_fin_bytes, 5);
    assert_eq!(h.rec.bytes(C2S), b"????ef");
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn both_fins_close_the_flow() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 10), 0);
    h.feed(&syn(S2C, 20), 0);
    h.feed(&fin(C2S, 11, b"bye"), 0);
    assert_eq!(h.flow.status(), Status::Open);
    h.feed(&fin(S2C, 21, b""), 0);
    assert_eq!(h.flow.status(), Status::Ended(EndReason::Closed));
    assert_eq!(
        h.rec.events.last(),
        Some(&Event::FlowEnded(EndReason::Closed))
    );
    h.feed(&seg(C2S, 14, b"x"), 0);
    assert_eq!(h.c().after_end_segments, 1);
}

#[test]
fn rst_ends_the_flow_and_flushes_held_bytes_under_skip() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"ab"), 0);
    h.feed(&seg(C2S, 5, b"ef"), 0);
    assert_eq!(
        h.feed(&rst(C2S, 7), 0),
        Status::Ended(EndReason::Reset { direction: C2S })
    );
    assert_eq!(h.rec.gaps(), vec![(C2S, 2, 2, HoleCause::FlowEnd)]);
    assert_eq!(h.rec.bytes(C2S), b"ab??ef");
    assert_eq!(h.budget.used(), 0);
    assert_eq!(
        h.feed(&seg(C2S, 7, b"gh"), 0),
        Status::Ended(EndReason::Reset { direction: C2S })
    );
    assert_eq!(h.rec.bytes(C2S).len(), 6);
}

#[test]
fn rst_outside_the_window_is_ignored_and_reported() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"abcd"), 0);
    assert_eq!(h.feed(&rst(C2S, 100_000), 0), Status::Open);
    assert_eq!(h.feed(&rst(C2S, 2), 0), Status::Open, "below the next byte");
    assert_eq!(
        h.rec.events,
        vec![
            Event::IgnoredRst {
                direction: C2S,
                offset: 99_999
            },
            Event::IgnoredRst {
                direction: C2S,
                offset: 1
            }
        ]
    );
    assert_eq!(h.c().ignored_rsts, 2);
    h.feed(&seg(C2S, 5, b"e"), 0);
    assert_eq!(h.rec.bytes(C2S), b"abcde");
    // An RST from a direction never seen is taken (a refused connection).
    assert_eq!(
        h.feed(&rst(S2C, 1234), 0),
        Status::Ended(EndReason::Reset { direction: S2C })
    );
}

#[test]
fn rst_under_drop_discards_held_bytes() {
    let mut h = Harness::new(Config {
        gap_policy: GapPolicy::Drop,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 5, b"ef"), 0);
    h.feed(&rst(C2S, 3), 0);
    assert_eq!(
        h.flow.status(),
        Status::Ended(EndReason::Reset { direction: C2S })
    );
    assert!(h.rec.gaps().is_empty());
    assert_eq!(h.c().discarded_bytes, 2);
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn idle_timeout_ends_the_flow() {
    let mut h = Harness::new(Config {
        idle_timeout_ns: 10 * MS,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 3, b"cd"), 5 * MS);
    assert_eq!(h.poll(14 * MS), Status::Open);
    assert_eq!(h.poll(15 * MS), Status::Ended(EndReason::IdleTimeout));
    assert_eq!(h.rec.gaps(), vec![(C2S, 0, 2, HoleCause::FlowEnd)]);
    assert_eq!(
        h.rec.events.last(),
        Some(&Event::FlowEnded(EndReason::IdleTimeout))
    );
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn hole_timeout_skips_holes_by_age() {
    let mut h = Harness::new(Config {
        hole_timeout_ns: 10 * MS,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 3, b"cd"), MS);
    h.feed(&seg(C2S, 7, b"gh"), 6 * MS);
    h.poll(10 * MS);
    assert!(h.rec.gaps().is_empty());
    h.poll(11 * MS);
    // The first hole is 10 ms old; the second only 5 ms.
    assert_eq!(h.rec.gaps(), vec![(C2S, 0, 2, HoleCause::Timeout)]);
    assert_eq!(h.rec.bytes(C2S), b"??cd");
    // A segment arriving late also runs the timer of its direction.
    h.feed(&seg(S2C, 0, b"x"), 16 * MS);
    assert_eq!(h.rec.bytes(C2S), b"??cd");
    h.feed(&seg(C2S, 100, b""), 16 * MS);
    assert_eq!(h.rec.bytes(C2S), b"??cd??gh");
}

#[test]
fn drop_policy_ends_the_flow_on_a_gap() {
    let mut h = Harness::new(Config {
        gap_policy: GapPolicy::Drop,
        hole_timeout_ns: 10 * MS,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 1, b"ab"), 0);
    h.feed(&seg(C2S, 5, b"ef"), 0);
    let gap = DroppedGap {
        direction: C2S,
        offset: 2,
        len: 2,
        cause: HoleCause::Timeout,
    };
    assert_eq!(h.poll(10 * MS), Status::Ended(EndReason::GapDropped(gap)));
    assert_eq!(
        h.rec.events,
        vec![Event::FlowEnded(EndReason::GapDropped(gap))]
    );
    assert_eq!(h.rec.bytes(C2S), b"ab");
    assert_eq!(h.budget.used(), 0);
    assert_eq!(h.c().discarded_bytes, 2);
}

#[test]
fn per_flow_byte_cap_skips_the_lowest_hole() {
    let mut h = Harness::new(Config {
        max_held_bytes: 4,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 3, b"cd"), 0);
    h.feed(&seg(S2C, 100, b"A"), 0);
    h.feed(&seg(S2C, 103, b"D"), 0); // the other direction holds one byte
    h.feed(&seg(C2S, 7, b"g"), 0);
    assert_eq!(h.flow.held_bytes(), 4);
    h.feed(&seg(C2S, 10, b"jk"), 0); // 4 + 2 > 4: the lowest C2S hole goes
    assert_eq!(h.rec.gaps(), vec![(C2S, 0, 2, HoleCause::FlowCap)]);
    assert_eq!(h.rec.bytes(C2S), b"??cd");
    assert_eq!(h.flow.held_bytes(), 4);
    assert_eq!(h.budget.used(), 4);
    // A segment larger than the cap skips every hole below it and goes through.
    h.feed(&seg(C2S, 20, b"0123456789"), 0);
    assert_eq!(h.rec.bytes(C2S), b"??cd??g??jk????????0123456789");
    assert_eq!(h.flow.held_bytes(), 1);
}

#[test]
fn per_flow_chunk_cap() {
    let mut h = Harness::new(Config {
        max_held_chunks: 2,
        ..patient()
    });
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 3, b"c"), 0);
    h.feed(&seg(C2S, 5, b"e"), 0);
    h.feed(&seg(C2S, 7, b"g"), 0);
    assert_eq!(h.rec.gaps(), vec![(C2S, 0, 2, HoleCause::FlowCap)]);
    assert_eq!(h.flow.held_bytes(), 2);
}

#[test]
fn shared_budget_caps_all_flows_and_returns_to_zero() {
    let config = patient();
    let mut budget = Budget::new(10);
    let mut recs: Vec<Rec> = (0..3).map(|_| Rec::default()).collect();
    let mut flows: Vec<FlowReassembler> = (0..3)
        .map(|_| FlowReassembler::new(config.clone(), 0))
        .collect();
    for (i, (flow, rec)) in flows.iter_mut().zip(&mut recs).enumerate() {
        let d = if i == 1 { S2C } else { C2S };
        flow.segment(&syn(d, 0), 0, &mut budget, rec);
        flow.segment(&seg(d, 5, b"efgh"), 0, &mut budget, rec);
    }
    // Two flows hold 4 each; the third could not hold 4 more: its hole was skipped.
    assert_eq!(budget.used(), 8);
    assert_eq!(flows[2].held_bytes(), 0);
    assert_eq!(recs[2].gaps(), vec![(C2S, 0, 4, HoleCause::BudgetCap)]);
    assert_eq!(recs[2].bytes(C2S), b"????efgh");
    flows[2].segment(&seg(C2S, 11, b"jk"), 0, &mut budget, &mut recs[2]);
    assert_eq!(budget.used(), 10);
    // Full: the first flow's next out-of-order byte costs it its hole.
    flows[0].segment(&seg(C2S, 20, b"x"), 0, &mut budget, &mut recs[0]);
    assert_eq!(recs[0].gaps(), vec![(C2S, 0, 4, HoleCause::BudgetCap)]);
    assert_eq!(recs[0].bytes(C2S), b"????efgh");
    assert_eq!(flows[0].held_bytes(), 1);
    assert_eq!(budget.used(), 7);
    assert_eq!(
        budget.used(),
        flows.iter().map(FlowReassembler::held_bytes).sum::<usize>()
    );
    for flow in flows {
        flow.release(&mut budget);
    }
    assert_eq!(budget.used(), 0);
}

#[test]
fn budget_caps_under_drop_end_the_flow() {
    let mut h = Harness::new(Config {
        gap_policy: GapPolicy::Drop,
        ..patient()
    });
    h.budget = Budget::new(3);
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 2, b"bc"), 0);
    let status = h.feed(&seg(C2S, 5, b"ef"), 0);
    let gap = DroppedGap {
        direction: C2S,
        offset: 0,
        len: 1,
        cause: HoleCause::BudgetCap,
    };
    assert_eq!(status, Status::Ended(EndReason::GapDropped(gap)));
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn truncated_segment_skips_its_tail() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    let cut = Segment {
        wire_len: 10,
        ..seg(C2S, 1, b"abcd")
    };
    h.feed(&cut, 0);
    assert_eq!(h.rec.gaps(), vec![(C2S, 4, 6, HoleCause::Truncated)]);
    h.feed(&seg(C2S, 11, b"kl"), 0);
    assert_eq!(h.rec.bytes(C2S), b"abcd??????kl");
    assert_eq!(h.c().truncated_bytes, 6);
    // Out of order: the holes below the truncated segment go too.
    let cut = Segment {
        wire_len: 5,
        ..seg(C2S, 20, b"tu")
    };
    h.feed(&cut, 0);
    assert_eq!(h.rec.gaps().len(), 3);
    assert_eq!(h.rec.gaps()[1], (C2S, 12, 7, HoleCause::Truncated));
    assert_eq!(h.rec.gaps()[2], (C2S, 21, 3, HoleCause::Truncated));
    assert_eq!(h.flow.next_offset(C2S), 24);
}

#[test]
fn ring_loss_resolves_holes_now_or_at_the_next_segment() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&syn(S2C, 0), 0);
    h.feed(&seg(C2S, 4, b"d"), 0);
    h.flow.ring_loss(0, &mut h.budget, &mut h.rec);
    assert_eq!(h.rec.gaps(), vec![(C2S, 0, 3, HoleCause::RingLoss)]);
    // S2C had no hole: its next segment decides.
    h.feed(&seg(S2C, 6, b"f"), 0);
    assert_eq!(h.rec.gaps()[1], (S2C, 0, 5, HoleCause::RingLoss));
    // Only once.
    h.feed(&seg(S2C, 9, b"i"), 0);
    assert_eq!(h.rec.gaps().len(), 2);
    assert_eq!(h.flow.held_bytes(), 1);
}

#[test]
fn finish_flushes_and_release_returns_the_counters() {
    let mut h = Harness::new(patient());
    h.feed(&syn(C2S, 0), 0);
    h.feed(&seg(C2S, 3, b"cd"), 0);
    assert_eq!(
        h.flow.finish(&mut h.budget, &mut h.rec),
        Status::Ended(EndReason::Finished)
    );
    assert_eq!(h.rec.bytes(C2S), b"??cd");
    let counters = h.flow.release(&mut h.budget);
    assert_eq!(counters[C2S.index()].delivered_bytes, 2);
    assert_eq!(counters[C2S.index()].skipped_bytes, 2);
    assert_eq!(h.budget.used(), 0);
}

#[test]
fn release_without_finish_returns_held_bytes() {
    let mut h = Harness::new(patient());
    h.feed(&seg(C2S, 0, b"a"), 0);
    h.feed(&seg(C2S, 3, b"cd"), 0);
    assert_eq!(h.budget.used(), 2);
    let counters = h.flow.release(&mut h.budget);
    assert_eq!(h.budget.used(), 0);
    assert_eq!(counters[0].discarded_bytes, 2);
}

// ---- Property tests against a byte-by-byte model ----

/// A generated transfer: the stream, the segments in arrival order (offset, bytes), and
/// which offsets the model says conflict in each.
#[derive(Debug, Clone)]
struct Plan {
    isn: u32,
    stream: Vec<u8>,
    arrivals: Vec<(u64, Vec<u8>)>,
}

/// "First copy wins" per byte, in arrival order: the bytes received and, per arrival, the
/// first and last conflicting offsets.
/// Per arrival, its first and last conflicting offset.
type ConflictSpans = Vec<Option<(u64, u64)>>;

fn model(len: usize, arrivals: &[(u64, Vec<u8>)]) -> (Vec<Option<u8>>, ConflictSpans) {
    let mut got = vec![None; len];
    let mut conflicts = Vec::new();
    for (offset, bytes) in arrivals {
        let mut span: Option<(u64, u64)> = None;
        for (i, &b) in bytes.iter().enumerate() {
            let o = offset + i as u64;
            match got[o as usize] {
                None => got[o as usize] = Some(b),
                Some(first) if first != b => {
                    span = Some(span.map_or((o, o), |(a, _)| (a, o)));
                }
                Some(_) => {}
            }
        }
        conflicts.push(span);
    }
    (got, conflicts)
}

/// Cuts a stream into segments (empty ones included), adds re-sends of random ranges (some
/// with altered bytes), drops some originals when `drops`, and shuffles.
fn plan(drops: bool) -> impl Strategy<Value = Plan> {
    (
        0u32..4000,
        proptest::collection::vec(any::<u8>(), 0..1500),
        // Segment sizes from 1: a plan whose sizes were all 0 never advanced and grew its
        // arrivals until the machine ran out of memory.
        proptest::collection::vec(1usize..48, 1..200),
        proptest::collection::vec(
            (
                any::<prop::sample::Index>(),
                0usize..64,
                any::<bool>(),
                any::<u8>(),
            ),
            0..12,
        ),
        proptest::collection::vec(any::<bool>(), 200),
        any::<u64>(),
    )
        .prop_map(move |(back, stream, sizes, resends, drop_mask, seed)| {
            let mut arrivals = Vec::new();
            let mut at = 0usize;
            let mut sizes = sizes.into_iter().cycle();
            let mut i = 0;
            while at < stream.len() {
                let n = sizes.next().unwrap_or(1).min(stream.len() - at);
                let dropped = drops && drop_mask[i % drop_mask.len()] && i % 3 == 0;
                if !dropped {
                    arrivals.push((at as u64, stream[at..at + n].to_vec()));
                }
                at += n;
                i += 1;
            }
            for (start, len, alter, xor) in resends {
                if stream.is_empty() {
                    break;
                }
                let s = start.index(stream.len());
                let e = (s + len).min(stream.len());
                let mut bytes = stream[s..e].to_vec();
                if alter && !bytes.is_empty() {
                    let k = usize::from(xor) % bytes.len();
                    bytes[k] ^= xor | 1;
                }
                arrivals.push((s as u64, bytes));
            }
            // Deterministic shuffle from the seed (Fisher-Yates with an LCG).
            let mut state = seed | 1;
            for j in (1..arrivals.len()).rev() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let k = ((state >> 33) % (j as u64 + 1)) as usize;
                arrivals.swap(j, k);
            }
            Plan {
                isn: u32::MAX - back,
                stream,
                arrivals,
            }
        })
}

/// Feeds a plan's SYN and segments, checking each arrival's conflict report against the model.
fn run_plan(h: &mut Harness, plan: &Plan) -> Result<Vec<Option<u8>>, TestCaseError> {
    let (got, conflicts) = model(plan.stream.len(), &plan.arrivals);
    h.feed(&syn(C2S, plan.isn), 0);
    for ((offset, bytes), expected) in plan.arrivals.iter().zip(&conflicts) {
        let before = h.rec.events.len();
        let seq = plan.isn.wrapping_add(1).wrapping_add(*offset as u32);
        h.feed(&seg(C2S, seq, bytes), 0);
        let reported: Vec<(u64, u64)> = h.rec.events[before..]
            .iter()
            .filter_map(|e| match *e {
                Event::ConflictingOverlap { offset, len, .. } => Some((offset, offset + len - 1)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(reported, expected.iter().copied().collect::<Vec<_>>());
    }
    Ok(got)
}

/// The maximal runs of missing bytes in `got[..end]`, as (offset, len).
fn holes(got: &[Option<u8>], end: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < end {
        if got[i].is_none() {
            let s = i;
            while i < end && got[i].is_none() {
                i += 1;
            }
            out.push((s as u64, (i - s) as u64));
        } else {
            i += 1;
        }
    }
    out
}

fn roomy() -> Config {
    Config {
        max_held_bytes: 1 << 20,
        max_held_chunks: 1 << 16,
        recheck_window: 1 << 16,
        ..patient()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn without_drops_the_output_is_the_model(plan in plan(false)) {
        let mut h = Harness::new(roomy());
        let got = run_plan(&mut h, &plan)?;
        let expected: Vec<Option<u8>> = got.clone();
        prop_assert!(expected.iter().all(Option::is_some));
        prop_assert_eq!(&h.rec.streams[0], &expected);
        prop_assert!(h.rec.gaps().is_empty());
        prop_assert_eq!(h.flow.held_bytes(), 0);
        prop_assert_eq!(h.budget.used(), 0);
        let c = *h.c();
        prop_assert_eq!(c.delivered_bytes, plan.stream.len() as u64);
        let sent: u64 = plan.arrivals.iter().map(|(_, b)| b.len() as u64).sum();
        prop_assert_eq!(c.delivered_bytes + c.duplicate_bytes + c.conflicting_bytes, sent);
        // Without alterations, the output is the stream itself.
        if h.rec.conflicts().is_empty() {
            prop_assert_eq!(h.rec.bytes(C2S), plan.stream.clone());
        }
    }

    #[test]
    fn with_drops_skip_reports_the_holes(plan in plan(true), with_fin in any::<bool>()) {
        let mut h = Harness::new(roomy());
        let got = run_plan(&mut h, &plan)?;
        let end = if with_fin {
            let seq = plan.isn.wrapping_add(1).wrapping_add(plan.stream.len() as u32);
            h.feed(&fin(C2S, seq, b""), 0);
            plan.stream.len()
        } else {
            h.flow.finish(&mut h.budget, &mut h.rec);
            // Without a FIN, a missing tail is unknown.
            got.iter().rposition(Option::is_some).map_or(0, |i| i + 1)
        };
        prop_assert_eq!(&h.rec.streams[0][..], &got[..end]);
        let gaps: Vec<(u64, u64)> = h.rec.gaps().iter().map(|g| (g.1, g.2)).collect();
        prop_assert_eq!(gaps, holes(&got, end));
        let cause = if with_fin { HoleCause::Fin } else { HoleCause::FlowEnd };
        prop_assert!(h.rec.gaps().iter().all(|g| g.3 == cause));
        if with_fin {
            let closed = Event::DirectionClosed { direction: C2S, offset: end as u64 };
            prop_assert!(h.rec.events.contains(&closed));
        }
        prop_assert_eq!(h.budget.used(), 0);
        h.flow.release(&mut h.budget);
        prop_assert_eq!(h.budget.used(), 0);
    }

    /// Tight caps on two flows sharing a budget: gaps come early, but whatever is delivered is
    /// the first copy of its byte, each direction stays contiguous (checked by the recorder)
    /// and the budget matches what is held, back to zero on release.
    #[test]
    fn under_tight_caps_delivered_bytes_are_first_copies(
        a in plan(true),
        b in plan(true),
        max_held_bytes in 0usize..300,
        max_held_chunks in 1usize..8,
        budget in 0usize..400,
        drop_policy in any::<bool>(),
    ) {
        let config = Config {
            max_held_bytes,
            max_held_chunks,
            gap_policy: if drop_policy { GapPolicy::Drop } else { GapPolicy::Skip },
            ..roomy()
        };
        let mut budget = Budget::new(budget);
        let plans = [&a, &b];
        let mut flows = [FlowReassembler::new(config.clone(), 0), FlowReassembler::new(config, 0)];
        let mut recs = [Rec::default(), Rec::default()];
        for (f, p) in plans.iter().enumerate() {
            flows[f].segment(&syn(C2S, p.isn), 0, &mut budget, &mut recs[f]);
        }
        let longest = a.arrivals.len().max(b.arrivals.len());
        for i in 0..longest {
            for (f, p) in plans.iter().enumerate() {
                if let Some((offset, bytes)) = p.arrivals.get(i) {
                    let seq = p.isn.wrapping_add(1).wrapping_add(*offset as u32);
                    flows[f].segment(&seg(C2S, seq, bytes), 0, &mut budget, &mut recs[f]);
                }
                prop_assert_eq!(budget.used(), flows[0].held_bytes() + flows[1].held_bytes());
                prop_assert!(budget.used() <= budget.limit());
                prop_assert!(flows[f].held_bytes() <= max_held_bytes);
            }
        }
        for (f, p) in plans.iter().enumerate() {
            let (got, _) = model(p.stream.len(), &p.arrivals);
            for (o, byte) in recs[f].streams[0].iter().enumerate() {
                if let Some(byte) = byte {
                    prop_assert_eq!(Some(*byte), got[o]);
                }
            }
            if !drop_policy {
                // Nothing received is lost silently: each byte is delivered, or was skipped,
                // or arrived after its place had been skipped (counted unchecked).
                flows[f].finish(&mut budget, &mut recs[f]);
                let c = *flows[f].counters(C2S);
                let received = got.iter().filter(|b| b.is_some()).count() as u64;
                prop_assert!(c.delivered_bytes <= received);
                prop_assert_eq!(c.delivered_bytes, recs[f].streams[0].iter().filter(|b| b.is_some()).count() as u64);
            }
        }
        for flow in flows {
            flow.release(&mut budget);
        }
        prop_assert_eq!(budget.used(), 0);
    }

    /// Arbitrary segments, flags, truncations, timers and ring losses never panic, keep each
    /// direction contiguous and the budget exact.
    #[test]
    fn arbitrary_input_keeps_the_invariants(
        ops in proptest::collection::vec(
            (0u8..10, any::<bool>(), any::<u32>(), 0u32..200, proptest::collection::vec(any::<u8>(), 0..40), 0u32..100),
            0..120,
        ),
        config_pick in 0u8..4,
    ) {
        let config = Config {
            gap_policy: if config_pick & 1 == 0 { GapPolicy::Skip } else { GapPolicy::Drop },
            max_held_bytes: 100,
            max_held_chunks: 4,
            hole_timeout_ns: 50,
            fin_grace_ns: 10,
            idle_timeout_ns: if config_pick & 2 == 0 { 10_000 } else { u64::MAX },
            recheck_window: 16,
        };
        let mut h = Harness::new(config);
        h.rec.lean = true;
        h.budget = Budget::new(150);
        let base = 4_294_967_000u32;
        let mut now = 0;
        for (kind, dir, seq, near, payload, extra) in ops {
            now += u64::from(extra);
            let direction = if dir { C2S } else { S2C };
            // Mostly near the stream, sometimes anywhere.
            let seq = if kind == 9 { seq } else { base.wrapping_add(near) };
            let mut s = Segment { wire_len: payload.len() as u32, ..seg(direction, seq, &payload) };
            match kind {
                0 => s.syn = true,
                1 => s.fin = true,
                2 => s.rst = extra % 4 == 0,
                3 => s.wire_len += extra,
                4 => {
                    h.flow.ring_loss(now, &mut h.budget, &mut h.rec);
                    continue;
                }
                5 => {
                    h.poll(now);
                    continue;
                }
                _ => {}
            }
            h.feed(&s, now);
        }
        h.flow.finish(&mut h.budget, &mut h.rec);
        prop_assert!(matches!(h.flow.status(), Status::Ended(_)));
        prop_assert_eq!(h.budget.used(), 0);
        let ends = h.rec.events.iter().filter(|e| matches!(e, Event::FlowEnded(_))).count();
        prop_assert_eq!(ends, 1);
        h.flow.release(&mut h.budget);
        prop_assert_eq!(h.budget.used(), 0);
    }
}
