//! The `content:` section of the policy file, as serde reads it, and the errors of its
//! compilation.
//!
//! Values are kept as written (strings) and checked by [`super::ContentPolicy::compile`], so
//! that every error names the rule (index and name) and the field it comes from.

use std::fmt;

use serde::{
    de::{self, Visitor},
    Deserialize, Deserializer,
};

use crate::message::Action;

/// The `content:` section: an ordered list of rules.
///
/// ```yaml
/// content:
///   rules:
///     - name: confidential-words
///       action: block
///       keywords: ["project falcon", "internal only"]
///       whole_word: true
///     - name: card-numbers
///       action: block
///       patterns: [payment_card, iban]
///     - name: phishing
///       action: block
///       urls: {domains: [evil.example], suffixes: [".zip"], path_prefixes: ["example.com/login"]}
///     - name: large-executables
///       action: log
///       files: {extensions: [exe, scr, "tar.gz"], larger_than: 10MiB}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a content policy: a mapping with `rules`"
)]
pub struct ContentConfig {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One rule: a name, an action and exactly one kind of matcher (`keywords`, `patterns`,
/// `urls` or `files`). One kind per rule keeps the meaning obvious: a rule matches when its
/// matcher matches, and "either of two things" is written as two rules.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a content rule: a mapping with name, action and one of keywords, patterns, urls, files"
)]
pub struct RuleConfig {
    /// Unique among the rules; reported in every match.
    pub name: String,
    /// `log`, `block`, or `allow` (an exemption, see the module documentation).
    pub action: Action,
    /// Phrases searched case-insensitively in the text and in attachment names.
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    /// With `keywords`: a phrase matches only when no letter, digit or `_` touches it.
    #[serde(default)]
    pub whole_word: Option<bool>,
    /// Names of data validators: `payment_card`, `iban`, `us_ssn`, `uk_nino`.
    #[serde(default)]
    pub patterns: Option<Vec<String>>,
    #[serde(default)]
    pub urls: Option<UrlsConfig>,
    #[serde(default)]
    pub files: Option<FilesConfig>,
}

/// URL matchers; a URL matches when any of them does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "URL matchers: a mapping with domains, suffixes and/or path_prefixes"
)]
pub struct UrlsConfig {
    /// A domain matches itself and its subdomains (`evil.example`, `a.evil.example`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// A string suffix of the host (`.zip`, `xn--80ak6aa92e.com`).
    #[serde(default)]
    pub suffixes: Vec<String>,
    /// `host/path`: the exact host and a prefix of the normalised path.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
}

/// File matchers. With both `extensions` and `larger_than`, a file must satisfy both (write
/// two rules for "either").
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "file matchers: a mapping with extensions, larger_than and/or match_unknown_size"
)]
pub struct FilesConfig {
    /// Case-insensitive, without the dot; multi-part extensions such as `tar.gz` work.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Strictly larger than this size: bytes, or a number with KB, MB, GB, TB (powers of
    /// 1000) or KiB, MiB, GiB, TiB (powers of 1024).
    #[serde(default)]
    pub larger_than: Option<SizeText>,
    /// Whether a file whose size the protocol does not state counts as larger than
    /// `larger_than`. Off by default: most URL-only offers (XEP-0066) carry no size, and
    /// treating them all as large would make a size rule match every link.
    #[serde(default)]
    pub match_unknown_size: bool,
}

/// A size as written in the policy: a YAML integer or a string such as `10MiB`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeText(pub String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SizeText, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as 10MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a size: `1048576`, `10MiB`, `10 MB`, `512KiB`. Units are case-insensitive; KB, MB,
/// GB, TB are powers of 1000, KiB, MiB, GiB, TiB powers of 1024. Whole numbers only.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(format!(
            "`{text}` is not a size: it must start with a whole number of bytes"
        ));
    }
    let unit = unit.trim_start();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size: unknown unit `{unit}`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{text}` is not a size: it does not fit in 64 bits"))
}

/// Where in the `content:` section an error is: `content.rules[2] (card-numbers)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub index: usize,
    pub name: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "content.rules[{}] ({})", self.index, self.name)
    }
}

/// Why a content policy was refused. Each variant names the rule and, where there is one,
/// the field and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("content.rules[{index}]: the rule has an empty name; every rule needs a unique name")]
    EmptyName { index: usize },
    #[error(
        "{rule}: the name is already used by content.rules[{first}]; rule names must be unique"
    )]
    DuplicateName { rule: RuleRef, first: usize },
    #[error("{rule}: the rule has no matcher; give one of keywords, patterns, urls, files")]
    NoMatcher { rule: RuleRef },
    #[error("{rule}: the rule has several kinds of matcher ({kinds}); give one per rule and write a rule for each")]
    SeveralMatchers { rule: RuleRef, kinds: String },
    #[error("{rule}: {field} is empty; list at least one entry or remove the field")]
    EmptyList { rule: RuleRef, field: &'static str },
    #[error("{rule}: {field}[{position}] is an empty string")]
    EmptyEntry {
        rule: RuleRef,
        field: &'static str,
        position: usize,
    },
    #[error("{rule}: whole_word applies to keywords only, and this rule has none")]
    WholeWordWithoutKeywords { rule: RuleRef },
    #[error("{rule}: patterns[{position}]: unknown pattern `{pattern}`; known patterns: {known}")]
    UnknownPattern {
        rule: RuleRef,
        position: usize,
        pattern: String,
        known: String,
    },
    #[error("{rule}: files.larger_than: {why}")]
    BadSize { rule: RuleRef, why: String },
    #[error("{rule}: {field}[{position}]: `{value}` is not valid: {why}")]
    BadUrlMatcher {
        rule: RuleRef,
        field: &'static str,
        position: usize,
        value: String,
        why: String,
    },
    #[error("{rule}: files.extensions[{position}]: `{value}` is not an extension: {why}")]
    BadExtension {
        rule: RuleRef,
        position: usize,
        value: String,
        why: String,
    },
    #[error("{rule}: files.match_unknown_size needs files.larger_than")]
    UnknownSizeWithoutSize { rule: RuleRef },
    #[error("content policy: the keyword automaton could not be built: {0}")]
    Automaton(String),
}

impl ContentError {
    /// Index of the rule the error is about (`content.rules[N]`), for locating it in the file.
    pub fn rule_index(&self) -> Option<usize> {
        match self {
            ContentError::EmptyName { index } => Some(*index),
            ContentError::DuplicateName { rule, .. }
            | ContentError::NoMatcher { rule }
            | ContentError::SeveralMatchers { rule, .. }
            | ContentError::EmptyList { rule, .. }
            | ContentError::EmptyEntry { rule, .. }
            | ContentError::WholeWordWithoutKeywords { rule }
            | ContentError::UnknownPattern { rule, .. }
            | ContentError::BadSize { rule, .. }
            | ContentError::BadUrlMatcher { rule, .. }
            | ContentError::BadExtension { rule, .. }
            | ContentError::UnknownSizeWithoutSize { rule } => Some(rule.index),
            ContentError::Automaton(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("10KiB"), Ok(10_240));
        assert_eq!(parse_size("10MiB"), Ok(10_485_760));
        assert_eq!(parse_size("10mib"), Ok(10_485_760));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_say_why() {
        let e = parse_size("10XB").unwrap_err();
        assert!(e.contains("unknown unit `XB`"), "{e}");
        let e = parse_size("MiB").unwrap_err();
        assert!(e.contains("must start with a whole number"), "{e}");
        let e = parse_size("1.5GB").unwrap_err();
        assert!(e.contains("unknown unit `.5GB`"), "{e}");
        let e = parse_size("-1").unwrap_err();
        assert!(e.contains("must start with a whole number"), "{e}");
        let e = parse_size("20000000TiB").unwrap_err();
        assert!(e.contains("does not fit in 64 bits"), "{e}");
        let e = parse_size("99999999999999999999").unwrap_err();
        assert!(e.contains("does not fit in 64 bits"), "{e}");
    }

    #[test]
    fn yaml_reads_the_documented_shape() {
        let yaml = r#"
rules:
  - name: words
    action: block
    keywords: ["project falcon"]
    whole_word: true
  - name: cards
    action: log
    patterns: [payment_card]
  - name: urls
    action: allow
    urls: {domains: [good.example]}
  - name: big
    action: block
    files: {extensions: [exe], larger_than: 10MiB, match_unknown_size: true}
  - name: plain-bytes
    action: log
    files: {larger_than: 1000}
"#;
        let c: ContentConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(c.rules.len(), 5);
        assert_eq!(c.rules[0].whole_word, Some(true));
        assert_eq!(c.rules[1].action, Action::Log);
        assert_eq!(c.rules[2].action, Action::Allow);
        let f = c.rules[3].files.as_ref().unwrap();
        assert_eq!(f.larger_than, Some(SizeText("10MiB".into())));
        assert!(f.match_unknown_size);
        assert_eq!(
            c.rules[4].files.as_ref().unwrap().larger_than,
            Some(SizeText("1000".into()))
        );
    }

    #[test]
    fn yaml_refuses_unknown_fields_and_actions() {
        let e = serde_yaml::from_str::<ContentConfig>(
            "rules: [{name: a, action: block, keyword: [x]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `keyword`"), "{e}");
        let e = serde_yaml::from_str::<ContentConfig>(
            "rules: [{name: a, action: drop, keywords: [x]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("drop"), "{e}");
        let e = serde_yaml::from_str::<ContentConfig>(
            "rules: [{name: a, action: log, urls: {domain: [x]}}]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `domain`"), "{e}");
        let e = serde_yaml::from_str::<ContentConfig>("rule: []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `rule`"), "{e}");
    }
}
