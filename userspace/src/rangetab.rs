//! The IPv4 range table of one policy (`IMFW_RANGEIDX4`, `IMFW_RANGESUB4` and `IMFW_RANGES4`,
//! see `imfw_common::ranges`): the policy's IPv4 networks flattened into steps, where each
//! address gets the app of the longest network that holds it, as the LPM trie gave it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Result, bail};
use imfw_common::{
    app::APP_NONE,
    matcher::AppMatch,
    ranges::{RANGE_LEARNED, RANGE_STEPS, RANGE_SUB_BLOCKS, RANGE_SUBINDEXED, RANGE_SUBS, RangeBucket, RangeStep, range_lookup},
};

/// A bucket with more steps than this gets a sub-index while blocks are left, densest first:
/// a search of 8 steps takes 3 or 4 dependent reads, a sub-bucket read and the search of its
/// slice (one or two steps in such a bucket) fewer. The blocks are preallocated, so a
/// low threshold costs no memory.
pub const SUB_MIN: usize = 4;

/// A bucket with more steps than this and no sub-index is worth an operator's warning: its
/// search takes 5 reads or more.
pub const DENSE_STEPS: usize = 16;

/// One generation's table, by bucket number (an address's upper 16 bits) and step index
/// relative to the generation's half.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeTable {
    /// The buckets that hold steps or learned addresses; every other bucket is empty.
    pub buckets: BTreeMap<u32, RangeBucket>,
    pub steps: Vec<RangeStep>,
    /// The sub-indexes' blocks, `RANGE_SUBS` sub-buckets each.
    pub subs: Vec<RangeBucket>,
    /// The learned addresses of each flagged bucket, so that the last one's removal clears
    /// the flag.
    learned: BTreeMap<u32, BTreeSet<u32>>,
}

impl RangeTable {
    /// The table of `nets` (prefix length, network, app). A network given twice keeps its last
    /// app, as a trie insert would.
    pub fn build(nets: &[(u32, [u8; 4], AppMatch)]) -> Result<RangeTable> {
        let flat = flatten(nets)?;
        let mut per_bucket: BTreeMap<u32, Vec<RangeStep>> = BTreeMap::new();
        for (k, &(pos, app)) in flat.iter().enumerate() {
            let first = (pos >> 16) as u32;
            let low = pos as u16;
            if app == APP_NONE {
                // Ends the value before it, where that began in the same bucket; at a bucket's
                // start, or in a bucket with nothing before it, "none" is what a search gives.
                if let Some(steps) = per_bucket.get_mut(&first).filter(|_| low != 0) {
                    steps.push(RangeStep { low, app });
                }
                continue;
            }
            per_bucket.entry(first).or_default().push(RangeStep { low, app });
            // Every further bucket the value covers from its start.
            let end = flat.get(k + 1).map_or(1u64 << 32, |s| s.0);
            let last = ((end - 1) >> 16) as u32;
            for b in first + 1..=last {
                per_bucket.entry(b).or_default().push(RangeStep { low: 0, app });
            }
        }
        // The densest buckets get the sub-indexes, numbered in bucket order.
        let mut dense: Vec<(usize, u32)> = per_bucket.iter().filter(|(_, v)| v.len() > SUB_MIN).map(|(b, v)| (v.len(), *b)).collect();
        dense.sort_by(|x, y| y.cmp(x));
        dense.truncate(RANGE_SUB_BLOCKS as usize);
        let mut sub_indexed: Vec<u32> = dense.into_iter().map(|(_, b)| b).collect();
        sub_indexed.sort_unstable();
        let mut t = RangeTable::default();
        for (b, steps) in per_bucket {
            let (Ok(start), Ok(len)) = (u32::try_from(t.steps.len()), u32::try_from(steps.len())) else {
                bail!("IPv4 range table: too many steps");
            };
            if sub_indexed.binary_search(&b).is_ok() {
                let block = u32::try_from(t.subs.len()).unwrap_or(u32::MAX) / RANGE_SUBS;
                t.buckets.insert(b, RangeBucket { start: block, len: len | RANGE_SUBINDEXED });
                t.subs.extend(sub_buckets(start, &steps));
            } else {
                t.buckets.insert(b, RangeBucket { start, len });
            }
            t.steps.extend(steps);
        }
        if t.steps.len() > RANGE_STEPS as usize {
            bail!("IPv4 range table: {} steps, the data plane holds {RANGE_STEPS}", t.steps.len());
        }
        Ok(t)
    }

    /// Buckets with more than [`DENSE_STEPS`] steps left without a sub-index: the blocks ran
    /// out, and their lookups search all their steps by halving.
    pub fn dense_without_sub_index(&self) -> usize {
        self.buckets.values().filter(|b| b.sub_block().is_none() && b.steps() as usize > DENSE_STEPS).count()
    }

    /// Buckets with a sub-index.
    pub fn sub_indexed(&self) -> usize {
        self.subs.len() / RANGE_SUBS as usize
    }

    /// What an operator should know about dense buckets left without a sub-index, if any.
    pub fn shortfall(&self) -> Option<String> {
        let dense = self.dense_without_sub_index();
        (dense > 0).then(|| {
            format!(
                "{dense} /16s hold over {DENSE_STEPS} steps each but the {RANGE_SUB_BLOCKS} sub-index blocks are taken: their \
                 lookups search all their steps"
            )
        })
    }

    /// The app of the longest network holding `addr` (learned addresses aside).
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<u16> {
        let a = u32::from(addr);
        let b = *self.buckets.get(&(a >> 16))?;
        let app = range_lookup(b, a, |i| self.subs.get(i as usize).copied(), |i| self.steps.get(i as usize).copied());
        (app != APP_NONE).then_some(app)
    }

    /// Flags the bucket of `addr` as holding a learned address; returns the bucket's number and
    /// new value, to write into the generation's index.
    pub fn flag_learned(&mut self, addr: Ipv4Addr) -> (u32, RangeBucket) {
        let b = u32::from(addr) >> 16;
        self.learned.entry(b).or_default().insert(u32::from(addr));
        let v = self.buckets.entry(b).or_default();
        v.len |= RANGE_LEARNED;
        (b, *v)
    }

    /// Forgets the learned address `addr`; when it was its bucket's last, clears the flag and
    /// returns the bucket's number and new value, to write into the generation's index.
    pub fn unflag_learned(&mut self, addr: Ipv4Addr) -> Option<(u32, RangeBucket)> {
        let b = u32::from(addr) >> 16;
        let set = self.learned.get_mut(&b)?;
        if !set.remove(&u32::from(addr)) || !set.is_empty() {
            return None;
        }
        self.learned.remove(&b);
        let v = self.buckets.get_mut(&b)?;
        v.len &= !RANGE_LEARNED;
        let v = *v;
        if v == RangeBucket::default() {
            self.buckets.remove(&b);
        }
        Some((b, v))
    }
}

/// The sub-buckets of a bucket whose steps are `steps`, the first at index `start`: each the
/// slice of steps from the one in force at its first address to the last inside it.
fn sub_buckets(start: u32, steps: &[RangeStep]) -> impl Iterator<Item = RangeBucket> + '_ {
    (0..RANGE_SUBS).map(move |j| {
        let (first_addr, next) = (j << 8, (j + 1) << 8);
        let first = steps.partition_point(|s| u32::from(s.low) <= first_addr).saturating_sub(1);
        let end = steps.partition_point(|s| u32::from(s.low) < next);
        // Slices of one bucket: below 2^16 steps, and `end >= first`.
        RangeBucket { start: start + first as u32, len: (end - first) as u32 }
    })
}

/// The steps of `nets`: sorted, distinct start addresses (as u64, so that the end of the
/// address space fits), each with the app of the longest network holding it, up to the next
/// one; consecutive steps have different apps, and the first is not `APP_NONE`.
fn flatten(nets: &[(u32, [u8; 4], AppMatch)]) -> Result<Vec<(u64, u16)>> {
    let mut ranges = Vec::with_capacity(nets.len());
    for &(len, octets, m) in nets {
        if len > 32 {
            bail!("IPv4 network {}/{len}: prefix longer than 32 bits", Ipv4Addr::from(octets));
        }
        if m.app == APP_NONE {
            bail!("IPv4 network {}/{len}: app 0 means no app", Ipv4Addr::from(octets));
        }
        let size = 1u64 << (32 - len);
        let start = u64::from(u32::from(Ipv4Addr::from(octets))) & !(size - 1);
        ranges.push((start, len, start + size, m.app));
    }
    // Enclosing networks before the ones inside them; a repeated network in input order.
    ranges.sort_by_key(|&(start, len, _, _)| (start, len));
    let mut out: Vec<(u64, u16)> = Vec::with_capacity(2 * ranges.len());
    let mut open: Vec<(u64, u16)> = Vec::new();
    let step = |out: &mut Vec<(u64, u16)>, pos: u64, app: u16| match out.last_mut() {
        Some(last) if last.0 == pos => last.1 = app,
        _ => out.push((pos, app)),
    };
    for (start, _, end, app) in ranges {
        // Networks that ended by here: the one around them resumes where each ends.
        while let Some(&(top_end, _)) = open.last() {
            if top_end > start {
                break;
            }
            open.pop();
            step(&mut out, top_end, open.last().map_or(APP_NONE, |o| o.1));
        }
        step(&mut out, start, app);
        open.push((end, app));
    }
    while let Some((end, _)) = open.pop() {
        step(&mut out, end, open.last().map_or(APP_NONE, |o| o.1));
    }
    // Drop the end of the address space and steps that change nothing.
    let mut flat: Vec<(u64, u16)> = Vec::with_capacity(out.len());
    for (pos, app) in out {
        if pos >= 1 << 32 || flat.last().map_or(APP_NONE, |l: &(u64, u16)| l.1) == app {
            continue;
        }
        flat.push((pos, app));
    }
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, app: u16) -> (u32, [u8; 4], AppMatch) {
        let (a, l) = s.split_once('/').unwrap();
        (l.parse().unwrap(), a.parse::<Ipv4Addr>().unwrap().octets(), AppMatch { app, _pad: 0 })
    }

    /// The longest network holding `addr`, by brute force (what the LPM trie gave).
    fn longest(nets: &[(u32, [u8; 4], AppMatch)], addr: u32) -> Option<u16> {
        let mut best: Option<(u32, u16)> = None;
        for &(len, o, m) in nets {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            if addr & mask == u32::from(Ipv4Addr::from(o)) & mask && best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, m.app));
            }
        }
        best.map(|b| b.1)
    }

    fn check(nets: &[(u32, [u8; 4], AppMatch)], addrs: impl IntoIterator<Item = u32>) {
        let t = RangeTable::build(nets).unwrap();
        for a in addrs {
            assert_eq!(t.lookup(Ipv4Addr::from(a)), longest(nets, a), "address {}", Ipv4Addr::from(a));
        }
    }

    /// Each network's first and last address and their neighbours, and the bucket edges
    /// around them.
    fn edges(nets: &[(u32, [u8; 4], AppMatch)]) -> Vec<u32> {
        let mut v = vec![0, u32::MAX];
        for &(len, o, _) in nets {
            let size = 1u64 << (32 - len);
            let s = u64::from(u32::from(Ipv4Addr::from(o))) & !(size - 1);
            for x in [s, s + size - 1, s + size] {
                for y in [x.checked_sub(1), Some(x), Some(x + 1)] {
                    if let Some(y) = y.and_then(|y| u32::try_from(y).ok()) {
                        v.extend([y, y & 0xffff_0000, y | 0xffff]);
                    }
                }
            }
        }
        v
    }

    #[test]
    fn nested_adjacent_and_whole_space() {
        let nets = [
            net("10.0.0.0/8", 1),
            net("10.1.0.0/16", 2),
            net("10.1.2.0/24", 3),
            net("10.1.2.128/25", 1),
            net("10.1.2.200/32", 4),
            net("10.255.255.0/24", 5),
            net("192.0.2.0/24", 6),
            net("192.0.3.0/24", 6),
            net("255.255.255.255/32", 7),
            net("0.0.0.0/32", 8),
        ];
        check(&nets, edges(&nets));
        let t = RangeTable::build(&nets).unwrap();
        // 192.0.2.0/24 and 192.0.3.0/24 are one run of app 6; 10.0.0.0/8 covers 256 buckets.
        assert_eq!(t.buckets[&0xc000].steps(), 2);
        assert_eq!(t.buckets.range(0x0a00..0x0b00).count(), 256);
        let all = [net("0.0.0.0/0", 9), net("203.0.113.0/24", 10)];
        check(&all, edges(&all));
        assert_eq!(RangeTable::build(&all).unwrap().buckets.len(), 1 << 16);
        check(&[], [0, 1, u32::MAX]);
        assert!(RangeTable::build(&[]).unwrap().buckets.is_empty());
    }

    #[test]
    fn random_networks_match_the_longest_prefix() {
        let mut rng = imfw_tests::util::Rng::new(1);
        let mut next = move || rng.next_u64();
        for round in 0..20 {
            let n = 1 + (next() % 400) as usize;
            // Few distinct upper bits, so networks nest and share buckets.
            let nets: Vec<_> = (0..n)
                .map(|_| {
                    let len = 8 + (next() % 25) as u32;
                    let a = ((next() % 4) as u32) << 28 | (next() as u32 & 0x00ff_ffff) | ((next() % 3) as u32) << 24;
                    (len, Ipv4Addr::from(a).octets(), AppMatch { app: 1 + (next() % 5) as u16, _pad: 0 })
                })
                .collect();
            let mut addrs = edges(&nets);
            addrs.extend((0..2000).map(|_| next() as u32 & 0x3fff_ffff));
            check(&nets, addrs);
            let t = RangeTable::build(&nets).unwrap();
            assert!(t.steps.len() <= 2 * n + t.buckets.len(), "round {round}: {} steps for {n} networks", t.steps.len());
        }
    }

    #[test]
    fn dense_buckets_get_sub_indexes() {
        let mut rng = imfw_tests::util::Rng::new(2);
        let mut next = move || rng.next_u64();
        // Hundreds of networks in 10.1.0.0/16 and 10.2.0.0/16, inside wider ones; a few in 10.3.
        let mut nets = vec![net("10.0.0.0/8", 1), net("10.1.0.0/17", 2), net("10.2.128.0/20", 3)];
        for _ in 0..600 {
            let a = 0x0a01_0000 + (next() as u32 % 0x2_0000);
            nets.push((24 + (next() % 9) as u32, Ipv4Addr::from(a).octets(), AppMatch { app: 4 + (next() % 3) as u16, _pad: 0 }));
        }
        nets.extend([net("10.3.0.0/24", 7), net("10.3.1.0/24", 8)]);
        let t = RangeTable::build(&nets).unwrap();
        let (b1, b2, b3) = (t.buckets[&0x0a01], t.buckets[&0x0a02], t.buckets[&0x0a03]);
        assert_eq!((b1.sub_block(), b2.sub_block(), b3.sub_block()), (Some(0), Some(1), None));
        assert_eq!(t.subs.len(), 2 * RANGE_SUBS as usize);
        let mut addrs = edges(&nets);
        addrs.extend((0..20_000).map(|_| 0x0a00_0000 | (next() as u32 & 0x3_ffff)));
        check(&nets, addrs);
        // A sub-bucket's slice is short: the steps of its 256 addresses and the one before.
        let most = t.subs.iter().map(RangeBucket::steps).max().unwrap();
        assert!(most <= 257 && most < b1.steps().max(b2.steps()) / 4, "longest slice {most}");
    }

    #[test]
    fn sub_indexes_go_to_the_densest_buckets_while_they_last() {
        // One more dense bucket than there are blocks, the last denser than the rest.
        let blocks = RANGE_SUB_BLOCKS;
        let mut nets = Vec::new();
        for b in 0..=blocks {
            let per = if b == blocks { 20 } else { 9 };
            for i in 0..per {
                nets.push((28, Ipv4Addr::from((0x0a00_0000 + (b << 16)) | (i << 8)).octets(), AppMatch { app: 1 + (i % 2) as u16, _pad: 0 }));
            }
        }
        let t = RangeTable::build(&nets).unwrap();
        let with = t.buckets.values().filter(|b| b.sub_block().is_some()).count();
        assert_eq!(with, blocks as usize);
        assert_eq!(t.dense_without_sub_index(), 1);
        assert!(t.buckets[&(0x0a00 + blocks)].sub_block().is_some(), "the densest bucket has one");
        assert_eq!(t.subs.len(), (blocks * RANGE_SUBS) as usize);
        let addrs: Vec<u32> = [0, blocks / 2, blocks - 1, blocks].iter().flat_map(|b| {
            let base = 0x0a00_0000 + (b << 16);
            (0..24u32).flat_map(move |i| [base | (i << 8), base | (i << 8) | 15, base | (i << 8) | 16])
        }).collect();
        check(&nets, addrs);
    }

    #[test]
    fn learned_flags_keep_the_steps() {
        let mut t = RangeTable::build(&[net("198.51.100.0/24", 3)]).unwrap();
        let (b, v) = t.flag_learned(Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!((b, v.steps(), v.learned()), (0xc633, 2, true));
        assert_eq!(t.lookup(Ipv4Addr::new(198, 51, 100, 7)), Some(3));
        let (b, v) = t.flag_learned(Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!((b, v), (0xcb00, RangeBucket { start: 0, len: RANGE_LEARNED }));
        assert_eq!(t.lookup(Ipv4Addr::new(203, 0, 113, 1)), None);
        // Flags go with their bucket's last learned address, and only then.
        t.flag_learned(Ipv4Addr::new(203, 0, 113, 2));
        t.flag_learned(Ipv4Addr::new(203, 0, 113, 2));
        assert_eq!(t.unflag_learned(Ipv4Addr::new(203, 0, 113, 1)), None);
        assert_eq!(t.unflag_learned(Ipv4Addr::new(203, 0, 113, 9)), None, "never learned");
        assert_eq!(t.unflag_learned(Ipv4Addr::new(203, 0, 113, 2)), Some((0xcb00, RangeBucket::default())));
        assert!(!t.buckets.contains_key(&0xcb00), "an empty bucket is not kept");
        assert_eq!(t.unflag_learned(Ipv4Addr::new(198, 51, 100, 7)).map(|(_, v)| v.learned()), Some(false));
        assert_eq!(t.buckets[&0xc633].steps(), 2, "the steps stay");
        assert_eq!(t, RangeTable::build(&[net("198.51.100.0/24", 3)]).unwrap());
    }

    #[test]
    fn bad_networks_are_refused() {
        assert!(RangeTable::build(&[(33, [1, 2, 3, 4], AppMatch { app: 1, _pad: 0 })]).is_err());
        assert!(RangeTable::build(&[net("192.0.2.0/24", APP_NONE)]).is_err());
    }
}
