//! The content policy: the rules of the policy file's `content:` section, compiled once, and
//! applied to every [`Message`] of a monitored flow.
//!
//! # Rules
//! Each rule has a unique name, an action (`log`, `block`, `allow`) and exactly one kind of
//! matcher (see [`model`] for the YAML):
//! - `keywords`: phrases, case-insensitive (Unicode lowercase, see [`keywords`]), searched in
//!   the body and in each attachment's name; `whole_word: true` refuses a phrase that a letter,
//!   digit or `_` touches;
//! - `patterns`: data validators ([`patterns::PatternKind`]) over the body and the attachment
//!   names; reasons show the value redacted;
//! - `urls`: domains (with their subdomains), host suffixes and `host/path` prefixes, over the
//!   URLs in the body and the attachments' URLs, normalised as in [`urls`];
//! - `files`: extensions and/or `larger_than` over the attachments (see [`files`]).
//!
//! # Decision
//! Every matching rule is reported once, in policy order, with a reason; the decision's action
//! is the strongest of theirs (`block` > `log` > `allow`), `allow` when none matched.
//!
//! An `allow` rule is an exemption for the items it matches, against the rules of its own
//! kind only: a URL an allow URL rule matches is not checked against log and block URL rules
//! (other URLs of the message still are); likewise an attachment for file rules, a detected
//! value's kind for pattern rules, and for keywords, an occurrence of a log or block phrase
//! that lies inside an occurrence of an allow phrase ("falcon" blocked, "falcon heavy launch"
//! allowed). An allow rule never exempts anything from rules of another kind: an allowed
//! domain does not excuse a card number in the same message. Matching allow rules are
//! reported too, with action `allow`.
//!
//! # Cost
//! The body is read by at most three linear passes (the keyword automaton, the pattern
//! scanner, the URL anchor automaton), each skipped when no rule needs it. An ASCII body is
//! not copied; a non-ASCII body is folded once into a scratch buffer when there are keyword
//! rules. Allocations happen per match (reasons) and per URL found, not per byte.

pub mod files;
pub mod keywords;
pub mod model;
pub mod patterns;
pub mod urls;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, fmt};

pub use model::{ContentConfig, ContentError, FilesConfig, RuleConfig, RuleRef, UrlsConfig};

use crate::message::{Action, Decision, Message, RuleMatch};
use files::FileRules;
use keywords::{KeywordRule, Keywords, KeywordsBuilder, Place};
use patterns::{KindSet, PatternKind};
use urls::UrlRules;

/// Characters of a name or URL shown in a reason; longer ones end with `…`.
const SHOWN_CHARS: usize = 200;

/// `s` for a reason: at most [`SHOWN_CHARS`] characters, control characters escaped so that a
/// reason stays on one line.
fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(SHOWN_CHARS + 8));
    for (i, c) in s.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The rules that matched so far, each once, with its reason.
struct Hits {
    found: Vec<(usize, String)>,
    /// Bit `i` set: rule `i` is in `found` (rules past 255 are looked up in `found`).
    seen: [u64; 4],
}

impl Hits {
    fn new() -> Hits {
        Hits {
            found: Vec::new(),
            seen: [0; 4],
        }
    }

    fn has(&self, rule: usize) -> bool {
        match self.seen.get(rule / 64) {
            Some(w) => w & (1 << (rule % 64)) != 0,
            None => self.found.iter().any(|(r, _)| *r == rule),
        }
    }

    /// Records `rule` with the reason `why` builds, unless already recorded; true if new.
    fn record(&mut self, rule: usize, why: impl FnOnce() -> String) -> bool {
        if self.has(rule) {
            return false;
        }
        if let Some(w) = self.seen.get_mut(rule / 64) {
            *w |= 1 << (rule % 64);
        }
        self.found.push((rule, why()));
        true
    }

    /// Records the rules one item (a URL, an attachment) matched: only the `allow` ones when
    /// there is any, as an allow rule exempts the item from the others of its kind.
    fn record_item(&mut self, candidates: &mut Vec<(usize, String)>, rules: &[Rule]) {
        let is_allow = |r: usize| rules.get(r).is_some_and(|r| r.action == Action::Allow);
        let allowed = candidates.iter().any(|(r, _)| is_allow(*r));
        for (rule, why) in candidates.drain(..) {
            if !allowed || is_allow(rule) {
                self.record(rule, || why);
            }
        }
    }
}

struct Rule {
    name: String,
    action: Action,
}

/// Pattern rules by kind.
#[derive(Default)]
struct PatternRules {
    wanted: KindSet,
    deny: [Vec<usize>; 4],
    allow: [Vec<usize>; 4],
}

/// A compiled content policy; build it with [`ContentPolicy::compile`], share it (it is
/// `Send + Sync`), and call [`ContentPolicy::evaluate`] for each message.
#[derive(Default)]
pub struct ContentPolicy {
    rules: Vec<Rule>,
    keywords: Keywords,
    patterns: PatternRules,
    urls: UrlRules,
    files: FileRules,
}

impl fmt::Debug for ContentPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentPolicy")
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| (&r.name, r.action))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ContentPolicy {
    /// Validates and compiles the `content:` section. The first error found is returned; it
    /// names the rule (index and name) and the field.
    pub fn compile(cfg: &ContentConfig) -> Result<ContentPolicy, ContentError> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(cfg.rules.len());
        let mut keywords = KeywordsBuilder::default();
        let mut urls = UrlRules::default();
        let mut files = FileRules::default();
        let mut patterns = PatternRules::default();
        for (index, r) in cfg.rules.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(ContentError::EmptyName { index });
            }
            let rule = RuleRef {
                index,
                name: r.name.clone(),
            };
            if let Some(first) = names.get(r.name.as_str()) {
                return Err(ContentError::DuplicateName {
                    rule,
                    first: *first,
                });
            }
            names.insert(&r.name, index);
            let kinds: Vec<&str> = [
                ("keywords", r.keywords.is_some()),
                ("patterns", r.patterns.is_some()),
                ("urls", r.urls.is_some()),
                ("files", r.files.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, present)| present.then_some(k))
            .collect();
            match kinds.len() {
                0 => return Err(ContentError::NoMatcher { rule }),
                1 => {}
                _ => {
                    return Err(ContentError::SeveralMatchers {
                        rule,
                        kinds: kinds.join(", "),
                    })
                }
            }
            if r.whole_word.is_some() && r.keywords.is_none() {
                return Err(ContentError::WholeWordWithoutKeywords { rule });
            }
            let allow = r.action == Action::Allow;
            if let Some(phrases) = &r.keywords {
                let whole_word = r.whole_word.unwrap_or(false);
                keywords.add(
                    &rule,
                    &KeywordRule {
                        index,
                        allow,
                        whole_word,
                        phrases,
                    },
                )?;
            } else if let Some(list) = &r.patterns {
                if list.is_empty() {
                    return Err(ContentError::EmptyList {
                        rule,
                        field: "patterns",
                    });
                }
                for (position, p) in list.iter().enumerate() {
                    let Some(k) = PatternKind::from_name(p.trim()) else {
                        let known = PatternKind::ALL.map(PatternKind::name).join(", ");
                        return Err(ContentError::UnknownPattern {
                            rule,
                            position,
                            pattern: p.clone(),
                            known,
                        });
                    };
                    patterns.wanted.insert(k);
                    let by_kind = if allow {
                        &mut patterns.allow
                    } else {
                        &mut patterns.deny
                    };
                    if let Some(v) = by_kind.get_mut(k.index()).filter(|v| !v.contains(&index)) {
                        v.push(index);
                    }
                }
            } else if let Some(cfg) = &r.urls {
                urls.add(&rule, index, cfg)?;
            } else if let Some(cfg) = &r.files {
                files.add(&rule, index, cfg)?;
            }
            rules.push(Rule {
                name: r.name.clone(),
                action: r.action,
            });
        }
        Ok(ContentPolicy {
            rules,
            keywords: keywords.build()?,
            patterns,
            urls,
            files,
        })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the policy to one message.
    pub fn evaluate(&self, msg: &Message) -> Decision {
        if self.rules.is_empty() {
            return Decision::allow();
        }
        let mut hits = Hits::new();
        let mut scratch = String::new();
        let mut candidates = Vec::new();
        self.keywords
            .scan(&msg.body, Place::Body, &mut scratch, &mut hits);
        self.scan_patterns(&msg.body, "", &mut hits);
        self.scan_urls(&msg.body, &mut candidates, &mut hits);
        for att in &msg.attachments {
            if !att.name.is_empty() {
                self.keywords.scan(
                    &att.name,
                    Place::FileName(&att.name),
                    &mut scratch,
                    &mut hits,
                );
                self.scan_patterns(&att.name, " in a file name", &mut hits);
            }
            if let Some(u) = &att.url {
                self.scan_urls(u, &mut candidates, &mut hits);
            }
            self.files.matching(att, &mut candidates);
            hits.record_item(&mut candidates, &self.rules);
        }
        self.decision(hits)
    }

    fn scan_patterns(&self, text: &str, place: &str, hits: &mut Hits) {
        let p = &self.patterns;
        if p.wanted.is_empty() {
            return;
        }
        let mut found = patterns::Found::default();
        patterns::scan(text, p.wanted, &mut found);
        for k in PatternKind::ALL {
            let Some(value) = found.get(k.index()).and_then(Option::as_ref) else {
                continue;
            };
            let allow = p.allow.get(k.index()).map_or(&[][..], Vec::as_slice);
            let deny = p.deny.get(k.index()).map_or(&[][..], Vec::as_slice);
            // A kind an allow rule lists is exempt from the log and block pattern rules.
            let list = if allow.is_empty() { deny } else { allow };
            for &rule in list {
                hits.record(rule, || format!("{value}{place}"));
            }
        }
    }

    fn scan_urls(&self, text: &str, candidates: &mut Vec<(usize, String)>, hits: &mut Hits) {
        if self.urls.is_empty() {
            return;
        }
        self.urls.each_url(text, |u| {
            self.urls.matching(u, candidates);
            hits.record_item(candidates, &self.rules);
            true
        });
    }

    fn decision(&self, hits: Hits) -> Decision {
        let mut found = hits.found;
        found.sort_unstable_by_key(|(r, _)| *r);
        let matches: Vec<RuleMatch> = found
            .into_iter()
            .filter_map(|(r, reason)| {
                let rule = self.rules.get(r)?;
                Some(RuleMatch {
                    rule: rule.name.clone(),
                    action: rule.action,
                    reason,
                })
            })
            .collect();
        let action = matches
            .iter()
            .map(|m| m.action)
            .max()
            .unwrap_or(Action::Allow);
        Decision { action, matches }
    }
}
