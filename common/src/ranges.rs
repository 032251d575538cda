//! The IPv4 range table: which app's network holds a server address, found with array reads
//! whose number does not grow with the number of networks.
//!
//! The policy's IPv4 app networks are flattened into steps: sorted start addresses, each with
//! the app of the longest network holding it (the one a longest-prefix match would give), up to
//! the next step. The steps are cut into [`RANGE_BUCKETS`] buckets by the address's upper
//! 16 bits; a bucket's steps keep the lower 16 bits. A lookup reads the address's bucket, then
//! searches its steps: at most [`RANGE_SEARCH_STEPS`] reads, however many networks there are
//! (an LPM trie walks one node per distinguishing bit, and 100,000 networks make it deep).
//!
//! A bucket with many steps may have a sub-index: 256 sub-buckets, one per value of the
//! address's third byte, each the slice of the bucket's steps that covers its 256 addresses
//! (from the step in force at its start). Dense buckets, where 100,000 networks of a /8 put
//! hundreds of steps, are then searched in a few steps too.
//!
//! Addresses learned from DNS come and go while the policy is in force; they stay in the
//! `IMFW_ADDR4` trie, and the buckets that hold one are flagged so that only their addresses
//! look there.

use crate::{app::APP_NONE, maps::ADDR_MAX};

/// Buckets of one generation: one per value of an address's upper 16 bits.
pub const RANGE_BUCKETS: u32 = 1 << 16;

/// Steps one generation may hold. A network adds at most two (its start, and where the
/// enclosing value resumes after it), and a bucket that a network covers from its start adds one
/// more: `ADDR_MAX` networks always fit.
pub const RANGE_STEPS: u32 = 2 * ADDR_MAX + RANGE_BUCKETS;

/// Reads a search may make: a bucket spans 65,536 addresses, so it has at most 65,536 steps,
/// and each read halves what is left.
pub const RANGE_SEARCH_STEPS: u32 = 17;

/// Bit of [`RangeBucket::len`] set when the bucket holds an address learned from DNS.
pub const RANGE_LEARNED: u32 = 1 << 31;

/// Bit of [`RangeBucket::len`] set when the bucket has a sub-index: `start` is then its block
/// in `IMFW_RANGESUB4`, whose sub-buckets point at the steps.
pub const RANGE_SUBINDEXED: u32 = 1 << 30;

/// Sub-indexed buckets one generation may have (the densest buckets get them): 256
/// sub-buckets of 8 bytes each, 2 MiB a generation.
pub const RANGE_SUB_BLOCKS: u32 = 1024;

/// Sub-buckets of a block: one per value of the address's third byte.
pub const RANGE_SUBS: u32 = 256;

/// One bucket of `IMFW_RANGEIDX4` (or sub-bucket of `IMFW_RANGESUB4`): where its steps are in
/// `IMFW_RANGES4` (relative to the generation's half) and how many there are. No steps: no
/// network holds any of its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RangeBucket {
    pub start: u32,
    /// The number of steps, with [`RANGE_LEARNED`] above it.
    pub len: u32,
}

impl RangeBucket {
    #[inline(always)]
    pub const fn steps(&self) -> u32 {
        self.len & !(RANGE_LEARNED | RANGE_SUBINDEXED)
    }

    /// The bucket's block in `IMFW_RANGESUB4`, if it has a sub-index.
    #[inline(always)]
    pub const fn sub_block(&self) -> Option<u32> {
        if self.len & RANGE_SUBINDEXED != 0 { Some(self.start) } else { None }
    }

    /// Whether an address learned from DNS may be in this bucket (its trie is looked at first).
    #[inline(always)]
    pub const fn learned(&self) -> bool {
        self.len & RANGE_LEARNED != 0
    }
}

/// One step of `IMFW_RANGES4`: from address `low` (the lower 16 bits; the bucket gives the upper
/// ones) to the next step, or to the bucket's end, the addresses belong to `app` (`APP_NONE`:
/// to no app).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RangeStep {
    pub low: u16,
    pub app: u16,
}

const _: () = assert!(core::mem::size_of::<RangeBucket>() == 8 && core::mem::size_of::<RangeStep>() == 4);

// Each index below is a position relative to the generation's half (what the controller's
// `RangeTable` numbers), turned into the map's index.

/// Index in `IMFW_RANGEIDX4` of bucket `bucket` (an address's upper 16 bits) of generation
/// `generation`.
#[inline(always)]
pub const fn range_bucket_index(generation: u32, bucket: u32) -> u32 {
    (generation & 1) * RANGE_BUCKETS + (bucket & (RANGE_BUCKETS - 1))
}

/// Index in `IMFW_RANGESUB4` of sub-bucket `i` of generation `generation`.
#[inline(always)]
pub const fn range_sub_index(generation: u32, i: u32) -> u32 {
    (generation & 1) * RANGE_SUB_BLOCKS * RANGE_SUBS + i
}

/// Index in `IMFW_RANGES4` of step `i` of generation `generation`.
#[inline(always)]
pub const fn range_step_index(generation: u32, i: u32) -> u32 {
    (generation & 1) * RANGE_STEPS + i
}

/// The app of address `addr` (host order) whose bucket is `bucket`: through the bucket's
/// sub-index if it has one (`sub` reads sub-buckets), then [`range_search`] of the steps
/// (`step` reads them); `APP_NONE` for none. Learned addresses are the caller's to look at
/// first. The kernel and the controller both look addresses up here, so they cannot disagree.
#[inline(always)]
pub fn range_lookup(
    bucket: RangeBucket,
    addr: u32,
    sub: impl Fn(u32) -> Option<RangeBucket>,
    step: impl Fn(u32) -> Option<RangeStep>,
) -> u16 {
    let range = match bucket.sub_block() {
        Some(block) => match sub(block.wrapping_mul(RANGE_SUBS).wrapping_add((addr >> 8) & 0xff)) {
            Some(r) => r,
            None => return APP_NONE,
        },
        None => bucket,
    };
    range_search(range, addr as u16, step)
}

/// The app of the address whose lower 16 bits are `low`, in `bucket` (or sub-bucket), whose
/// steps `step` reads (by index relative to the generation's half): the app of the last step at
/// or below `low`, or `APP_NONE`. A step `step` cannot read ends the search with what was found
/// so far.
#[inline(always)]
pub fn range_search(bucket: RangeBucket, low: u16, step: impl Fn(u32) -> Option<RangeStep>) -> u16 {
    let mut base = bucket.start;
    let mut n = bucket.steps();
    let mut app = APP_NONE;
    let mut i = 0;
    while i < RANGE_SEARCH_STEPS && n != 0 {
        let half = n / 2;
        let Some(s) = step(base.wrapping_add(half)) else { break };
        if s.low <= low {
            app = s.app;
            base = base.wrapping_add(half + 1);
            n -= half + 1;
        } else {
            n = half;
        }
        i += 1;
    }
    app
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(steps: &[RangeStep], low: u16) -> u16 {
        let b = RangeBucket { start: 0, len: steps.len() as u32 };
        range_search(b, low, |i| steps.get(i as usize).copied())
    }

    #[test]
    fn finds_the_last_step_at_or_below() {
        let steps = [RangeStep { low: 0x10, app: 3 }, RangeStep { low: 0x20, app: APP_NONE }, RangeStep { low: 0x30, app: 5 }];
        for (low, app) in [(0, APP_NONE), (0xf, APP_NONE), (0x10, 3), (0x1f, 3), (0x20, APP_NONE), (0x2f, APP_NONE), (0x30, 5), (0xffff, 5)] {
            assert_eq!(search(&steps, low), app, "address low bits {low:#x}");
        }
        assert_eq!(search(&[], 7), APP_NONE);
    }

    #[test]
    fn a_full_bucket_is_searched_within_the_bound() {
        // 65,536 steps, one per address, each its own app: every address must come out right
        // within RANGE_SEARCH_STEPS reads.
        let steps: [RangeStep; 65536] = core::array::from_fn(|i| RangeStep { low: i as u16, app: (i % 1000) as u16 + 1 });
        for low in (0..=u16::MAX).step_by(97).chain([0, 1, u16::MAX - 1, u16::MAX]) {
            assert_eq!(search(&steps, low), (low % 1000) + 1, "address low bits {low:#x}");
        }
    }

    #[test]
    fn the_learned_flag_is_not_a_step() {
        let b = RangeBucket { start: 4, len: 2 | RANGE_LEARNED };
        assert!(b.learned());
        assert_eq!(b.steps(), 2);
        let mut steps = [RangeStep::default(); 6];
        steps[4] = RangeStep { low: 0, app: 9 };
        steps[5] = RangeStep { low: 100, app: APP_NONE };
        let app = |low| range_search(b, low, |i| steps.get(i as usize).copied());
        assert_eq!((app(0), app(99), app(100)), (9, 9, APP_NONE));
    }
}
