//! Data patterns with validators: payment card numbers, IBANs, US social security numbers and
//! UK national insurance numbers.
//!
//! One pass over the text's bytes: at each start of an ASCII word (a letter or digit not
//! preceded by one), the validators whose first character fits are tried; each reads at most
//! a few dozen bytes ahead, so the pass stays linear. Only values that pass their validator
//! (check digit, issuer range, allocation rules) count, and a reason shows the value redacted.
//!
//! A non-ASCII character counts as a word boundary (so `é4111 1111 1111 1111` is seen); digits
//! other than ASCII (full-width, Arabic-Indic) are not read.

use std::fmt::Write as _;

/// The validators a rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// 13 to 19 digits, optionally in groups separated by one space or one dash (the same
    /// separator throughout), passing the Luhn check, in a known issuer range of the right
    /// length.
    PaymentCard,
    /// ISO 13616: country code, two check digits, the BBAN; the length the SWIFT registry
    /// gives the country; ISO 7064 MOD 97-10. Electronic form or paper form (groups of four
    /// separated by one space).
    Iban,
    /// `AAA-GG-SSSS` or `AAA GG SSSS`, with the SSA's never-issued values refused: area 000,
    /// 666 and 900-999, group 00, serial 0000, and the two numbers voided after publication.
    /// Nine digits without separators are not read: too many ordinary numbers look like that.
    UsSsn,
    /// Two prefix letters, six digits (optionally in pairs with spaces), suffix A-D, with
    /// HMRC's prefix rules (first letter not D F I Q U V, second not D F I O Q U V, and not
    /// BG GB KN NK NT TN ZZ).
    UkNino,
}

impl PatternKind {
    pub const ALL: [PatternKind; 4] = [
        PatternKind::PaymentCard,
        PatternKind::Iban,
        PatternKind::UsSsn,
        PatternKind::UkNino,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PatternKind::PaymentCard => "payment_card",
            PatternKind::Iban => "iban",
            PatternKind::UsSsn => "us_ssn",
            PatternKind::UkNino => "uk_nino",
        }
    }

    pub fn from_name(name: &str) -> Option<PatternKind> {
        PatternKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << self.index()
    }
}

/// A set of pattern kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u8);

impl KindSet {
    pub fn insert(&mut self, k: PatternKind) {
        self.0 |= k.bit();
    }

    pub fn contains(self, k: PatternKind) -> bool {
        self.0 & k.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Reads the value that starts at a word start, if it is one; returns it redacted.
type Validator = fn(&[u8], usize) -> Option<String>;

/// The first value of each kind found in a text, redacted.
pub type Found = [Option<String>; 4];

/// Finds the first value of each kind of `wanted` in `text`; stops once all are found.
pub fn scan(text: &str, wanted: KindSet, found: &mut Found) {
    let b = text.as_bytes();
    let mut missing = PatternKind::ALL
        .into_iter()
        .filter(|k| wanted.contains(*k))
        .count();
    let want = |k: PatternKind, found: &Found| wanted.contains(k) && found[k.index()].is_none();
    let mut i = 0;
    // Every value has an ASCII digit among its first four characters (a card or SSN starts
    // with one, an IBAN has its check digits third and fourth, a NINO its first digit third,
    // or fourth after a space): words that start more than three bytes before the next digit
    // cannot be one, and a text without digits is done at once.
    let mut next_digit = 0;
    while missing > 0 {
        if next_digit < i {
            let Some(d) = find_digit(b, i) else { break };
            next_digit = d;
        }
        if next_digit > i + 3 {
            i = next_digit - 3;
            // Inside a word that started earlier: that word cannot be a value either.
            if b.get(i - 1).is_some_and(u8::is_ascii_alphanumeric) {
                while b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                    i += 1;
                }
            }
            continue;
        }
        let Some(&c) = b.get(i) else { break };
        if !c.is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        // Here `i` starts a word: the loop skips whole words below.
        let mut tries: [(PatternKind, Validator); 2] = [
            (PatternKind::PaymentCard, card_at),
            (PatternKind::UsSsn, ssn_at),
        ];
        let candidates = if c.is_ascii_digit() {
            true
        } else {
            // IBANs and NINOs have a digit third or (NINO with a space) fourth.
            tries = [(PatternKind::Iban, iban_at), (PatternKind::UkNino, nino_at)];
            digit(b, i + 2).is_some() || digit(b, i + 3).is_some()
        };
        if candidates {
            for (k, at) in tries {
                if want(k, found) {
                    if let Some(r) = at(b, i) {
                        found[k.index()] = Some(format!("{} {r}", k.name()));
                        missing -= 1;
                    }
                }
            }
        }
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            i += 1;
        }
    }
}

/// The index of the first ASCII digit at or after `from`. Eight bytes at a time: a text
/// without digits, the common case, costs about a cycle per eight bytes.
fn find_digit(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let rest = b.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut base = from;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Bytes 0x30..=0x39 become 0..=9: a byte below 10 flags its high bit (exact for
        // the lowest flagged byte, which is all that is read).
        let t = x ^ (ONES * 0x30);
        let flagged = t.wrapping_sub(ONES * 10) & !t & HIGH;
        if flagged != 0 {
            return Some(base + (flagged.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| base + p)
}

fn digit(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).filter(|c| c.is_ascii_digit()).map(|c| c - b'0')
}

fn alnum_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_alphanumeric)
}

/// Shows the first four and last four characters, masks the rest, in groups of four.
fn redact_grouped(chars: &[u8]) -> String {
    let n = chars.len();
    let mut s = String::with_capacity(n + n / 4);
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            s.push(' ');
        }
        s.push(if i < 4 || i + 4 >= n { c as char } else { '*' });
    }
    s
}

// ---- payment cards ----

const CARD_MAX: usize = 19;

/// Tries card numbers starting at the digit `text[start]`: the windows that end at a group
/// boundary followed by no letter or digit, shortest first.
fn card_at(text: &[u8], start: usize) -> Option<String> {
    // No issuer range starts with 0, 1, 7, 8 or 9.
    if !matches!(text.get(start), Some(b'2'..=b'6')) {
        return None;
    }
    let mut digits = [0u8; CARD_MAX];
    let mut count = 0;
    let mut pos = start;
    let mut sep = None;
    loop {
        while let Some(d) = digit(text, pos) {
            *digits.get_mut(count)? = d;
            count += 1;
            pos += 1;
        }
        if alnum_at(text, pos) {
            return None;
        }
        let number = digits.get(..count)?;
        if (13..=CARD_MAX).contains(&count) && card_valid(number) {
            let shown: Vec<u8> = number.iter().map(|d| d + b'0').collect();
            return Some(redact_grouped(&shown));
        }
        let here = *text.get(pos)?;
        let joins = (here == b' ' || here == b'-') && digit(text, pos + 1).is_some();
        if !joins || sep.is_some_and(|p| p != here) {
            return None;
        }
        sep = Some(here);
        pos += 1;
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The number formed by the first `k` digits.
fn prefix(digits: &[u8], k: usize) -> u32 {
    digits
        .iter()
        .take(k)
        .fold(0, |acc, &d| acc * 10 + u32::from(d))
}

/// Issuer ranges (IIN) and the lengths their cards have.
fn card_valid(d: &[u8]) -> bool {
    let n = d.len();
    let p2 = prefix(d, 2);
    let p3 = prefix(d, 3);
    let p4 = prefix(d, 4);
    let issuer = match d.first() {
        // Visa
        Some(4) => matches!(n, 13 | 16 | 19),
        Some(2) => {
            // Mastercard 2-series; Mir
            ((2221..=2720).contains(&p4) && n == 16) || ((2200..=2204).contains(&p4) && n >= 16)
        }
        Some(3) => {
            // American Express; JCB; Diners Club
            ((p2 == 34 || p2 == 37) && n == 15)
                || ((3528..=3589).contains(&p4) && n >= 16)
                || ((p2 == 36 || p2 == 38 || p2 == 39 || (300..=305).contains(&p3) || p4 == 3095)
                    && n >= 14)
        }
        Some(5) => {
            // Mastercard; Maestro
            ((51..=55).contains(&p2) && n == 16)
                || (matches!(p4, 5018 | 5020 | 5038 | 5893) && n >= 13)
        }
        Some(6) => {
            // Discover, UnionPay; Maestro
            ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62) && n >= 16)
                || (matches!(p4, 6304 | 6759 | 6761 | 6762 | 6763) && n >= 13)
        }
        _ => false,
    };
    issuer && luhn(d)
}

// ---- IBAN ----

/// IBAN lengths by country, from the SWIFT IBAN registry.
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20), (b"BE", 16),
    (b"BG", 22), (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28), (b"CH", 21), (b"CR", 22),
    (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DJ", 27), (b"DK", 18), (b"DO", 28), (b"EE", 20),
    (b"EG", 29), (b"ES", 24), (b"FI", 18), (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22),
    (b"GE", 22), (b"GI", 23), (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HN", 28), (b"HR", 21),
    (b"HU", 28), (b"IE", 22), (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30),
    (b"KW", 30), (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20), (b"LU", 20),
    (b"LV", 21), (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22), (b"MK", 19), (b"MN", 20),
    (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NI", 28), (b"NL", 18), (b"NO", 15), (b"OM", 23),
    (b"PK", 24), (b"PL", 28), (b"PS", 29), (b"PT", 25), (b"QA", 29), (b"RO", 24), (b"RS", 22),
    (b"RU", 33), (b"SA", 24), (b"SC", 31), (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24),
    (b"SM", 27), (b"SO", 23), (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24), (b"TR", 26),
    (b"UA", 29), (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
];

const IBAN_MAX: usize = 34;

/// [`IBAN_LENGTHS`] indexed by `(first letter - 'A') * 26 + (second - 'A')`; 0 for no IBAN.
const IBAN_TABLE: [u8; 26 * 26] = {
    let mut t = [0u8; 26 * 26];
    let mut i = 0;
    while i < IBAN_LENGTHS.len() {
        let (cc, len) = IBAN_LENGTHS[i];
        t[(cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize] = len as u8;
        i += 1;
    }
    t
};

/// The IBAN length of the country `cc` (upper case letters).
fn iban_length(cc: [u8; 2]) -> Option<usize> {
    let [a, b] = cc;
    if !a.is_ascii_uppercase() || !b.is_ascii_uppercase() {
        return None;
    }
    let len = *IBAN_TABLE.get(usize::from(a - b'A') * 26 + usize::from(b - b'A'))?;
    (len > 0).then_some(usize::from(len))
}

/// ISO 7064 MOD 97-10 over the IBAN with its first four characters moved to the end and
/// letters read as 10..35.
fn iban_mod97(iban: &[u8]) -> u32 {
    let (head, rest) = iban.split_at(4.min(iban.len()));
    rest.iter().chain(head).fold(0u32, |r, &c| {
        if c.is_ascii_digit() {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c - b'A') + 10) % 97
        }
    })
}

fn iban_at(text: &[u8], start: usize) -> Option<String> {
    // Most words are not IBANs: reject on the check digits before anything else.
    digit(text, start + 2)?;
    digit(text, start + 3)?;
    let country = [
        text.get(start)?.to_ascii_uppercase(),
        text.get(start + 1)?.to_ascii_uppercase(),
    ];
    let len = iban_length(country)?;
    let mut chars = [0u8; IBAN_MAX];
    let mut count = 0;
    let mut pos = start;
    // Paper form: decided by the character after the first four.
    let mut paper = None;
    while count < len {
        if count > 0 && count % 4 == 0 {
            let spaced = text.get(pos) == Some(&b' ');
            if *paper.get_or_insert(spaced) != spaced {
                return None;
            }
            if spaced {
                pos += 1;
            }
        }
        let ch = text.get(pos)?.to_ascii_uppercase();
        let ok = match count {
            0 | 1 => ch.is_ascii_uppercase(),
            2 | 3 => ch.is_ascii_digit(),
            _ => ch.is_ascii_alphanumeric(),
        };
        if !ok {
            return None;
        }
        *chars.get_mut(count)? = ch;
        count += 1;
        pos += 1;
    }
    if alnum_at(text, pos) {
        return None;
    }
    let iban = chars.get(..len)?;
    let check = digit(iban, 2)? * 10 + digit(iban, 3)?;
    ((2..=98).contains(&check) && iban_mod97(iban) == 1).then(|| redact_grouped(iban))
}

// ---- US social security numbers ----

fn ssn_at(b: &[u8], i: usize) -> Option<String> {
    // A dash-joined longer number (a phone number, a part number) is not an SSN.
    if i >= 2 && b.get(i - 1) == Some(&b'-') && digit(b, i - 2).is_some() {
        return None;
    }
    let mut d = [0u8; 9];
    let sep = *b.get(i + 3)?;
    if sep != b'-' && sep != b' ' {
        return None;
    }
    let layout = [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 4),
        (4, 5),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
    ];
    for (k, off) in layout {
        *d.get_mut(k)? = digit(b, i + off)?;
    }
    if b.get(i + 6) != Some(&sep) {
        return None;
    }
    let end = i + 11;
    if alnum_at(b, end) || (b.get(end) == Some(&b'-') && digit(b, end + 1).is_some()) {
        return None;
    }
    let area = prefix(&d, 3);
    let group = prefix(d.get(3..)?, 2);
    let serial = prefix(d.get(5..)?, 4);
    let voided = matches!((area, group, serial), (78, 5, 1120) | (219, 9, 9999));
    let valid = area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !voided;
    valid.then(|| format!("***-**-{serial:04}"))
}

// ---- UK national insurance numbers ----

fn nino_prefix_valid(a: u8, b: u8) -> bool {
    let first_ok = !matches!(a, b'D' | b'F' | b'I' | b'Q' | b'U' | b'V');
    let second_ok = !matches!(b, b'D' | b'F' | b'I' | b'O' | b'Q' | b'U' | b'V');
    let unallocated = matches!(
        &[a, b],
        b"BG" | b"GB" | b"KN" | b"NK" | b"NT" | b"TN" | b"ZZ"
    );
    first_ok && second_ok && !unallocated
}

fn nino_at(text: &[u8], start: usize) -> Option<String> {
    // Most words are not NINOs: reject on the first digit before anything else.
    if digit(text, start + 2).is_none() && digit(text, start + 3).is_none() {
        return None;
    }
    let first = text.get(start)?.to_ascii_uppercase();
    let second = text.get(start + 1)?.to_ascii_uppercase();
    if !first.is_ascii_uppercase()
        || !second.is_ascii_uppercase()
        || !nino_prefix_valid(first, second)
    {
        return None;
    }
    let mut pos = start + 2;
    let skip_space = |pos: &mut usize| {
        if text.get(*pos) == Some(&b' ') {
            *pos += 1;
        }
    };
    for _ in 0..3 {
        skip_space(&mut pos);
        digit(text, pos)?;
        digit(text, pos + 1)?;
        pos += 2;
    }
    skip_space(&mut pos);
    let suffix = text.get(pos)?.to_ascii_uppercase();
    if !(b'A'..=b'D').contains(&suffix) || alnum_at(text, pos + 1) {
        return None;
    }
    let mut out = String::with_capacity(13);
    let _ = write!(
        out,
        "{}{} ** ** ** {}",
        first as char, second as char, suffix as char
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(kind: PatternKind, text: &str) -> Option<String> {
        let mut set = KindSet::default();
        set.insert(kind);
        let mut found = Found::default();
        scan(text, set, &mut found);
        found[kind.index()]
            .take()
            .map(|r| r.trim_start_matches(kind.name()).trim_start().to_string())
    }

    /// The scan without the digit skip: tries every word start.
    fn scan_every_word(text: &str, wanted: KindSet) -> Found {
        let b = text.as_bytes();
        let mut found = Found::default();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            if c.is_ascii_alphanumeric() && (i == 0 || !alnum_at(b, i - 1)) {
                let tries: [(PatternKind, Validator); 4] = [
                    (PatternKind::PaymentCard, card_at),
                    (PatternKind::UsSsn, ssn_at),
                    (PatternKind::Iban, iban_at),
                    (PatternKind::UkNino, nino_at),
                ];
                for (k, at) in tries {
                    if wanted.contains(k) && found[k.index()].is_none() {
                        if let Some(r) = at(b, i) {
                            found[k.index()] = Some(format!("{} {r}", k.name()));
                        }
                    }
                }
            }
            i += 1;
        }
        found
    }

    proptest::proptest! {
        #[test]
        fn find_digit_is_the_first_ascii_digit(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            from in 0usize..90,
        ) {
            let naive = b.iter().enumerate().skip(from).find(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i);
            proptest::prop_assert_eq!(find_digit(&b, from), naive);
        }

        #[test]
        fn the_digit_skip_finds_what_every_word_finds(
            text in "([A-Za-z]{1,6}|[0-9]{1,5}|DE89 3704 0044 0532 0130 00|4111 1111 1111 1111|123-45-6789|AB 12 34 56 C|[ -./é])*",
        ) {
            let mut all = KindSet::default();
            for k in PatternKind::ALL {
                all.insert(k);
            }
            let mut found = Found::default();
            scan(&text, all, &mut found);
            proptest::prop_assert_eq!(found, scan_every_word(&text, all));
        }
    }

    #[test]
    fn names_round_trip() {
        for k in PatternKind::ALL {
            assert_eq!(PatternKind::from_name(k.name()), Some(k));
        }
        assert_eq!(PatternKind::from_name("visa"), None);
    }

    #[test]
    fn luhn_on_known_numbers() {
        let digits = |s: &str| s.bytes().map(|c| c - b'0').collect::<Vec<_>>();
        assert!(luhn(&digits("4111111111111111")));
        assert!(luhn(&digits("79927398713")));
        assert!(!luhn(&digits("4111111111111112")));
        assert!(!luhn(&digits("79927398710")));
    }

    #[test]
    fn standard_test_cards_are_found_and_redacted() {
        let cases = [
            ("4111 1111 1111 1111", "payment_card 4111 **** **** 1111"),
            ("4111-1111-1111-1111", "payment_card 4111 **** **** 1111"),
            ("4111111111111111", "payment_card 4111 **** **** 1111"),
            ("4222222222222", "payment_card 4222 **** *222 2"),
            ("5555 5555 5555 4444", "payment_card 5555 **** **** 4444"),
            ("2223003122003222", "payment_card 2223 **** **** 3222"),
            ("3782 822463 10005", "payment_card 3782 **** ***0 005"),
            ("371449635398431", "payment_card 3714 **** ***8 431"),
            ("6011 1111 1111 1117", "payment_card 6011 **** **** 1117"),
            ("30569309025904", "payment_card 3056 **** **59 04"),
            ("3530111333300000", "payment_card 3530 **** **** 0000"),
            ("6200000000000005", "payment_card 6200 **** **** 0005"),
        ];
        for (number, want) in cases {
            let text = format!("my card is {number}, thanks");
            let got = find(PatternKind::PaymentCard, &text);
            assert_eq!(
                got.as_deref(),
                Some(want.trim_start_matches("payment_card ")),
                "{number}"
            );
            assert!(
                !got.unwrap_or_default().contains(&number[4..12]),
                "{number} not redacted"
            );
        }
    }

    #[test]
    fn ordinary_numbers_are_not_cards() {
        for text in [
            "4111 1111 1111 1112",        // Luhn fails
            "1234 5678 9012 3456",        // no issuer starts with 1
            "9999 9999 9999 9995",        // no issuer starts with 9; Luhn-valid
            "5555555555554444x",          // glued to a letter
            "x4111111111111111",          // glued to a letter
            "4111 1111-1111 1111",        // mixed separators
            "4111  1111  1111  1111",     // double spaces
            "378282246310006",            // Amex test number, last digit changed
            "41111111111111111111111111", // too long
            "order 20240101123456 shipped",
            "call +1 555 123 4567 or 0800 123 456",
            "3.14159265358979323846",
        ] {
            assert_eq!(find(PatternKind::PaymentCard, text), None, "{text}");
        }
    }

    #[test]
    fn cards_next_to_other_numbers() {
        // An expiry date after the number does not hide it.
        assert!(find(PatternKind::PaymentCard, "4111111111111111 12 25").is_some());
        assert!(find(
            PatternKind::PaymentCard,
            "ref 12 4111 1111 1111 1111 exp 12/25"
        )
        .is_some());
        assert!(find(PatternKind::PaymentCard, "é4111 1111 1111 1111é").is_some());
    }

    #[test]
    fn published_ibans_are_found_and_redacted() {
        let cases = [
            (
                "GB82 WEST 1234 5698 7654 32",
                "iban GB82 **** **** **** **54 32",
            ),
            ("GB82WEST12345698765432", "iban GB82 **** **** **** **54 32"),
            (
                "gb82 west 1234 5698 7654 32",
                "iban GB82 **** **** **** **54 32",
            ),
            (
                "DE89 3704 0044 0532 0130 00",
                "iban DE89 **** **** **** **30 00",
            ),
            ("NO93 8601 1117 947", "iban NO93 **** ***7 947"),
            (
                "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
                "iban MT84 **** **** **** **** **** ***0 01S",
            ),
            (
                "FR1420041010050500013M02606",
                "iban FR14 **** **** **** **** ***2 606",
            ),
        ];
        for (iban, want) in cases {
            let got = find(PatternKind::Iban, &format!("pay to {iban}. Thanks"));
            assert_eq!(
                got.as_deref(),
                Some(want.trim_start_matches("iban ")),
                "{iban}"
            );
        }
    }

    #[test]
    fn invalid_ibans_are_not_found() {
        for text in [
            "GB83 WEST 1234 5698 7654 32", // check digits off by one
            "GB82 WEST 1234 5698 7654 33", // one digit changed
            "GB82 WEST 1234 5698 7654 3",  // too short for GB
            "GB82WEST123456987654321",     // too long for GB (glued)
            "XX82 WEST 1234 5698 7654 32", // no such country
            "GB82 WEST12345698765432",     // paper form broken off
            "GB82 WE5T 1234 5698 7654 32", // fails MOD 97
            "the GBP price is 82",
        ] {
            assert_eq!(find(PatternKind::Iban, text), None, "{text}");
        }
    }

    #[test]
    fn iban_check_digits_outside_2_to_98_are_refused() {
        // 00 and 97 are congruent modulo 97: "GB00..." can pass MOD 97 when "GB97..." does,
        // yet 00 is never issued. Build such a pair and check only 97 is accepted.
        let mut bban = *b"WEST12345698765400";
        let mut candidate = None;
        'search: for a in b'0'..=b'9' {
            for c in b'0'..=b'9' {
                bban[16] = a;
                bban[17] = c;
                let mut v = b"GB97".to_vec();
                v.extend_from_slice(&bban);
                if iban_mod97(&v) == 1 {
                    candidate = Some(bban);
                    break 'search;
                }
            }
        }
        let bban = std::str::from_utf8(&candidate.unwrap())
            .unwrap()
            .to_string();
        assert!(find(PatternKind::Iban, &format!("GB97{bban}")).is_some());
        assert_eq!(find(PatternKind::Iban, &format!("GB00{bban}")), None);
    }

    #[test]
    fn ssns_valid_and_invalid() {
        assert_eq!(
            find(PatternKind::UsSsn, "ssn 123-45-6789.").as_deref(),
            Some("***-**-6789")
        );
        assert_eq!(
            find(PatternKind::UsSsn, "ssn 536 22 1234").as_deref(),
            Some("***-**-1234")
        );
        for text in [
            "000-12-3456",   // area 000
            "666-12-3456",   // area 666
            "900-12-3456",   // area 9xx
            "987-65-4321",   // advertising range
            "123-00-4567",   // group 00
            "123-45-0000",   // serial 0000
            "078-05-1120",   // voided (Woolworth wallet card)
            "219-09-9999",   // voided (Social Security Board pamphlet)
            "123456789",     // no separators
            "123-45 6789",   // mixed separators
            "1-123-45-6789", // part of a longer dash-joined number
            "123-45-6789-0", // part of a longer dash-joined number
            "x123-45-6789",  // glued to a letter
            "123-45-67890",  // too long
        ] {
            assert_eq!(find(PatternKind::UsSsn, text), None, "{text}");
        }
    }

    #[test]
    fn ninos_valid_and_invalid() {
        assert_eq!(
            find(PatternKind::UkNino, "NI AB123456C ok").as_deref(),
            Some("AB ** ** ** C")
        );
        assert_eq!(
            find(PatternKind::UkNino, "NI: ab 12 34 56 d").as_deref(),
            Some("AB ** ** ** D")
        );
        assert_eq!(
            find(PatternKind::UkNino, "JG103759A").as_deref(),
            Some("JG ** ** ** A")
        );
        for text in [
            "QQ123456C",  // Q is not a first letter: the HMRC specimen number
            "DA123456A",  // D first
            "AO123456A",  // O second
            "GB123456A",  // unallocated prefix
            "TN123456A",  // unallocated prefix
            "ZZ123456A",  // unallocated prefix
            "AB123456E",  // suffix past D
            "AB12345C",   // five digits
            "AB1234567C", // seven digits
            "AB123456CX", // glued
            "XAB123456C", // glued
        ] {
            assert_eq!(find(PatternKind::UkNino, text), None, "{text}");
        }
    }

    #[test]
    fn scan_reports_the_first_of_each_wanted_kind_only() {
        let mut set = KindSet::default();
        set.insert(PatternKind::PaymentCard);
        set.insert(PatternKind::UkNino);
        let mut found = Found::default();
        scan(
            "GB82 WEST 1234 5698 7654 32 5555555555554444 4111111111111111 AB123456C",
            set,
            &mut found,
        );
        assert_eq!(
            found[PatternKind::PaymentCard.index()].as_deref(),
            Some("payment_card 5555 **** **** 4444")
        );
        assert_eq!(
            found[PatternKind::UkNino.index()].as_deref(),
            Some("uk_nino AB ** ** ** C")
        );
        assert_eq!(found[PatternKind::Iban.index()], None);
    }
}
