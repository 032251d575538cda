//! Matchers shared by the XDP program and userspace.
//!
//! The kernel copies the first bytes of a payload into a per-CPU scratch buffer and runs these
//! functions on it (the TLS parsers, the shape prefilter and the name hash read the packet in
//! place, through [`Bytes`]); userspace compiles the policy with the same hashing and runs
//! the same parsers in unit tests. Every index is masked with `SCRATCH_MASK` so the verifier
//! sees a bounded access and the compiler drops the bounds checks: logical limits are
//! enforced separately against the payload length.

/// Bytes of a payload the kernel copies for inspection. A power of two.
pub const SCRATCH_LEN: usize = 2048;
pub const SCRATCH_MASK: usize = SCRATCH_LEN - 1;

/// Longest byte signature, and the width of its mask.
pub const SIG_LEN: usize = 16;
/// Signature shapes (offset and mask) evaluated per inspected payload: one hash lookup each.
pub const MAX_SIG_CLASSES: u32 = 32;
/// Highest offset a signature may start at.
pub const SIG_OFFSET_MAX: u16 = 256;

/// Longest DNS name (RFC 1035 §2.3.4 allows 253 characters in text form).
pub const NAME_MAX: usize = 255;
/// Parent domains looked up per name, from the right (`com`, `whatsapp.com`, ...); the full
/// name is looked up as well.
pub const NAME_LOOKUPS_MAX: usize = 16;
/// Slots for suffix hashes: `NAME_LOOKUPS_MAX` kept, the rest a landing slot (see `match_name`).
pub const NAME_SLOTS: usize = 32;

/// A signature shape: where it starts and which bits count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SigClass {
    pub offset: u16,
    /// Significant bytes (the mask is zero past them).
    pub len: u16,
    /// The key byte the prefilter reads: the first one the mask keeps, or [`PROBE_NONE`].
    pub probe: u8,
    pub _pad: [u8; 3],
    pub mask: [u8; SIG_LEN],
    /// The values of that key byte that a signature of this class has: bit `v % 64` of word
    /// `v / 64`. A payload whose byte is not among them skips the class's hash lookup, which
    /// is most of what a first payload costs with tens of shapes.
    pub probe_values: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<SigClass>() == 56);

/// [`SigClass::probe`] of a shape whose mask keeps no byte (size-only signatures).
pub const PROBE_NONE: u8 = 0xff;

impl SigClass {
    /// A shape with its probe on the first byte the mask keeps, and no value admitted yet.
    pub fn new(offset: u16, len: u16, mask: [u8; SIG_LEN]) -> SigClass {
        let probe = mask.iter().position(|b| *b != 0).map_or(PROBE_NONE, |p| p as u8);
        SigClass { offset, len, probe, _pad: [0; 3], mask, probe_values: [0; 4] }
    }

    /// Admits the masked key bytes of one signature of this class.
    pub fn admit(&mut self, key: &[u8; SIG_LEN]) {
        if let Some(&b) = key.get(self.probe as usize) {
            if let Some(w) = self.probe_values.get_mut(usize::from(b >> 6)) {
                *w |= 1 << (b & 63);
            }
        }
    }
}

/// Payload bytes the shape prefilter reads, at positions chosen per policy.
pub const PRE_BYTES: usize = 8;

/// Which signature shapes a payload leaves possible, before any shape's own check: bit `c` of
/// `admit[k][b]` is set when shape `c` can match a payload whose byte at `pos[k]` is `b` (a
/// shape that does not look at that byte admits every value), bit `c` of `admit_len[l % 256]`
/// when a signature of shape `c` accepts a payload of length `l`, and bit `c` of
/// `admit_port[p % 256]` when one accepts server port `p`. The kernel ANDs the ten words a
/// payload selects and runs only the shapes left: a TLS record rules out every text protocol's
/// shape, and a ClientHello every binary shape whose bytes lie in its header or random, in
/// about fifty instructions, where each shape's own check costs tens and a hash lookup.
///
/// The positions are those that cover the most shapes (see [`SigPrefilter::build`]), so that
/// each shape is ruled out by a byte it looks at whenever the policy's shapes allow.
///
/// Bytes past a short payload are stale scratch bytes (0 or the frame's padding where the
/// kernel reads the packet in place); only a shape that looks at such a byte can be ruled out
/// by it, and that shape needs more bytes than the payload has, which its length check rules
/// out anyway.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigPrefilter {
    /// Payload offsets, each below `SIG_OFFSET_MAX + SIG_LEN`.
    pub pos: [u16; PRE_BYTES],
    pub admit: [[u32; 256]; PRE_BYTES],
    pub admit_len: [u32; 256],
    pub admit_port: [u32; 256],
    /// The shapes a payload that opens with a ClientHello's head (see [`is_client_hello_head`])
    /// can match by the bytes that head fixes among `pos` ([`HELLO_FIXED`]):
    /// [`SigPrefilter::candidates_hello`] starts from these instead of reading those bytes.
    pub hello_admit: u32,
    /// How many of `pos`, from the first, are bytes a ClientHello's head leaves open and that
    /// lie in its first [`HELLO_WINDOW`] bytes: `build` puts them first, and
    /// [`SigPrefilter::candidates_hello`] reads only these.
    pub hello_probes: u32,
}

const _: () = assert!(core::mem::size_of::<SigPrefilter>() == 2 * PRE_BYTES + 4 * 256 * (PRE_BYTES + 2) + 8);

/// The payload bytes (offset, value) that every payload [`is_client_hello_head`] accepts has.
pub const HELLO_FIXED: [(usize, u8); 3] = [(0, 0x16), (1, 3), (5, 1)];

/// The ClientHello path of the prefilter reads its bytes among a ClientHello's first
/// `HELLO_WINDOW` (a power of two, at most `CLIENT_HELLO_MIN`): every ClientHello has them,
/// so the kernel checks the packet holds them once, not once per byte read.
pub const HELLO_WINDOW: usize = 32;

const _: () = assert!(HELLO_WINDOW.is_power_of_two() && HELLO_WINDOW <= CLIENT_HELLO_MIN);

/// The value [`HELLO_FIXED`] gives payload offset `p`, if any.
fn hello_fixed(p: usize) -> Option<u8> {
    HELLO_FIXED.iter().find(|&&(q, _)| q == p).map(|&(_, v)| v)
}

impl Default for SigPrefilter {
    fn default() -> Self {
        SigPrefilter {
            pos: [0; PRE_BYTES],
            admit: [[u32::MAX; 256]; PRE_BYTES],
            admit_len: [u32::MAX; 256],
            admit_port: [u32::MAX; 256],
            hello_admit: u32::MAX,
            hello_probes: PRE_BYTES as u32,
        }
    }
}

/// Sets bit `bit` in the words of `row` for every value in `lo..=hi` modulo 256, or in all of
/// them when the range is unbounded (`hi` 0) or spans 256 values.
fn admit_range(row: &mut [u32; 256], lo: u16, hi: u16, bit: u32) {
    let (lo, hi) = (usize::from(lo), usize::from(hi));
    if hi == 0 || hi < lo || hi - lo >= 255 {
        for w in row.iter_mut() {
            *w |= bit;
        }
    } else {
        for v in lo..=hi {
            row[v & 0xff] |= bit;
        }
    }
}

/// Offsets a shape can look at: every offset up to `SIG_OFFSET_MAX`, and its window.
const PRE_OFFSETS: usize = SIG_OFFSET_MAX as usize + SIG_LEN;

/// The payload offset byte `j` of a shape's window stands at, when its mask keeps any bit of it.
fn looks_at(c: &SigClass, j: usize) -> Option<(usize, u8)> {
    let m = *c.mask.get(j)?;
    (m != 0).then_some((c.offset as usize + j, m))
}

impl SigPrefilter {
    /// The prefilter of `classes`, with the signatures of each (any direction).
    ///
    /// Positions are chosen greedily: each next one is the byte the most shapes not yet
    /// covered look at (the lowest offset on a tie), until every shape that looks at a byte is
    /// covered; positions left over go to the bytes the most shapes look at. Size-only shapes
    /// look at no byte: their signatures' lengths rule them out.
    pub fn build<'a>(classes: &[SigClass], sigs: impl IntoIterator<Item = (&'a SigKey, &'a SigValue)>) -> SigPrefilter {
        let n = classes.len().min(MAX_SIG_CLASSES as usize);
        let classes = &classes[..n];
        // Offset -> the shapes that look at it.
        let mut lookers = [0u32; PRE_OFFSETS];
        for (ci, c) in classes.iter().enumerate() {
            for j in 0..SIG_LEN {
                if let Some(w) = looks_at(c, j).and_then(|(p, _)| lookers.get_mut(p)) {
                    *w |= 1 << ci;
                }
            }
        }
        let (mut pos, mut chosen) = ([0usize; PRE_BYTES], 0);
        let mut covered = 0u32;
        while chosen < PRE_BYTES {
            // Most shapes not yet covered first, then most shapes; the lowest offset on a tie.
            let best = lookers
                .iter()
                .enumerate()
                .filter(|&(p, &s)| s != 0 && !pos[..chosen].contains(&p))
                .max_by_key(|&(p, &s)| ((s & !covered).count_ones(), s.count_ones(), core::cmp::Reverse(p)));
            let Some((p, &s)) = best else { break };
            pos[chosen] = p;
            chosen += 1;
            covered |= s;
        }
        // The bytes the ClientHello path reads go first (see `hello_probes`): those its head
        // leaves open within its window. The order within each part stays.
        let mut ordered = [0usize; PRE_BYTES];
        let near = |p: usize| hello_fixed(p).is_none() && p < HELLO_WINDOW;
        let first = pos[..chosen].iter().filter(|&&p| near(p));
        let rest = pos[..chosen].iter().filter(|&&p| !near(p));
        for (slot, &p) in ordered.iter_mut().zip(first.chain(rest)) {
            *slot = p;
        }
        let pos = &ordered[..chosen];
        let mut pre = SigPrefilter::default();
        let all: u32 = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        for (k, &p) in pos.iter().enumerate() {
            pre.pos[k] = p as u16;
            let looked = lookers[p];
            pre.admit[k] = [all & !looked; 256];
        }
        // Unused positions keep their all-ones rows; the length and port rows start empty and
        // admit what each signature accepts.
        pre.admit_len = [0; 256];
        pre.admit_port = [0; 256];
        for (key, v) in sigs {
            let ci = key.class as usize;
            let Some(c) = classes.get(ci) else { continue };
            for (k, &p) in pos.iter().enumerate() {
                let Some(j) = p.checked_sub(c.offset as usize) else { continue };
                let Some((_, m)) = looks_at(c, j) else { continue };
                let want = key.bytes[j] & m;
                for (b, w) in pre.admit[k].iter_mut().enumerate() {
                    if (b as u8) & m == want {
                        *w |= 1u32 << ci;
                    }
                }
            }
            admit_range(&mut pre.admit_len, v.min_len, v.max_len, 1u32 << ci);
            admit_range(&mut pre.admit_port, v.port_lo, v.port_hi, 1u32 << ci);
        }
        pre.hello_probes = pos.iter().filter(|&&p| near(p)).count() as u32;
        for (k, &p) in pos.iter().enumerate() {
            if let Some(v) = hello_fixed(p) {
                pre.hello_admit &= pre.admit[k][usize::from(v)];
            }
        }
        pre
    }

    /// The shapes a payload of `len` bytes, read from `buf`, to server port `port`, can match.
    #[inline(always)]
    pub fn candidates<B: Bytes>(&self, buf: &B, len: usize, port: u16) -> u32 {
        let mut c = self.admit_len[len & 0xff] & self.admit_port[usize::from(port & 0xff)];
        let mut k = 0;
        while k < PRE_BYTES {
            c &= self.admit[k][at(buf, self.pos[k] as usize) as usize];
            k += 1;
        }
        c
    }

    /// [`SigPrefilter::candidates`] for a payload that opens with a ClientHello's head (see
    /// [`is_client_hello_head`]), from fewer bytes read: the head fixes some of them
    /// (`hello_admit`), and only those among the first [`HELLO_WINDOW`] are read. The same
    /// shapes when the policy's positions lie there (the catalogue's do); else maybe more,
    /// never fewer (the shapes a byte further on would rule out), and the stages then run them.
    #[inline(always)]
    pub fn candidates_hello<B: Bytes>(&self, buf: &B, len: usize, port: u16) -> u32 {
        self.candidates_hello_with(len, port, |p| at(buf, p))
    }

    /// [`SigPrefilter::candidates_hello`] with the payload's bytes read by `byte`, which is
    /// only asked for offsets below [`HELLO_WINDOW`].
    #[inline(always)]
    pub fn candidates_hello_with(&self, len: usize, port: u16, byte: impl Fn(usize) -> u8) -> u32 {
        let mut c = self.admit_len[len & 0xff] & self.admit_port[usize::from(port & 0xff)] & self.hello_admit;
        let mut k = 0;
        while k < PRE_BYTES {
            if k as u32 >= self.hello_probes {
                break;
            }
            c &= self.admit[k][byte(self.pos[k] as usize & (HELLO_WINDOW - 1)) as usize];
            k += 1;
        }
        c
    }
}

/// Key of `IMFW_SIGS`: the masked bytes of one class in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SigKey {
    pub class: u16,
    /// `DIR_CLIENT` or `DIR_SERVER`.
    pub dir: u8,
    /// The policy generation (see `config`); 0 in a compiled policy.
    pub generation: u8,
    pub bytes: [u8; SIG_LEN],
}

const _: () = assert!(core::mem::size_of::<SigKey>() == 20);

/// The client's payload must be the first payload of the flow (the server has not spoken).
/// Tells IRC's `USER` from FTP's and POP3's, whose servers greet first.
pub const SIG_CLIENT_FIRST: u16 = 1;
/// The length check accepts a payload longer than the length field says (several messages).
pub const SIG_LEN_ATLEAST: u16 = 2;
/// The payload's last byte must be `last_byte` (the payload must fit the scratch buffer).
pub const SIG_LAST_BYTE: u16 = 4;
/// `last` argument of [`sig_checks`] for a payload whose last byte is not in the buffer.
pub const LAST_UNKNOWN: u16 = 0x100;

pub const LEN_NONE: u8 = 0;
pub const LEN_U8: u8 = 1;
pub const LEN_U16BE: u8 = 2;
pub const LEN_U16LE: u8 = 3;
pub const LEN_U32BE: u8 = 4;
pub const LEN_U32LE: u8 = 5;

/// Value of `IMFW_SIGS`: the app, and a structural check run after the byte match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SigValue {
    pub app: u16,
    /// `SIG_*` flags.
    pub flags: u16,
    /// The payload must be at least this long.
    pub min_len: u16,
    /// Offset of a length field (`len_kind` != `LEN_NONE`).
    pub len_off: u16,
    /// `LEN_*`: width and byte order of the length field.
    pub len_kind: u8,
    /// The payload length must equal `field * len_mul + len_add` (`len_mul` 0 means 1).
    pub len_mul: u8,
    pub len_add: i16,
    /// The payload must be at most this long (0: no bound). With `min_len`, an exact size.
    pub max_len: u16,
    /// The server's port must lie in `[port_lo, port_hi]` (both 0: any port). For structures
    /// too short to stand alone that a protocol uses on its registered ports only.
    pub port_lo: u16,
    pub port_hi: u16,
    /// With `SIG_LAST_BYTE`: the payload's last byte (a trailer such as OICQ's ETX).
    pub last_byte: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<SigValue>() == 20);

/// A domain as the name table (`IMFW_NAMES`) stores it: its hash (see [`domain_hash_from`]),
/// started from the seed of the policy generation (see `config` and [`name_seed`]): the two
/// generations' keys differ with no cost per lookup, which the verifier's budget for the name
/// loops cannot spare.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NameKey {
    pub hash: u64,
}

/// Names in one bucket of the name table.
pub const NAME_BUCKET_SLOTS: usize = 4;

/// A bucket of the name table (`IMFW_NAMES`, see `maps::name_buckets`): up to
/// `NAME_BUCKET_SLOTS` domain hashes and their apps, on one cache line. A free slot has app 0
/// (`APP_NONE`), which no lookup returns.
///
/// An array of buckets rather than a hash map: the program reads a bucket with an array
/// lookup, which the verifier turns into a bounds check and an address, where a hash-map
/// lookup is a helper call that hashes the key again and walks a bucket list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NameBucket {
    pub hashes: [u64; NAME_BUCKET_SLOTS],
    pub apps: [u16; NAME_BUCKET_SLOTS],
    /// To the cache line (the array's values start on a page).
    pub _pad: [u64; 3],
}

const _: () = assert!(core::mem::size_of::<NameBucket>() == 64);

impl NameBucket {
    /// The app of domain hash `hash` if this bucket holds it.
    #[inline(always)]
    pub fn app(&self, hash: u64) -> Option<u16> {
        let mut i = 0;
        while i < NAME_BUCKET_SLOTS {
            if self.hashes[i] == hash && self.apps[i] != 0 {
                return Some(self.apps[i]);
            }
            i += 1;
        }
        None
    }
}

/// Start value of the name hashes of generation 1 (generation 0 starts from
/// [`NAME_HASH_INIT`]): any other 64-bit value would do.
pub const NAME_HASH_INIT_GEN1: u64 = 0x9e37_79b9_7f4a_7c15;

/// The start value of name hashes in generation `generation`. Branchless: a branch would
/// send two states (two known seeds) through the verifier's walk of the hash loop.
#[inline(always)]
pub const fn name_seed(generation: u32) -> u64 {
    NAME_HASH_INIT ^ ((generation & 1) as u64).wrapping_neg() & (NAME_HASH_INIT ^ NAME_HASH_INIT_GEN1)
}

/// Value of the address tries (and a name's app in a compiled policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AppMatch {
    pub app: u16,
    pub _pad: u16,
}

/// Value of the source-network tries: the class whose policy row applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SrcClass {
    pub class: u32,
}

/// Value of `IMFW_POLICY[class * MAX_APPS + app]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyAction {
    /// A `Verdict` number.
    pub verdict: u8,
    pub redirect_slot: u8,
    pub _pad: u16,
}

/// Start value of a name hash (any 64-bit value would do).
pub const NAME_HASH_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// The odd multiplier of [`name_hash_word`].
const NAME_HASH_MUL: u64 = 0xbf58_476d_1ce4_e5b9;

/// Sets bit 0x20 of each byte of a word: lowercases ASCII letters and leaves digits, `-` and
/// `.` alone, without a branch. Every name byte is then at least 0x20, so the zero bytes that
/// pad a name's first word (see [`domain_hash_from`]) are told apart from any name byte.
const LOWER: u64 = 0x2020_2020_2020_2020;
const DOTS: u64 = 0x2e2e_2e2e_2e2e_2e2e;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// One step of the name hash, over eight bytes of a name: a multiply by an odd number and an
/// xor-shift, each a bijection, so that two different words never lead from one state to the
/// same state.
#[inline(always)]
pub const fn name_hash_word(h: u64, w: u64) -> u64 {
    let x = (h ^ w).wrapping_mul(NAME_HASH_MUL);
    x ^ (x >> 29)
}

/// Hash of a domain as userspace stores it in the name table `IMFW_NAMES` (a trailing dot is
/// ignored), in generation 0.
pub fn domain_hash(domain: &str) -> u64 {
    domain_hash_from(NAME_HASH_INIT, domain)
}

/// As [`domain_hash`], from start value `seed` (see [`name_seed`]).
///
/// The name, lowercased, is read in little-endian words of eight bytes from its end: word `j`
/// holds bytes `n - 8(j + 1) .. n - 8j` of an `n`-byte name, and the last word, `n / 8`, holds
/// the name's first `n % 8` bytes in its top bytes and zeros below them (no bytes at all when
/// `n` is a multiple of 8). Each word is one step of [`name_hash_word`].
///
/// Since the words are aligned on the name's end, a parent domain's words are the name's own
/// first words, up to the one holding the dot before it: the kernel hashes a name and every
/// parent domain in one pass over its words ([`suffix_hashes_from`]), a step per word and one
/// per dot, where a step per byte cost about eight times as many instructions.
pub fn domain_hash_from(seed: u64, domain: &str) -> u64 {
    let d = domain.strip_suffix('.').unwrap_or(domain).as_bytes();
    let n = d.len();
    let mut h = seed;
    for j in 0..=n / 8 {
        let mut w = 0u64;
        for k in 0..8 {
            // Byte k of word j is name byte n - 8(j + 1) + k, when there is one.
            if let Some(i) = (n + k).checked_sub(8 * (j + 1)) {
                w |= u64::from(d[i] | 0x20) << (8 * k);
            }
        }
        h = name_hash_word(h, w);
    }
    h
}

/// Bytes a parser reads by index: the scratch buffer, or (in the kernel) a packet's payload
/// read where it lies, so that a parser that needs a few of its bytes costs no copy of them all.
pub trait Bytes {
    /// Byte `i & SCRATCH_MASK`; 0 where the source holds none (past a packet's end).
    fn at(&self, i: usize) -> u8;

    /// Bytes `i .. i + 8` as a little-endian word (`i` below `SCRATCH_LEN`); 0 where the
    /// source does not hold them all.
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        let mut w = 0u64;
        let mut k = 0;
        while k < 8 {
            w |= (self.at(i + k) as u64) << (8 * k);
            k += 1;
        }
        w
    }

    /// Bytes `i .. i + 2` as a big-endian number (`i` below `SCRATCH_LEN`); 0 where the
    /// source does not hold them both.
    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        ((self.at(i) as u16) << 8) | self.at(i + 1) as u16
    }

    /// Bytes `i .. i + 4` as a big-endian number (`i` below `SCRATCH_LEN`); 0 where the
    /// source does not hold them all. A TLS extension's header (type, length) in one read.
    #[inline(always)]
    fn be32(&self, i: usize) -> u32 {
        ((self.at(i) as u32) << 24) | ((self.at(i + 1) as u32) << 16) | ((self.at(i + 2) as u32) << 8) | self.at(i + 3) as u32
    }

    /// `v`, through memory the kernel's verifier does not track where the source has some
    /// (see [`suffix_hashes_from`]); `v` itself elsewhere.
    #[inline(always)]
    fn opaque(&self, v: u64) -> u64 {
        v
    }
}

impl Bytes for [u8; SCRATCH_LEN] {
    #[inline(always)]
    fn at(&self, i: usize) -> u8 {
        self[i & SCRATCH_MASK]
    }
}

#[inline(always)]
fn at<B: Bytes>(buf: &B, i: usize) -> u8 {
    buf.at(i)
}

#[inline(always)]
fn be16<B: Bytes>(buf: &B, i: usize) -> usize {
    buf.be16(i) as usize
}

/// The top bit of each zero byte of `x`, exactly (no carry reaches a byte above).
#[inline(always)]
const fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// How many bits of `m` are set, for an `m` with bits at byte tops only (see [`zero_bytes`]).
#[inline(always)]
const fn byte_tops(m: u64) -> u64 {
    ((m >> 7).wrapping_mul(0x0101_0101_0101_0101)) >> 56
}

/// All ones when `x` is 0, else 0; without a branch, which the verifier would explore.
#[inline(always)]
const fn all_if_zero(x: u64) -> u64 {
    ((x | x.wrapping_neg()) >> 63).wrapping_sub(1)
}

/// Looks up `name` (bytes `off..off + len` of `buf`) and each of its parent domains with
/// `lookup`, and returns the app of the longest one that matches (0 for none). The number of
/// lookups is bounded by the number of labels, never by the number of domains in the set.
#[inline(always)]
pub fn match_name<B: Bytes, F: FnMut(u64) -> Option<u16>>(
    buf: &B,
    off: usize,
    len: usize,
    slots: &mut [u64; NAME_SLOTS],
    lookup: F,
) -> u16 {
    let (h, count) = suffix_hashes(buf, off, len, slots);
    lookup_suffixes(slots, count, h, lookup)
}

/// First half of [`match_name`]: the full name's hash, with the hashes of up to
/// `NAME_LOOKUPS_MAX` parent domains (shortest first) in `slots[..count]`.
///
/// One pass over the name's words from its end (see [`domain_hash_from`]): before word `j` is
/// folded into the running hash, each dot in it gives the hash of the parent domain after it
/// (the running hash, one step with the word's bytes after the dot), and in the last word the
/// byte before the name gives the whole name's hash the same way. Written for the verifier:
/// the slot indices come from the data, not from a branch, and the dot loop's mask and the
/// count of parents pass through [`Bytes::opaque`], so that the states of its iterations
/// merge.
#[inline(always)]
pub fn suffix_hashes<B: Bytes>(buf: &B, off: usize, len: usize, slots: &mut [u64; NAME_SLOTS]) -> (u64, usize) {
    suffix_hashes_from(NAME_HASH_INIT, buf, off, len, slots)
}

/// As [`suffix_hashes`], from start value `seed` (see [`name_seed`]).
#[inline(always)]
pub fn suffix_hashes_from<B: Bytes>(seed: u64, buf: &B, off: usize, len: usize, slots: &mut [u64; NAME_SLOTS]) -> (u64, usize) {
    if len == 0 || len > NAME_MAX {
        return (seed, 0);
    }
    let end = off + len;
    // The last word, and the bytes of it that are the name's: those above the byte before it.
    let last = len >> 3;
    let first = ((!0u64) << (8 * (7 - (len & 7)))) << 8;
    let mut h = seed;
    let mut count = 0u64;
    let mut j = 0usize;
    while j < NAME_WORDS {
        // Word j starts before the source when the name starts less than 8 bytes into it: read
        // from 0 and shift the bytes into place (the bytes below come out 0 and are masked).
        let start = end.wrapping_sub(8 * (j + 1));
        let before = ((start as isize) >> 63) as usize;
        let from = start & !before;
        let shift = (from.wrapping_sub(start) & 7) * 8;
        let w = (buf.word(from) << shift) | LOWER;
        let name_bytes = first | !all_if_zero((j ^ last) as u64);
        // Dots among the name's bytes, none past the NAME_LOOKUPS_MAX shortest parents.
        let mut m = zero_bytes(w ^ DOTS) & name_bytes & !all_if_zero(count.wrapping_sub(NAME_LOOKUPS_MAX as u64) >> 63);
        let dots = byte_tops(m);
        // Slots are filled shortest parent first: the lowest dot of a word (found first) is
        // the longest parent among the word's, so its slot is the word's last.
        let mut ord = count + dots;
        let mut k = 0;
        while k < 8 {
            m = buf.opaque(m);
            if m == 0 {
                break;
            }
            let dot = m & m.wrapping_neg();
            // The bytes after the dot.
            let after = !((dot << 1).wrapping_sub(1));
            ord = ord.wrapping_sub(1);
            slots[ord as usize & (NAME_SLOTS - 1)] = name_hash_word(h, w & after);
            m ^= dot;
            k += 1;
        }
        // Below 16 + 8 whatever the name: the mask changes nothing but tells the verifier so.
        count = buf.opaque(count + dots) & (NAME_SLOTS as u64 - 1);
        if j == last {
            let n = if count > NAME_LOOKUPS_MAX as u64 { NAME_LOOKUPS_MAX } else { count as usize };
            return (name_hash_word(h, w & first), n);
        }
        h = name_hash_word(h, w);
        j += 1;
    }
    // Not reached: a name of at most NAME_MAX bytes ends at word NAME_WORDS - 1 at the latest.
    (h, 0)
}

/// Words of the longest name (see [`domain_hash_from`]).
const NAME_WORDS: usize = NAME_MAX / 8 + 1;

/// Second half of [`match_name`]: the longest match wins, so the whole name is looked up
/// first, then its parents from the longest (`slots` holds them shortest first), and the first
/// match ends the search. At most `NAME_LOOKUPS_MAX + 1` lookups; a name of the policy's apps
/// usually takes one or two.
#[inline(always)]
pub fn lookup_suffixes<F: FnMut(u64) -> Option<u16>>(slots: &[u64; NAME_SLOTS], count: usize, h: u64, mut lookup: F) -> u16 {
    if let Some(app) = lookup(h) {
        return app;
    }
    let mut k = 0usize;
    while k < NAME_LOOKUPS_MAX {
        if k >= count {
            break;
        }
        if let Some(app) = lookup(slots[count.wrapping_sub(1 + k) & (NAME_SLOTS - 1)]) {
            return app;
        }
        k += 1;
    }
    0
}

/// The extensions of a TLS ClientHello record (RFC 8446 §4.1.2) at `buf[0]` with `len`
/// bytes present (`len <= SCRATCH_LEN`): the offset of the first extension and where the
/// extensions end (the declared end, or the bytes present if fewer).
///
/// `head_known`: the caller has checked that `len` is at least `CLIENT_HELLO_MIN` and that
/// the record opens with a ClientHello's head ([`is_client_hello_head`]); else this checks.
#[inline(always)]
fn hello_extensions<B: Bytes>(buf: &B, len: usize, head_known: bool) -> Option<(usize, usize)> {
    if !head_known {
        // One read where the source has words (`len` covers them: CLIENT_HELLO_MIN > 8).
        let w = buf.word(0).to_le_bytes();
        let head = [w[0], w[1], w[2], w[3], w[4], w[5]];
        if len < CLIENT_HELLO_MIN || !is_client_hello_head(head) {
            return None;
        }
    }
    let sid_len = at(buf, 43) as usize;
    if sid_len > 32 {
        return None;
    }
    let mut p = 44 + sid_len;
    if p + 2 > len {
        return None;
    }
    p += 2 + be16(buf, p);
    if p + 1 > len {
        return None;
    }
    p += 1 + at(buf, p) as usize;
    if p + 2 > len {
        return None;
    }
    let ext_end_declared = p + 2 + be16(buf, p);
    let ext_end = if ext_end_declared < len { ext_end_declared } else { len };
    Some((p + 2, ext_end))
}

/// Bytes of the shortest ClientHello record [`tls_sni`] reads: record and handshake headers,
/// version, random and the session id's length.
pub const CLIENT_HELLO_MIN: usize = 47;

/// Whether a payload's first six bytes open a ClientHello record: handshake (22), legacy
/// version 3.x, handshake type client_hello (1).
#[inline(always)]
pub const fn is_client_hello_head(b: [u8; 6]) -> bool {
    b[0] == 0x16 && b[1] == 3 && b[2] <= 4 && b[5] == 1
}

/// Finds the server name in a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3) that starts at
/// `buf[0]` with `len` bytes present. Returns the name's offset and length.
///
/// Only the first record is read; a ClientHello split over segments is found here only when
/// the server name extension lies in the part present.
#[inline(always)]
pub fn tls_sni<B: Bytes>(buf: &B, len: usize) -> Option<(usize, usize)> {
    tls_sni_walk(buf, len).map(|s| s.name)
}

/// Where [`tls_sni_walk`] found the server name, and what a walk for Encrypted Client Hello
/// needs to go on from there rather than from the first extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SniWalk {
    /// The name's offset and length.
    pub name: (usize, usize),
    /// The extension after `server_name` (at most `ext_end`).
    pub next: usize,
    /// Where the extensions end (the declared end, or the bytes present if fewer): at most
    /// `SCRATCH_LEN`.
    pub ext_end: usize,
    /// 1 when an `encrypted_client_hello` extension came before `server_name`, else 0.
    pub ech_before: u64,
    /// Extensions walked, `server_name` included.
    pub walked: usize,
}

impl SniWalk {
    /// What [`ech_after_name`] needs, in one word: whether ECH came before the name, the
    /// extensions walked, the next extension and the extensions' end (offsets below
    /// `SCRATCH_LEN`, a count of at most `EXT_WALK_MAX`: 16 bits each). One word, so that the
    /// kernel keeps it in map memory across the name's loops rather than as verifier state.
    #[inline(always)]
    pub fn ech_rest(&self) -> u64 {
        let field = |v: usize| v as u64 & 0xffff;
        ((self.ech_before & 1) << 48) | (field(self.walked) << 32) | (field(self.next) << 16) | field(self.ext_end)
    }
}

/// Whether the ClientHello whose server name [`tls_sni_walk`] found (`rest` is its
/// [`SniWalk::ech_rest`]) carries an `encrypted_client_hello` extension: one before the name,
/// which the walk noted, or one after it, walked from the extension after the name. What
/// [`tls_has_ech`] says, without walking the extensions before the name a second time.
#[inline(always)]
pub fn ech_after_name<B: Bytes>(buf: &B, rest: u64) -> bool {
    let field = |shift: u32| (rest >> shift) as usize & 0xffff;
    let (ech_before, walked, next, ext_end) = (rest >> 48 & 1, field(32), field(16), field(0));
    ech_before != 0 || ech_from(buf, next, ext_end, EXT_WALK_MAX.wrapping_sub(walked))
}

/// Extensions a walk reads at most.
pub const EXT_WALK_MAX: usize = 64;

/// [`tls_sni`]'s walk, with where it stopped (see [`SniWalk`]).
#[inline(always)]
pub fn tls_sni_walk<B: Bytes>(buf: &B, len: usize) -> Option<SniWalk> {
    sni_walk(buf, len, false)
}

/// [`tls_sni_walk`] for a caller that has checked what [`is_client_hello_head`] checks, and
/// that `len` is at least `CLIENT_HELLO_MIN`: the walk does not read the head again.
#[inline(always)]
pub fn tls_sni_walk_after_head<B: Bytes>(buf: &B, len: usize) -> Option<SniWalk> {
    sni_walk(buf, len, true)
}

#[inline(always)]
fn sni_walk<B: Bytes>(buf: &B, len: usize, head_known: bool) -> Option<SniWalk> {
    let len = if len > SCRATCH_LEN { SCRATCH_LEN } else { len };
    let (mut p, ext_end) = hello_extensions(buf, len, head_known)?;
    let mut ech = 0u64;
    let mut n = 0;
    while n < EXT_WALK_MAX {
        if p + 4 > ext_end {
            return None;
        }
        // In the bytes present: p + 4 <= ext_end <= len.
        let head = buf.be32(p) as usize;
        let (ty, elen) = (head >> 16, head & 0xffff);
        if ty == 0 {
            // server_name: list length, then (type host_name(0), length, name).
            // One read for the list length's low byte, the name's type and its length.
            let entry = buf.be32(p + 5) as usize;
            if elen < 5 || p + 9 > len || (entry >> 16) & 0xff != 0 {
                return None;
            }
            let nlen = entry & 0xffff;
            let start = p + 9;
            if nlen == 0 || nlen > NAME_MAX || start + nlen > len || nlen + 5 > elen {
                return None;
            }
            // The next extension, or the end where the name's claims to run past it.
            let next = if p + 4 + elen < ext_end { p + 4 + elen } else { ext_end };
            return Some(SniWalk { name: trim_dot(buf, start, nlen), next, ext_end, ech_before: ech, walked: n + 1 });
        }
        // Without a branch (one verifier state whatever the types): 1 for the ECH type only,
        // since `ty` is below 2^16.
        ech |= ((ty ^ TLS_EXT_ECH) as u64).wrapping_sub(1) >> 63;
        p += 4 + elen;
        n += 1;
    }
    None
}

/// The `encrypted_client_hello` extension type (draft-ietf-tls-esni §11.1).
pub const TLS_EXT_ECH: usize = 0xfe0d;

/// Whether the ClientHello at `buf[0]` (as for [`tls_sni`]) carries an Encrypted Client Hello
/// extension among the extensions present: then its server name is the outer, public name.
#[inline(always)]
pub fn tls_has_ech<B: Bytes>(buf: &B, len: usize) -> bool {
    let len = if len > SCRATCH_LEN { SCRATCH_LEN } else { len };
    let Some((p, ext_end)) = hello_extensions(buf, len, false) else { return false };
    ech_from(buf, p, ext_end, EXT_WALK_MAX)
}

/// Whether an `encrypted_client_hello` extension is among the extensions from offset `p` to
/// `ext_end`, reading at most `most` of them.
#[inline(always)]
fn ech_from<B: Bytes>(buf: &B, mut p: usize, ext_end: usize, most: usize) -> bool {
    let mut n = 0;
    while n < EXT_WALK_MAX {
        if n >= most || p + 4 > ext_end {
            return false;
        }
        // In the bytes present, as in `tls_sni_walk`.
        let head = buf.be32(p) as usize;
        if head >> 16 == TLS_EXT_ECH {
            return true;
        }
        p += 4 + (head & 0xffff);
        n += 1;
    }
    false
}

#[inline(always)]
fn trim_dot<B: Bytes>(buf: &B, start: usize, len: usize) -> (usize, usize) {
    if len > 1 && at(buf, start + len - 1) == b'.' {
        (start, len - 1)
    } else {
        (start, len)
    }
}

/// How far into a request `http_host` looks for the Host header.
pub const HTTP_SCAN_MAX: usize = 1024;

/// The host a plain HTTP request is for: the target of `CONNECT host:port` (RFC 9110 §9.3.6)
/// or the Host header of any other method (RFC 9110 §7.2). Returns offset, length and whether
/// it was a CONNECT.
#[inline(always)]
pub fn http_host(buf: &[u8; SCRATCH_LEN], len: usize) -> Option<(usize, usize, bool)> {
    let (start, connect) = http_host_start(buf, len)?;
    host_token(buf, skip_ows(buf, start, len), len).map(|(o, l)| (o, l, connect))
}

/// First half of [`http_host`]: where the host name starts, and whether it is a CONNECT target.
#[inline(always)]
pub fn http_host_start(buf: &[u8; SCRATCH_LEN], len: usize) -> Option<(usize, bool)> {
    let len = if len > SCRATCH_LEN { SCRATCH_LEN } else { len };
    if len < 16 {
        return None;
    }
    let w = u32::from_be_bytes([at(buf, 0), at(buf, 1), at(buf, 2), at(buf, 3)]);
    let method_len = match w {
        0x4745_5420 => 4,                               // "GET "
        0x504f_5354 if at(buf, 4) == b' ' => 5,         // "POST "
        0x5055_5420 => 4,                               // "PUT "
        0x4845_4144 if at(buf, 4) == b' ' => 5,         // "HEAD "
        0x4f50_5449 => 8,                               // "OPTIONS "
        0x4445_4c45 => 7,                               // "DELETE "
        0x5041_5443 => 6,                               // "PATCH "
        0x434f_4e4e => 8,                               // "CONNECT "
        _ => return None,
    };
    if at(buf, method_len - 1) != b' ' {
        return None;
    }
    if w == 0x434f_4e4e {
        if at(buf, 4) != b'E' || at(buf, 5) != b'C' || at(buf, 6) != b'T' {
            return None;
        }
        return Some((8, true));
    }
    // The header "\r\nHost:", case-insensitive. The request line is at least "GET / HTTP/1.0"
    // long, so the scan starts after it: one start for every method, one verifier state.
    let end = if len < HTTP_SCAN_MAX { len } else { HTTP_SCAN_MAX };
    let mut i = if method_len > 14 { method_len } else { 14 };
    while i < HTTP_SCAN_MAX {
        if i + 6 >= end {
            return None;
        }
        // One branch per position: the six comparisons folded into one value (bit 0x20
        // lowercases the letters of "host").
        let diff = (at(buf, i) ^ b'\n')
            | ((at(buf, i + 1) | 0x20) ^ b'h')
            | ((at(buf, i + 2) | 0x20) ^ b'o')
            | ((at(buf, i + 3) | 0x20) ^ b's')
            | ((at(buf, i + 4) | 0x20) ^ b't')
            | (at(buf, i + 5) ^ b':');
        if diff == 0 {
            return Some((i + 6, false));
        }
        i += 1;
    }
    None
}

/// Second half of [`http_host`]: the host name starting at `start`, up to a port colon,
/// whitespace or line end.
#[inline(always)]
pub fn host_token(buf: &[u8; SCRATCH_LEN], start: usize, len: usize) -> Option<(usize, usize)> {
    let mut n = 0usize;
    while n < NAME_MAX {
        if start + n >= len {
            return None;
        }
        let b = at(buf, start + n);
        if b == b':' || b == b' ' || b == b'\r' || b == b'\n' || b == b'/' || b == b'\t' {
            break;
        }
        n += 1;
    }
    if n == 0 || n >= NAME_MAX {
        return None;
    }
    Some(trim_dot(buf, start, n))
}

/// Skips the optional whitespace before a header value (RFC 9110 §5.6.3), eight bytes at most.
#[inline(always)]
pub fn skip_ows(buf: &[u8; SCRATCH_LEN], start: usize, len: usize) -> usize {
    let mut s = start;
    let mut k = 0;
    while k < 8 {
        if s >= len || (at(buf, s) != b' ' && at(buf, s) != b'\t') {
            break;
        }
        s += 1;
        k += 1;
    }
    s
}

/// STUN attributes looked at per message.
pub const STUN_ATTRS_MAX: usize = 16;

/// Whether `buf` holds a STUN message (RFC 8489 §5): the two top bits of the type are zero,
/// the magic cookie follows the length, and the declared length (a multiple of 4) fits the
/// payload. Several messages may share a TCP segment, hence `<=`.
#[inline(always)]
pub fn is_stun(buf: &[u8; SCRATCH_LEN], len: usize) -> bool {
    if len < 20 || at(buf, 0) & 0xc0 != 0 {
        return false;
    }
    let cookie = u32::from_be_bytes([at(buf, 4), at(buf, 5), at(buf, 6), at(buf, 7)]);
    let mlen = be16(buf, 2);
    cookie == 0x2112_a442 && mlen & 3 == 0 && 20 + mlen <= len
}

/// QUIC versions whose Initial packets the controller decrypts: 1 (RFC 9000), 2 (RFC 9369)
/// and draft 29.
pub const QUIC_V1: u32 = 1;
pub const QUIC_V2: u32 = 0x6b33_43cf;
pub const QUIC_DRAFT29: u32 = 0xff00_001d;

/// Whether a client's UDP payload of `payload_len` bytes is a QUIC Initial the controller can
/// read: a long header with the fixed bit (RFC 9000 §17.2), a supported version, the Initial
/// type (0 in v1, 1 in v2: RFC 9369 §3.2), in a datagram of at least 1200 bytes (clients pad
/// their Initials to that, RFC 9000 §14.1).
#[inline(always)]
pub fn is_quic_initial(buf: &[u8; SCRATCH_LEN], len: usize, payload_len: usize) -> bool {
    if payload_len < 1200 || len < 7 {
        return false;
    }
    let b0 = at(buf, 0);
    if b0 & 0xc0 != 0xc0 {
        return false;
    }
    let v = u32::from_be_bytes([at(buf, 1), at(buf, 2), at(buf, 3), at(buf, 4)]);
    let ty = (b0 >> 4) & 3;
    ((v == QUIC_V1 || v == QUIC_DRAFT29) && ty == 0) || (v == QUIC_V2 && ty == 1)
}

/// Whether a server's UDP payload from port 53 reads as a DNS response (RFC 1035 §4.1.1: QR
/// set, opcode QUERY, one question).
#[inline(always)]
pub fn is_dns_response(buf: &[u8; SCRATCH_LEN], len: usize) -> bool {
    len >= 12 && at(buf, 2) & 0xf8 == 0x80 && be16(buf, 4) == 1
}

/// The REALM attribute (RFC 8489 §14.9): the domain of the service's TURN servers.
pub const STUN_REALM: usize = 0x0014;

/// What the attribute walk of a STUN message found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StunScan {
    /// The app of the first attribute type the lookup knows (0: none).
    pub app: u16,
    /// Where the first REALM value is in `buf`, and its length (0: none, or not within the
    /// payload or over `NAME_MAX`).
    pub realm_off: usize,
    pub realm_len: usize,
}

/// Walks the attributes of the STUN message in `buf` (check [`is_stun`] first). App-specific
/// attributes (RFC 8489 §18.3: the comprehension-optional range) mark the vendor's
/// implementation, e.g. Microsoft's [MS-TURN] attributes; a REALM names the vendor's domain.
#[inline(always)]
pub fn stun_scan<F: FnMut(u32) -> Option<u16>>(buf: &[u8; SCRATCH_LEN], len: usize, mut lookup: F) -> StunScan {
    let end = 20 + be16(buf, 2);
    let end = if end < len { end } else { len };
    let mut out = StunScan::default();
    let mut p = 20usize;
    let mut k = 0;
    while k < STUN_ATTRS_MAX {
        if p + 4 > end {
            break;
        }
        let ty = be16(buf, p);
        let vlen = be16(buf, p + 2);
        if let Some(app) = lookup(ty as u32) {
            out.app = app;
            return out;
        }
        if ty == STUN_REALM && out.realm_len == 0 && vlen <= NAME_MAX && p + 4 + vlen <= end {
            out.realm_off = p + 4;
            out.realm_len = vlen;
        }
        // Values are padded to a multiple of 4 (RFC 8489 §14).
        p += 4 + ((vlen + 3) & !3);
        k += 1;
    }
    out
}

/// The key to look up for signature class `class` (shape `shape`) on a payload of `len` bytes,
/// or `None` when the payload is too short for it.
#[inline(always)]
pub fn sig_key(buf: &[u8; SCRATCH_LEN], len: usize, shape: &SigClass, class: u16, dir: u8) -> Option<SigKey> {
    let off = shape.offset as usize;
    if shape.len == 0 || off + shape.len as usize > len {
        return None;
    }
    let p = shape.probe as usize;
    if p < SIG_LEN {
        let b = (at(buf, off + p) & shape.mask[p & (SIG_LEN - 1)]) as usize;
        if shape.probe_values[(b >> 6) & 3] & (1u64 << (b & 63)) == 0 {
            return None;
        }
    }
    // Two words, not sixteen bytes: the offset is at most SIG_OFFSET_MAX, so the window lies
    // inside the buffer and the bounds checks fold away.
    let o = off & SIG_WINDOW_MASK;
    let lo = word_at(buf, o) & word_of(&shape.mask, 0);
    let hi = word_at(buf, o + 8) & word_of(&shape.mask, 8);
    let mut bytes = [0u8; SIG_LEN];
    bytes[..8].copy_from_slice(&lo.to_ne_bytes());
    bytes[8..].copy_from_slice(&hi.to_ne_bytes());
    Some(SigKey { class, dir, generation: 0, bytes })
}

/// Masks a signature offset into `0..=SIG_WINDOW_MASK`: every valid offset
/// (`..=SIG_OFFSET_MAX`) is unchanged, and the 16 bytes from it lie inside the scratch buffer.
const SIG_WINDOW_MASK: usize = 0x1ff;
const _: () = assert!(SIG_OFFSET_MAX as usize <= SIG_WINDOW_MASK && SIG_WINDOW_MASK + SIG_LEN <= SCRATCH_LEN);

#[inline(always)]
fn word_at(buf: &[u8; SCRATCH_LEN], i: usize) -> u64 {
    match buf.get(i..i + 8) {
        Some(s) => u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        None => 0,
    }
}

#[inline(always)]
fn word_of(m: &[u8; SIG_LEN], i: usize) -> u64 {
    match m.get(i..i + 8) {
        Some(s) => u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        None => 0,
    }
}

/// The structural checks of a signature that matched by bytes.
#[inline(always)]
///
/// `last` is the payload's last byte, or [`LAST_UNKNOWN`] when it is not in the scratch
/// buffer (the kernel reads it through a verifier-opaque index, see `ebpf/src/matching.rs`).
pub fn sig_checks(v: &SigValue, buf: &[u8; SCRATCH_LEN], len: usize, client_first: bool, server_port: u16, last: u16) -> bool {
    if v.flags & SIG_CLIENT_FIRST != 0 && !client_first {
        return false;
    }
    if len < v.min_len as usize || (v.max_len != 0 && len > v.max_len as usize) {
        return false;
    }
    if v.port_hi != 0 && (server_port < v.port_lo || server_port > v.port_hi) {
        return false;
    }
    if v.flags & SIG_LAST_BYTE != 0 && last != v.last_byte as u16 {
        return false;
    }
    if v.len_kind == LEN_NONE {
        return true;
    }
    let o = v.len_off as usize;
    let field = match v.len_kind {
        LEN_U8 => at(buf, o) as i64,
        LEN_U16BE => be16(buf, o) as i64,
        LEN_U16LE => ((at(buf, o + 1) as i64) << 8) | at(buf, o) as i64,
        LEN_U32BE => i64::from(u32::from_be_bytes([at(buf, o), at(buf, o + 1), at(buf, o + 2), at(buf, o + 3)])),
        LEN_U32LE => i64::from(u32::from_le_bytes([at(buf, o), at(buf, o + 1), at(buf, o + 2), at(buf, o + 3)])),
        _ => return false,
    };
    let width = match v.len_kind {
        LEN_U8 => 1,
        LEN_U16BE | LEN_U16LE => 2,
        _ => 4,
    };
    if o + width > len {
        return false;
    }
    let mul = if v.len_mul == 0 { 1 } else { v.len_mul as i64 };
    let want = field * mul + v.len_add as i64;
    if v.flags & SIG_LEN_ATLEAST != 0 {
        len as i64 >= want
    } else {
        len as i64 == want
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn buf(bytes: &[u8]) -> [u8; SCRATCH_LEN] {
        let mut b = [0u8; SCRATCH_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        b
    }

    /// A minimal ClientHello: no cipher-suite or extension padding beyond what is asked.
    fn client_hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn encrypted_client_hello_is_seen_before_or_after_the_name() {
        let ech = (0xfe0d_u16, vec![0, 0, 1, 0, 1, 9, 0, 2, 1, 2, 0, 3, 4, 5, 6]);
        for exts in [vec![sni_ext("public.example"), ech.clone()], vec![ech.clone(), sni_ext("public.example")], vec![ech.clone()]] {
            let h = client_hello(&exts);
            assert!(tls_has_ech(&buf(&h), h.len()));
        }
        let plain = client_hello(&[sni_ext("public.example"), (23, vec![])]);
        assert!(!tls_has_ech(&buf(&plain), plain.len()));
        // Cut before the extension: not seen, never read past the bytes present.
        let h = client_hello(&[sni_ext("public.example"), ech]);
        assert!(!tls_has_ech(&buf(&h), h.len() - 16));
        assert!(!tls_has_ech(&buf(b"\x16\x03\x01"), 3));
    }

    /// A position past the ClientHello path's window is not read there: the path leaves the
    /// shape that byte would rule out (for the stages to run), never fewer shapes than the
    /// whole prefilter.
    #[test]
    fn the_client_hello_prefilter_reads_only_its_window() {
        let mut mask = [0u8; SIG_LEN];
        mask[..2].copy_from_slice(&[0xff, 0xff]);
        let classes = [SigClass::new(40, 2, mask), SigClass::new(4, 2, mask)];
        let key = |class: u16, b: [u8; 2]| {
            let mut bytes = [0u8; SIG_LEN];
            bytes[..2].copy_from_slice(&b);
            SigKey { class, dir: 0, generation: 0, bytes }
        };
        let sigs = [(key(0, [0xaa, 0xbb]), SigValue::default()), (key(1, [0x02, 0x01]), SigValue::default())];
        let pre = SigPrefilter::build(&classes, sigs.iter().map(|(k, v)| (k, v)));
        assert_eq!(pre.hello_probes as usize, pre.pos.iter().take(3).filter(|&&p| p < HELLO_WINDOW as u16 && hello_fixed(p as usize).is_none()).count());
        for (b4, b40) in [(0x02u8, 0xaau8), (0x02, 0x00), (0x07, 0xaa), (0x07, 0x00)] {
            let mut h = [0u8; 64];
            h[..6].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, b4, 0x01]);
            h[40] = b40;
            let (whole, hello) = (pre.candidates(&buf(&h), 517, 443), pre.candidates_hello(&buf(&h), 517, 443));
            assert_eq!(hello & whole, whole, "never fewer: {b4:02x} {b40:02x}");
            assert_eq!(hello & 0b10, whole & 0b10, "the byte in the window rules out as before");
            assert_eq!(whole & 0b10 != 0, b4 == 0x02);
            assert_eq!(hello & 0b01, 0b01, "the byte past it is not read");
        }
    }

    /// The walk that goes on from the server name finds what the whole walk finds: ECH before
    /// the name, after it, nowhere, or cut off by the bytes present; the types around it
    /// (0xfe0c, 0xfe0e, GREASE 0xfafa) are not ECH.
    #[test]
    fn the_ech_walk_goes_on_from_the_server_name() {
        let ech = (0xfe0d_u16, vec![0, 0, 1, 0, 1, 9, 0, 2, 1, 2, 0, 3, 4, 5, 6]);
        let near = [(0xfe0c_u16, vec![1]), (0xfe0e, vec![]), (0xfafa, vec![])];
        let mut cases = vec![
            (vec![sni_ext("public.example"), ech.clone()], true),
            (vec![ech.clone(), sni_ext("public.example")], true),
            (vec![near[0].clone(), ech.clone(), near[1].clone(), sni_ext("public.example"), near[2].clone()], true),
            (vec![near[0].clone(), sni_ext("public.example"), near[1].clone(), near[2].clone(), ech.clone()], true),
            (vec![near[0].clone(), near[1].clone(), sni_ext("public.example"), near[2].clone()], false),
            (vec![sni_ext("public.example")], false),
        ];
        cases.push((vec![(23, vec![]); 70].into_iter().chain([sni_ext("late.example")]).collect(), false));
        // A server_name extension that claims to run past the extensions' end: the walk goes
        // on from their end, not from an offset past it.
        let mut long = client_hello(&[sni_ext("public.example"), ech.clone()]);
        let at_sni = long.len() - (4 + ech.1.len()) - (4 + sni_ext("public.example").1.len());
        long[at_sni + 2..at_sni + 4].copy_from_slice(&0xfff0_u16.to_be_bytes());
        let w = tls_sni_walk(&buf(&long), long.len()).expect("the name is whole");
        assert_eq!((w.next, w.ext_end), (long.len(), long.len()));
        assert!(!ech_from(&buf(&long), w.next, w.ext_end, 64));
        for (exts, has) in cases {
            let h = client_hello(&exts);
            for cut in [0, 16] {
                let (b, n) = (buf(&h), h.len() - cut);
                let whole = tls_has_ech(&b, n);
                let resumed = tls_sni_walk(&b, n).map(|w| ech_after_name(&b, w.ech_rest()));
                assert_eq!(tls_sni_walk_after_head(&b, n), tls_sni_walk(&b, n), "a head checked by the caller walks alike");
                if let Some(resumed) = resumed {
                    assert_eq!(resumed, whole, "{exts:?} less {cut}");
                }
                if cut == 0 {
                    assert_eq!(whole, has, "{exts:?}");
                }
            }
        }
    }

    fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let n = name.as_bytes();
        let mut d = Vec::new();
        d.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(n.len() as u16).to_be_bytes());
        d.extend_from_slice(n);
        (0, d)
    }

    fn sni_of(rec: &[u8]) -> Option<std::string::String> {
        let b = buf(rec);
        tls_sni(&b, rec.len()).map(|(o, l)| std::string::String::from_utf8_lossy(&b[o..o + l]).into_owned())
    }

    #[test]
    fn sni_is_found_after_other_extensions() {
        let rec = client_hello(&[(0x0a0a, vec![]), (43, vec![2, 3, 4]), sni_ext("chat.signal.org"), (16, vec![0; 9])]);
        assert_eq!(sni_of(&rec).as_deref(), Some("chat.signal.org"));
        let rec = client_hello(&[sni_ext("example.com.")]);
        assert_eq!(sni_of(&rec).as_deref(), Some("example.com"), "trailing dot dropped");
    }

    #[test]
    fn sni_parser_refuses_what_is_not_a_client_hello() {
        let rec = client_hello(&[sni_ext("a.example")]);
        let mut server_hello = rec.clone();
        server_hello[5] = 2;
        assert_eq!(sni_of(&server_hello), None);
        let mut app_data = rec.clone();
        app_data[0] = 0x17;
        assert_eq!(sni_of(&app_data), None);
        assert_eq!(sni_of(&client_hello(&[(16, vec![0; 4])])), None, "no SNI extension");
        // Every truncation parses to nothing or to a name inside the buffer, never panics.
        for cut in 0..rec.len() {
            if let Some(name) = sni_of(&rec[..cut]) {
                assert_eq!(name, "a.example");
            }
        }
        // Lengths that lie point outside the record: refused.
        let mut lying = rec.clone();
        let n = lying.len();
        lying[n - 11] = 0xff;
        assert_eq!(sni_of(&lying), None);
    }

    #[test]
    fn http_host_and_connect() {
        let get = b"GET /x HTTP/1.1\r\nAccept: */*\r\nHost:  web.whatsapp.com:80\r\n\r\n";
        let b = buf(get);
        let (o, l, c) = http_host(&b, get.len()).unwrap();
        assert_eq!((&b[o..o + l], c), (&b"web.whatsapp.com"[..], false));
        let con = b"CONNECT web.telegram.org:443 HTTP/1.1\r\n\r\n";
        let b = buf(con);
        let (o, l, c) = http_host(&b, con.len()).unwrap();
        assert_eq!((&b[o..o + l], c), (&b"web.telegram.org"[..], true));
        let b = buf(b"SSH-2.0-OpenSSH_9.6\r\n");
        assert_eq!(http_host(&b, 21), None);
        let no_host = b"GET / HTTP/1.0\r\nAccept: x\r\n\r\n";
        assert_eq!(http_host(&buf(no_host), no_host.len()), None);
    }

    #[test]
    fn names_match_the_longest_listed_suffix() {
        let set = [(domain_hash("whatsapp.net"), 1u16), (domain_hash("cdn.whatsapp.net"), 2), (domain_hash("T.ME"), 3)];
        let find = |name: &str| {
            let b = buf(name.as_bytes());
            let mut slots = [0u64; NAME_SLOTS];
            match_name(&b, 0, name.len(), &mut slots, |h| set.iter().find(|(k, _)| *k == h).map(|(_, a)| *a))
        };
        assert_eq!(find("whatsapp.net"), 1);
        assert_eq!(find("mmg.whatsapp.net"), 1);
        assert_eq!(find("x.cdn.whatsapp.net"), 2, "longest suffix wins");
        assert_eq!(find("t.me"), 3, "case-insensitive");
        assert_eq!(find("nott.me"), 0, "label boundary");
        assert_eq!(find("whatsapp.net.example"), 0);
        assert_eq!(find(""), 0);
    }

    /// The kernel's one pass over a name's words gives, for a name anywhere in the buffer, the
    /// hash userspace stores for the name and for each of its 16 shortest parent domains, in
    /// that order: names of every length up to 255 bytes, with dots at every place in a word,
    /// runs of dots, more than 16 labels, upper case, and a name that starts the buffer.
    #[test]
    fn suffix_hashes_are_the_domain_hashes_of_each_parent() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let alphabet = b"abcXYZ019-.";
        let mut names: Vec<std::string::String> = (1..=255)
            .map(|n| (0..n).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect())
            // The parsers hand over names without their trailing dot.
            .map(|n: std::string::String| if n.ends_with('.') { std::format!("{}q", &n[..n.len() - 1]) } else { n })
            .collect();
        names.extend(["a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t".into(), "web.whatsapp.com".into(), "x".into(), ".lead".into(), "a..b".into(), "1234567.8".into(), "abcdefgh.ijklmnop.qrstuvwx".into()]);
        for name in &names {
            let parents: Vec<&str> = name.char_indices().rev().filter(|&(_, c)| c == '.').map(|(i, _)| &name[i + 1..]).collect();
            for off in [0usize, 1, 5, 7, 8, 9, 40, SCRATCH_LEN - 255 - 3] {
                let mut b = [b'.'; SCRATCH_LEN];
                b[off..off + name.len()].copy_from_slice(name.as_bytes());
                let mut slots = [0u64; NAME_SLOTS];
                for seed in [NAME_HASH_INIT, name_seed(1)] {
                    let (whole, count) = suffix_hashes_from(seed, &b, off, name.len(), &mut slots);
                    assert_eq!(whole, domain_hash_from(seed, name), "{name:?} at {off}");
                    assert_eq!(count, parents.len().min(NAME_LOOKUPS_MAX), "{name:?} at {off}");
                    for (k, p) in parents.iter().take(NAME_LOOKUPS_MAX).enumerate() {
                        assert_eq!(slots[k], domain_hash_from(seed, p), "parent {p:?} of {name:?} at {off}");
                    }
                }
            }
        }
        assert_ne!(domain_hash("whatsapp.com"), domain_hash("whatsapp.co"));
        assert_eq!(domain_hash("WhatsApp.COM"), domain_hash("whatsapp.com."));
    }

    #[test]
    fn length_checks() {
        let v = SigValue { app: 1, len_kind: LEN_U8, len_off: 1, len_mul: 4, len_add: 2, ..SigValue::default() };
        let mut p = vec![0xef, 3];
        p.extend_from_slice(&[0; 12]);
        assert!(sig_checks(&v, &buf(&p), p.len(), true, 0, LAST_UNKNOWN));
        assert!(!sig_checks(&v, &buf(&p), p.len() + 1, true, 0, LAST_UNKNOWN));
        let at_least = SigValue { flags: SIG_LEN_ATLEAST, ..v };
        assert!(sig_checks(&at_least, &buf(&p), p.len() + 5, true, 0, LAST_UNKNOWN));
        let first = SigValue { flags: SIG_CLIENT_FIRST, len_kind: LEN_NONE, ..v };
        assert!(!sig_checks(&first, &buf(&p), p.len(), false, 0, LAST_UNKNOWN));
        let exact = SigValue { len_kind: LEN_NONE, min_len: 14, max_len: 14, ..v };
        assert!(sig_checks(&exact, &buf(&p), 14, false, 0, LAST_UNKNOWN));
        assert!(!sig_checks(&exact, &buf(&p), 15, false, 0, LAST_UNKNOWN));
        assert!(!sig_checks(&exact, &buf(&p), 13, false, 0, LAST_UNKNOWN));
        let ported = SigValue { port_lo: 8801, port_hi: 8810, ..exact };
        assert!(sig_checks(&ported, &buf(&p), 14, false, 8801, LAST_UNKNOWN));
        assert!(sig_checks(&ported, &buf(&p), 14, false, 8810, LAST_UNKNOWN));
        assert!(!sig_checks(&ported, &buf(&p), 14, false, 8811, LAST_UNKNOWN));
        assert!(!sig_checks(&ported, &buf(&p), 14, false, 443, LAST_UNKNOWN));
        let last = SigValue { flags: SIG_LAST_BYTE, last_byte: p[13], ..exact };
        assert!(sig_checks(&last, &buf(&p), 14, false, 0, u16::from(p[13])));
        let other = SigValue { last_byte: p[13] ^ 1, ..last };
        assert!(!sig_checks(&other, &buf(&p), 14, false, 0, u16::from(p[13])));
    }

    #[test]
    fn signature_keys_mask_the_payload() {
        let mut shape = SigClass::new(1, 3, [0xff, 0xf0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let b = buf(&[9, 0xab, 0xcd, 0xef, 0x11]);
        assert!(sig_key(&b, 5, &shape, 3, 1).is_none(), "no signature of the class starts with 0xab");
        shape.admit(&[0xab, 0xc0, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let k = sig_key(&b, 5, &shape, 3, 1).unwrap();
        assert_eq!(&k.bytes[..4], &[0xab, 0xc0, 0xef, 0]);
        assert!(sig_key(&b, 3, &shape, 3, 1).is_none(), "payload too short for the shape");
        // The probe is the first byte the mask keeps.
        let mut late = SigClass::new(0, 4, [0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(late.probe, 2);
        late.admit(&[0, 0, 0xcd, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(sig_key(&b, 5, &late, 3, 1).is_some());
        assert!(sig_key(&buf(&[9, 0xab, 0xce, 0xef]), 4, &late, 3, 1).is_none());
        // A size-only shape has no probe.
        let size_only = SigClass::new(0, 1, [0; SIG_LEN]);
        assert_eq!(size_only.probe, PROBE_NONE);
        assert!(sig_key(&b, 5, &size_only, 3, 1).is_some());
    }

    /// The prefilter never rules out a shape whose key a payload has among the signatures (nor
    /// a length one of its signatures accepts), and does rule out shapes whose bytes or
    /// lengths differ.
    #[test]
    fn the_prefilter_keeps_every_shape_a_payload_can_match() {
        let mask = |m: &[u8]| {
            let mut a = [0u8; SIG_LEN];
            a[..m.len()].copy_from_slice(m);
            a
        };
        let classes = [
            SigClass::new(0, 3, mask(&[0xff, 0xff, 0xff])),       // "<?x"-like text start
            SigClass::new(0, 2, mask(&[0xf0, 0, 0, 0])),          // a nibble at byte 0, len 1 significant
            SigClass::new(2, 2, mask(&[0xff, 0xff])),             // bytes 2 and 3
            SigClass::new(4, 2, mask(&[0xff, 0xff])),             // bytes 4 and 5
            SigClass::new(0, 1, [0; SIG_LEN]),                    // size only
            SigClass::new(9, 2, mask(&[0, 0xff])),                // byte 10 alone
        ];
        let key = |class: u16, b: &[u8]| SigKey { class, dir: 0, generation: 0, bytes: mask(b) };
        let val = |min_len: u16, max_len: u16| SigValue { min_len, max_len, ..SigValue::default() };
        let sigs = [
            (key(0, b"<?x"), val(3, 0)),
            (key(0, b"NIC"), val(3, 0)),
            (key(1, &[0x10]), val(0, 0)),
            (key(2, &[0x03, 0x01]), val(4, 0)),
            (key(3, &[0xaa, 0xbb]), val(6, 0)),
            (key(4, &[]), SigValue { port_lo: 5222, port_hi: 5222, ..val(12, 12) }),
            (key(5, &[0, 0x7f]), val(11, 20)),
        ];
        let pre = SigPrefilter::build(&classes, sigs.iter().map(|(k, v)| (k, v)));
        // Offsets 0, 2, 4 and 10 cover the five shapes that look at bytes (0 covers two, and 2
        // is looked at by two); the other three are the rest the shapes look at. Those a
        // ClientHello's head fixes (0, 1, 5) go last.
        assert_eq!(&pre.pos[..7], &[2, 4, 10, 3, 0, 1, 5]);
        assert_eq!(pre.hello_probes, 4);
        let mut shapes = classes;
        for (k, _) in &sigs {
            shapes[k.class as usize].admit(&k.bytes);
        }
        // Every payload of a small alphabet over the bytes the shapes look at, at every
        // length around the size-only one, to its port and others.
        let alphabet = [0x00u8, 0x01, 0x03, 0x10, 0x16, b'<', b'?', b'x', b'N', 0x7f, 0xaa, 0xbb];
        let mut checked = 0;
        let mut ruled_out = 0;
        for &a in &alphabet {
            for &c in &alphabet {
                for &d in &alphabet {
                    for &e in &[0xaau8, 0x7f, 0] {
                        for len in [11usize, 12, 13, 268] {
                            for port in [5222u16, 443, 358] {
                                let mut payload = [0u8; 16];
                                payload[..11].copy_from_slice(&[a, b'?', c, d, e, 0xbb, 0, 0, 0, 0, d]);
                                let cand = pre.candidates(&buf(&payload), len, port);
                                let bb = buf(&payload);
                                if is_client_hello_head([a, b'?', c, d, e, 0xbb]) {
                                    assert_eq!(pre.candidates_hello(&bb, len, port), cand);
                                }
                                for (ci, shape) in shapes.iter().enumerate() {
                                    let hit = sig_key(&bb, len.min(16), shape, ci as u16, 0)
                                        .and_then(|k| sigs.iter().find(|(s, _)| *s == k))
                                        .is_some_and(|(_, v)| {
                                            len >= v.min_len as usize
                                                && (v.max_len == 0 || len <= v.max_len as usize)
                                                && (v.port_hi == 0 || (v.port_lo..=v.port_hi).contains(&port))
                                        });
                                    if hit {
                                        assert_ne!(cand & (1 << ci), 0, "shape {ci} ruled out for {payload:02x?}, length {len}, port {port}");
                                        checked += 1;
                                    } else if cand & (1 << ci) == 0 {
                                        ruled_out += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 1000 && ruled_out > 10_000, "{checked} matches, {ruled_out} shapes ruled out");
        // A TLS ClientHello's bytes leave only the nibble shape (0x16 & 0xf0 is 0x10).
        let mut hello = [0u8; 64];
        hello[..6].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
        assert_eq!(pre.candidates(&buf(&hello), 517, 443), 0b10);
        // From the bytes the head leaves open, the same shapes: every head, every byte the
        // shapes look at from a small alphabet.
        for minor in 0..=4u8 {
            for &x in &[0x00u8, 0x02, 0x03, 0x01, 0xaa, 0xbb, 0x7f, 0x10] {
                for &y in &[0x00u8, 0x01, 0xaa, 0xbb, 0x7f] {
                    let mut h = [0u8; 64];
                    h[..11].copy_from_slice(&[0x16, 0x03, minor, x, y, 0x01, 0, 0, 0, 0, y]);
                    for (len, port) in [(517, 443), (12, 5222), (268, 358), (47, 443)] {
                        assert_eq!(pre.candidates_hello(&buf(&h), len, port), pre.candidates(&buf(&h), len, port), "{h:02x?} {len} {port}");
                    }
                }
            }
        }
        assert_eq!(pre.candidates(&buf(b"<?xml ver"), 40, 5222) & 1, 1);
        // The size-only shape: its length and port, modulo 256 (its own check sees the rest).
        assert_eq!(pre.candidates(&buf(&hello), 12, 5222) & 0b1_0000, 0b1_0000);
        assert_eq!(pre.candidates(&buf(&hello), 268, 358) & 0b1_0000, 0b1_0000);
        assert_eq!(pre.candidates(&buf(&hello), 13, 5222) & 0b1_0000, 0);
        assert_eq!(pre.candidates(&buf(&hello), 12, 443) & 0b1_0000, 0);
        // Without signatures, no shape is left; the default admits all.
        assert_eq!(SigPrefilter::build(&classes, core::iter::empty()).candidates(&buf(&hello), 12, 5222), 0);
        assert_eq!(SigPrefilter::default().candidates(&buf(&hello), 12, 443), u32::MAX);
        assert_eq!(SigPrefilter::default().candidates_hello(&buf(&hello), 12, 443), u32::MAX);
    }
}
