//! Keyword and phrase rules: every phrase of every rule in one Aho-Corasick automaton, so a
//! text is read once whatever the number of phrases.
//!
//! Case: both the phrases and the text are folded with [`fold_into`] (Unicode lowercase, plus
//! `ß` -> `ss` and final `ς` -> `σ`, the two common cases where lowercase alone leaves two
//! spellings of one word). An ASCII text, the common case, is not copied: the automaton
//! compares ASCII letters case-insensitively itself. A text with any non-ASCII byte is folded
//! into a scratch buffer first (at most three times the text's size, freed after the message).
//! Not handled: Unicode normalisation (a precomposed `é` and `e` + combining accent differ),
//! full-width or look-alike letters.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::{Hits, RuleRef};
use crate::content::model::ContentError;

/// Most `allow` phrase occurrences remembered in one text. Past the bound the later allow
/// occurrences are still reported as matches, but exempt nothing: log and block phrases after
/// that point are reported (the policy fails closed, never open).
pub const MAX_ALLOW_SPANS: usize = 4096;

/// Folds `text` for case-insensitive comparison, appending to `out`. ASCII runs are copied
/// and lowercased in bulk; other characters one by one.
pub fn fold_into(text: &str, out: &mut String) {
    let mut rest = text;
    loop {
        let ascii = rest
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(ascii);
        let from = out.len();
        out.push_str(run);
        if let Some(pushed) = out.get_mut(from..) {
            pushed.make_ascii_lowercase();
        }
        let mut chars = tail.chars();
        match chars.next() {
            None => return,
            Some('ß' | 'ẞ') => out.push_str("ss"),
            Some('ς') => out.push('σ'),
            Some(c) => out.extend(c.to_lowercase()),
        }
        rest = chars.as_str();
    }
}

pub fn fold(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    fold_into(text, &mut s);
    s
}

/// The characters outside ASCII whose fold contains an ASCII letter (`ß` -> `ss`, the Kelvin
/// sign -> `k`, `İ` -> `i` + combining dot). A test checks the list against every character.
const FOLDS_TO_ASCII: [char; 4] = ['ß', 'ẞ', '\u{212A}', 'İ'];
/// The last byte of each of [`FOLDS_TO_ASCII`] in UTF-8 (a test checks them).
const FOLD_LAST_BYTES: [u8; 4] = [0x9F, 0x9E, 0xAA, 0xB0];

/// Whether `text` holds one of [`FOLDS_TO_ASCII`]. Their UTF-8 forms end with 0x9F, 0xB0,
/// 0x9E or 0xAA: continuation bytes that accented Latin letters (0xC3 0xA0-0xBF) seldom use,
/// so the search stops at few places, where the preceding bytes are compared.
fn has_ascii_fold(text: &str) -> bool {
    let b = text.as_bytes();
    let ends = |i: usize, seq: &[u8]| {
        (i + 1)
            .checked_sub(seq.len())
            .and_then(|s| b.get(s..=i))
            .is_some_and(|w| w == seq)
    };
    let hit = |i: usize| {
        FOLDS_TO_ASCII
            .iter()
            .any(|c| ends(i, c.encode_utf8(&mut [0; 4]).as_bytes()))
    };
    let [l0, l1, l2, l3] = FOLD_LAST_BYTES;
    memchr::memchr3_iter(l0, l1, l2, b).any(hit) || memchr::memchr_iter(l3, b).any(hit)
}

/// The text as the automaton reads it: the text itself when ASCII, or when every phrase is
/// ASCII and no character of the text folds to ASCII (the automaton folds ASCII case itself,
/// and other characters cannot take part in a match); else its folded copy.
fn haystack<'t>(text: &'t str, ascii_phrases: bool, scratch: &'t mut String) -> &'t str {
    if text.is_ascii() || (ascii_phrases && !has_ascii_fold(text)) {
        text
    } else {
        scratch.clear();
        fold_into(text, scratch);
        scratch
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `hay[start..end]` is neither preceded nor followed by a word character.
fn whole_word(hay: &str, start: usize, end: usize) -> bool {
    let before = hay.get(..start).and_then(|s| s.chars().next_back());
    let after = hay.get(end..).and_then(|s| s.chars().next());
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
}

struct Phrase {
    rule: usize,
    whole_word: bool,
    /// As written in the policy, for the reason.
    written: Box<str>,
}

/// Bits per distinct piece in each of the two filter tables: an eighth of each table's bits
/// is set, so one window in about 64 passes both.
const BITS_PER_GRAM: usize = 8;
/// The log-2 of the bits of each table: at least 256 bytes, at most 8 KiB.
const MIN_GRAM_LOG: u32 = 11;
const MAX_GRAM_LOG: u32 = 16;
/// Most distinct phrase pieces the filter takes; a policy with more is searched by the
/// automaton alone.
const MAX_GRAMS: usize = (1 << MAX_GRAM_LOG) / BITS_PER_GRAM;

/// The first four bytes of a window, with bit 5 of every byte set: ASCII letters compare
/// without case, and the few other bytes this merges only cost a failed comparison.
fn gram(window: [u8; 4]) -> u32 {
    u32::from_le_bytes(window) | 0x2020_2020
}

/// A filter in front of the phrase comparison: two tables of one bit per hashed four-byte
/// piece of a phrase's start, each indexed by its own bits of one multiplicative hash. Chat
/// text is mostly words, and ordinary words share their letters with the phrases (which
/// defeats the automaton's rare-byte prefilter), but they seldom share whole four-byte pieces.
///
/// The tables are small on purpose: between two messages the rest of the content path (other
/// flows' reassembly windows, parser buffers, the archive) pushes them out of the L1 cache,
/// and every window looked up in a cold table costs a cache miss. Two tables of 512 bytes for
/// a hundred phrases filter better than one of 8 KiB and touch a sixteenth of its lines.
///
/// Only every `stride`-th window of the text is looked up: the table holds the pieces at
/// offsets `0..stride` of every phrase, and every phrase is at least `stride + 3` bytes long,
/// so an occurrence starting at `p` contains exactly one looked-up window, the one at the
/// first multiple of `stride` from `p` on, and that window's piece is in the table with its
/// offset. With phrases of seven bytes or more, a quarter of the windows are read; with
/// eleven or more, an eighth.
struct Grams {
    /// The first table in `bits[..words]`, the second in `bits[words..]`.
    bits: Box<[u64]>,
    log: u32,
    /// (phrase, offset of the piece in it) by piece (as [`gram`] makes them).
    by_gram: hashbrown::HashMap<u32, Vec<(usize, usize)>>,
    /// The folded phrases, by phrase index.
    folded: Vec<Box<[u8]>>,
    stride: usize,
}

/// The longest stride: one window in eight looked up (phrases of eleven bytes or more).
const MAX_STRIDE: usize = 8;

impl Grams {
    /// The bit of `g` in each table: the top `log` bits of its hash, and the `log` below them.
    fn bits_of(g: u32, log: u32) -> (usize, usize) {
        let h = u64::from(g).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mask = (1u64 << log) - 1;
        (
            (h >> (64 - log)) as usize,
            ((h >> (64 - 2 * log)) & mask) as usize,
        )
    }

    fn build(folded: &[String]) -> Option<Grams> {
        let shortest = folded.iter().map(String::len).min()?;
        let stride = shortest.checked_sub(3)?.clamp(1, MAX_STRIDE);
        let mut by_gram: hashbrown::HashMap<u32, Vec<(usize, usize)>> = hashbrown::HashMap::new();
        for (i, f) in folded.iter().enumerate() {
            for k in 0..stride {
                let piece: [u8; 4] = f.as_bytes().get(k..k + 4)?.try_into().ok()?;
                by_gram.entry(gram(piece)).or_default().push((i, k));
            }
        }
        if by_gram.len() > MAX_GRAMS {
            return None;
        }
        let log = (by_gram.len() * BITS_PER_GRAM)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(MIN_GRAM_LOG, MAX_GRAM_LOG);
        let words = (1usize << log) / 64;
        let mut bits = vec![0u64; 2 * words].into_boxed_slice();
        for g in by_gram.keys() {
            let (b1, b2) = Grams::bits_of(*g, log);
            for b in [b1, words * 64 + b2] {
                if let Some(w) = bits.get_mut(b / 64) {
                    *w |= 1 << (b % 64);
                }
            }
        }
        Some(Grams {
            bits,
            log,
            by_gram,
            folded: folded.iter().map(|f| f.as_bytes().into()).collect(),
            stride,
        })
    }

    fn has_bit(&self, b: usize) -> bool {
        self.bits
            .get(b / 64)
            .is_some_and(|word| word & (1 << (b % 64)) != 0)
    }

    /// Calls `f(phrase, start, end)` for every occurrence in `hay`, until it returns false.
    fn each(&self, hay: &[u8], mut f: impl FnMut(usize, usize, usize) -> bool) {
        let mut q = 0;
        while let Some(w) = hay.get(q..q + 4) {
            let g = gram([w[0], w[1], w[2], w[3]]);
            let (b1, b2) = Grams::bits_of(g, self.log);
            let at = q;
            q += self.stride;
            if !self.has_bit(b1) || !self.has_bit((1 << self.log) + b2) {
                continue;
            }
            let Some(list) = self.by_gram.get(&g) else {
                continue;
            };
            for &(p, k) in list {
                let (Some(phrase), Some(start)) = (self.folded.get(p), at.checked_sub(k)) else {
                    continue;
                };
                let end = start + phrase.len();
                if hay
                    .get(start..end)
                    .is_some_and(|t| t.eq_ignore_ascii_case(phrase))
                    && !f(p, start, end)
                {
                    return;
                }
            }
        }
    }
}

struct Automaton {
    ac: AhoCorasick,
    /// The fast path when every phrase has four bytes or more (see [`Grams`]).
    grams: Option<Grams>,
    phrases: Vec<Phrase>,
    /// The distinct rules, to stop reading once all of them matched.
    rules: Vec<usize>,
}

impl Automaton {
    fn build(phrases: Vec<(Phrase, String)>) -> Result<Option<Automaton>, ContentError> {
        if phrases.is_empty() {
            return Ok(None);
        }
        let (phrases, folded): (Vec<Phrase>, Vec<String>) = phrases.into_iter().unzip();
        // Standard semantics: the only kind that reports overlapping matches, so "falcon" and
        // "project falcon" of two rules are both seen in "project falcon".
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .build(&folded)
            .map_err(|e| ContentError::Automaton(e.to_string()))?;
        let grams = Grams::build(&folded);
        let mut rules: Vec<usize> = phrases.iter().map(|p| p.rule).collect();
        rules.dedup();
        Ok(Some(Automaton {
            ac,
            grams,
            phrases,
            rules,
        }))
    }

    /// Calls `f(phrase, start, end)` for every whole-word-respecting occurrence in `hay`
    /// until it returns false.
    fn each(&self, hay: &str, mut f: impl FnMut(&Phrase, usize, usize) -> bool) {
        let mut found = |i: usize, start: usize, end: usize| {
            let Some(p) = self.phrases.get(i) else {
                return true;
            };
            if p.whole_word && !whole_word(hay, start, end) {
                return true;
            }
            f(p, start, end)
        };
        if let Some(grams) = &self.grams {
            return grams.each(hay.as_bytes(), found);
        }
        let Ok(iter) = self.ac.try_find_overlapping_iter(hay) else {
            return;
        };
        for m in iter {
            if !found(m.pattern().as_usize(), m.start(), m.end()) {
                return;
            }
        }
    }
}

/// Where a text came from, for the reason.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Body,
    FileName(&'a str),
}

/// The keyword rules of a policy, compiled.
#[derive(Default)]
pub struct Keywords {
    /// Phrases of `log` and `block` rules.
    deny: Option<Automaton>,
    /// Phrases of `allow` rules: an occurrence of a log or block phrase that lies inside an
    /// occurrence of an allow phrase is exempt ("falcon" blocked, "falcon heavy" allowed).
    allow: Option<Automaton>,
    /// Every phrase is ASCII once folded: most texts need no folded copy.
    ascii_phrases: bool,
}

/// One keyword rule as the compiler hands it over.
pub struct KeywordRule<'a> {
    pub index: usize,
    pub allow: bool,
    pub whole_word: bool,
    pub phrases: &'a [String],
}

/// Collects the phrases of the keyword rules, then builds the automata.
#[derive(Default)]
pub struct KeywordsBuilder {
    deny: Vec<(Phrase, String)>,
    allow: Vec<(Phrase, String)>,
}

impl KeywordsBuilder {
    pub fn add(&mut self, rule: &RuleRef, kr: &KeywordRule<'_>) -> Result<(), ContentError> {
        if kr.phrases.is_empty() {
            return Err(ContentError::EmptyList {
                rule: rule.clone(),
                field: "keywords",
            });
        }
        for (position, written) in kr.phrases.iter().enumerate() {
            let folded = fold(written.trim());
            if folded.is_empty() {
                return Err(ContentError::EmptyEntry {
                    rule: rule.clone(),
                    field: "keywords",
                    position,
                });
            }
            let phrase = Phrase {
                rule: kr.index,
                whole_word: kr.whole_word,
                written: written.trim().into(),
            };
            if kr.allow {
                &mut self.allow
            } else {
                &mut self.deny
            }
            .push((phrase, folded));
        }
        Ok(())
    }

    pub fn build(self) -> Result<Keywords, ContentError> {
        let ascii_phrases = self
            .deny
            .iter()
            .chain(&self.allow)
            .all(|(_, f)| f.is_ascii());
        Ok(Keywords {
            ascii_phrases,
            deny: Automaton::build(self.deny)?,
            allow: Automaton::build(self.allow)?,
        })
    }
}

impl Keywords {
    pub fn is_empty(&self) -> bool {
        self.deny.is_none() && self.allow.is_none()
    }

    /// Records in `hits` every keyword rule that matches `text`.
    pub(super) fn scan(&self, text: &str, place: Place<'_>, scratch: &mut String, hits: &mut Hits) {
        if self.is_empty() || text.is_empty() {
            return;
        }
        let hay = haystack(text, self.ascii_phrases, scratch);
        let reason = |p: &Phrase| match place {
            Place::Body => format!("keyword `{}`", p.written),
            Place::FileName(n) => {
                format!("keyword `{}` in file name `{}`", p.written, super::shown(n))
            }
        };
        // Merged allow occurrences, sorted by start, disjoint.
        let mut spans: Vec<(usize, usize)> = Vec::new();
        if let Some(allow) = &self.allow {
            let want_spans = self.deny.is_some();
            let mut pending = allow.rules.iter().filter(|r| !hits.has(**r)).count();
            allow.each(hay, |p, s, e| {
                if hits.record(p.rule, || reason(p)) {
                    pending = pending.saturating_sub(1);
                }
                if !want_spans {
                    return pending > 0;
                }
                if spans.len() < MAX_ALLOW_SPANS {
                    spans.push((s, e));
                }
                true
            });
            spans.sort_unstable();
            spans.dedup_by(|next, prev| {
                // Overlapping or touching spans merge into `prev`.
                if next.0 <= prev.1 {
                    prev.1 = prev.1.max(next.1);
                    true
                } else {
                    false
                }
            });
        }
        let Some(deny) = &self.deny else { return };
        let mut pending = deny.rules.iter().filter(|r| !hits.has(**r)).count();
        if pending == 0 {
            return;
        }
        deny.each(hay, |p, s, e| {
            if hits.has(p.rule) || exempt(&spans, s, e) {
                return true;
            }
            if hits.record(p.rule, || reason(p)) {
                pending -= 1;
            }
            pending > 0
        });
    }
}

/// Whether `[s, e)` lies inside one of the merged allow spans.
fn exempt(spans: &[(usize, usize)], s: usize, e: usize) -> bool {
    let i = spans.partition_point(|sp| sp.0 <= s);
    i > 0 && spans.get(i - 1).is_some_and(|sp| e <= sp.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_is_lowercase_with_sharp_s_and_final_sigma() {
        assert_eq!(fold("ÜBER Straße STRASSE"), "über strasse strasse");
        assert_eq!(fold("ΟΔΟΣ οδος"), "οδοσ οδοσ");
        assert_eq!(fold("İstanbul"), "i\u{307}stanbul");
        assert_eq!(fold("Kelvin \u{212A}"), "kelvin k");
    }

    fn occurrences(a: &Automaton, hay: &str) -> Vec<(String, usize, usize)> {
        let mut v = Vec::new();
        a.each(hay, |p, s, e| {
            v.push((p.written.to_string(), s, e));
            true
        });
        v.sort();
        v
    }

    proptest::proptest! {
        /// The four-byte filter finds exactly what the automaton finds.
        #[test]
        fn the_gram_filter_finds_what_the_automaton_finds(
            phrases in proptest::collection::vec(("[abAB é_]{4,12}", proptest::bool::ANY), 1..8),
            hay in "[abAB é_.]{0,80}",
        ) {
            let list: Vec<(Phrase, String)> = phrases
                .iter()
                .enumerate()
                .map(|(i, (w, whole))| {
                    let phrase = Phrase { rule: i, whole_word: *whole, written: w.as_str().into() };
                    (phrase, fold(w))
                })
                .filter(|(_, f)| f.len() >= 4)
                .collect();
            proptest::prop_assume!(!list.is_empty());
            let mut a = Automaton::build(list).unwrap().unwrap();
            proptest::prop_assert!(a.grams.is_some());
            // The folded text, and the text as written (ASCII case is the searchers' job).
            let folded = fold(&hay);
            let fast = [occurrences(&a, &folded), occurrences(&a, &hay)];
            a.grams = None;
            proptest::prop_assert_eq!(&fast[0], &occurrences(&a, &folded));
            proptest::prop_assert_eq!(&fast[1], &occurrences(&a, &hay));
        }
    }

    #[test]
    fn folds_to_ascii_lists_every_such_character() {
        let mut folded = String::new();
        for c in (0x80..=0x10_FFFF).filter_map(char::from_u32) {
            folded.clear();
            fold_into(c.encode_utf8(&mut [0; 4]), &mut folded);
            assert_eq!(
                folded.bytes().any(|b| b.is_ascii()),
                FOLDS_TO_ASCII.contains(&c),
                "{c:?} folds to {folded:?}"
            );
        }
        for (c, last) in FOLDS_TO_ASCII.iter().zip(FOLD_LAST_BYTES) {
            assert_eq!(c.encode_utf8(&mut [0; 4]).as_bytes().last(), Some(&last));
        }
        for c in FOLDS_TO_ASCII {
            let s = format!("caf\u{e9} {c} \u{e9}");
            assert!(has_ascii_fold(&s), "{s}");
        }
        assert!(!has_ascii_fold("café naïve déjà vu \u{2014} \u{1e00}"));
    }

    #[test]
    fn whole_word_boundaries_are_unicode() {
        assert!(whole_word("a falcon.", 2, 8));
        assert!(!whole_word("falcons", 0, 6));
        assert!(!whole_word("_falcon", 1, 7));
        assert!(!whole_word("éfalcon", 2, 8));
        assert!(whole_word("falcon", 0, 6));
        // Past the end or off a char boundary: no character, so a boundary.
        assert!(whole_word("x", 5, 9));
    }

    #[test]
    fn exemption_needs_containment_in_a_merged_span() {
        let spans = [(0, 10), (20, 30)];
        assert!(exempt(&spans, 0, 10));
        assert!(exempt(&spans, 3, 7));
        assert!(exempt(&spans, 25, 30));
        assert!(!exempt(&spans, 8, 12));
        assert!(!exempt(&spans, 12, 15));
        assert!(!exempt(&spans, 31, 33));
        assert!(!exempt(&[], 0, 1));
    }
}
