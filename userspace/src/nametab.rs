//! The name table's buckets for one policy generation (`IMFW_NAMES`, see
//! `imfw_common::matcher::NameBucket`): each domain hash goes into one of its two buckets
//! (`maps::name_buckets`), moving others to their second bucket where both are full (cuckoo
//! hashing). The table has twice the room a policy's domains need at most, where four names
//! a bucket and two buckets a name fill over 90% before a name finds no place.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use imfw_common::{
    maps::name_buckets,
    matcher::{NAME_BUCKET_SLOTS, NameBucket},
};

/// Moves tried for one name before the table counts as full.
const MAX_MOVES: usize = 1000;

/// The buckets that hold `names` (domain hash in generation `generation`, app) by index in
/// `IMFW_NAMES`; every other bucket of the generation is empty. The same input gives the same
/// buckets. A hash given twice keeps its last app, as a map insert would.
pub fn build(generation: u32, names: impl IntoIterator<Item = (u64, u16)>) -> Result<BTreeMap<u32, NameBucket>> {
    let mut t: HashMap<u32, NameBucket> = HashMap::new();
    for (hash, app) in names {
        if app == 0 {
            bail!("name table: app 0 marks a free slot, not a name's app");
        }
        insert(&mut t, generation, hash, app)?;
    }
    Ok(t.into_iter().collect())
}

/// Places one name; `Err` when it finds no place within `MAX_MOVES` moves.
fn insert(table: &mut HashMap<u32, NameBucket>, generation: u32, hash: u64, app: u16) -> Result<()> {
    let (first, second) = name_buckets(generation, hash);
    for i in [first, second] {
        if let Some(bucket) = table.get_mut(&i) {
            if let Some(slot) = (0..NAME_BUCKET_SLOTS).find(|&s| bucket.apps[s] != 0 && bucket.hashes[s] == hash) {
                bucket.apps[slot] = app;
                return Ok(());
            }
        }
    }
    let (mut hash, mut app) = (hash, app);
    // A fixed sequence (xorshift from the name's hash), so that a policy always gives the
    // same table.
    let mut rng = hash | 1;
    let mut at = if place(table, first, hash, app) || place(table, second, hash, app) {
        return Ok(());
    } else if rng & 2 == 0 {
        first
    } else {
        second
    };
    for _ in 0..MAX_MOVES {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let slot = (rng % NAME_BUCKET_SLOTS as u64) as usize;
        let bucket = table.entry(at).or_default();
        (hash, bucket.hashes[slot]) = (bucket.hashes[slot], hash);
        (app, bucket.apps[slot]) = (bucket.apps[slot], app);
        // The name moved out goes to its other bucket.
        let (one, other) = name_buckets(generation, hash);
        at = if one == at { other } else { one };
        if place(table, at, hash, app) {
            return Ok(());
        }
    }
    bail!("name table: no room for a domain after {MAX_MOVES} moves (the table holds the policy's domains twice over; this should not happen)")
}

/// Puts a name in a free slot of bucket `i`, if it has one.
fn place(t: &mut HashMap<u32, NameBucket>, i: u32, hash: u64, app: u16) -> bool {
    let k = t.entry(i).or_default();
    match (0..NAME_BUCKET_SLOTS).find(|&s| k.apps[s] == 0) {
        Some(s) => {
            k.hashes[s] = hash;
            k.apps[s] = app;
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use imfw_common::maps::{NAME_BUCKETS, NAMES_MAX};

    use super::*;

    /// The kernel's lookup (`name_app` in ebpf/src/matching.rs) on a built table.
    fn lookup(t: &BTreeMap<u32, NameBucket>, generation: u32, hash: u64) -> Option<u16> {
        let (a, b) = name_buckets(generation, hash);
        t.get(&a).and_then(|k| k.app(hash)).or_else(|| t.get(&b).and_then(|k| k.app(hash)))
    }

    fn hashes(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            })
            .collect()
    }

    /// A policy's most domains all find a place, in both generations' halves, and each is
    /// found by the kernel's lookup with its app; hashes not in the table are not found.
    #[test]
    fn the_most_domains_a_policy_may_have_are_all_found() {
        for generation in [0, 1] {
            let names = hashes(7 + u64::from(generation), NAMES_MAX as usize);
            let app = |i: usize| u16::try_from(i % 500 + 1).unwrap();
            let t = build(generation, names.iter().enumerate().map(|(i, h)| (*h, app(i)))).expect("built");
            let base = generation * NAME_BUCKETS;
            assert!(t.keys().all(|i| (base..base + NAME_BUCKETS).contains(i)), "the generation's half only");
            for (i, h) in names.iter().enumerate() {
                assert_eq!(lookup(&t, generation, *h), Some(app(i)), "name {i}");
            }
            assert!(hashes(99, 10_000).iter().all(|h| lookup(&t, generation, *h).is_none()));
            assert_eq!(lookup(&t, 1 - generation, names[0]), None, "the other generation's half");
        }
    }

    /// Names that share their buckets move to their other bucket; a hash given again takes
    /// the new app; the same input always gives the same table.
    #[test]
    fn crowded_buckets_move_names_and_repeats_update() {
        // Hashes whose first bucket is the same: more than a bucket holds.
        let target = name_buckets(0, 1).0;
        let crowded: Vec<u64> = (1u64..).filter(|h| name_buckets(0, *h).0 == target).take(3 * NAME_BUCKET_SLOTS).collect();
        let names: Vec<(u64, u16)> = crowded.iter().map(|h| (*h, 7)).collect();
        let t = build(0, names.iter().copied().chain([(crowded[0], 9)])).expect("built");
        assert_eq!(lookup(&t, 0, crowded[0]), Some(9), "the last app given");
        for h in &crowded[1..] {
            assert_eq!(lookup(&t, 0, *h), Some(7));
        }
        assert_eq!(t, build(0, names.iter().copied().chain([(crowded[0], 9)])).expect("built"));
        assert!(build(0, [(5, 0)]).is_err(), "app 0 is a free slot");
    }
}
