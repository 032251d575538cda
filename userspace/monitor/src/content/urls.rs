//! URL rules: URLs found in a text (`http://`, `https://`, bare `www.` hosts) or given as an
//! attachment's address are normalised the way a browser would read them (WHATWG URL
//! standard, "special" schemes) and matched by domain, host suffix or `host/path` prefix.
//!
//! Normalisation of a URL:
//! - scheme and host lowercased; `\` read as `/` (browsers do so for http and https);
//! - userinfo dropped: the host is after the last `@` of the authority, so
//!   `http://good.com@evil.example/` goes to `evil.example`;
//! - host percent-decoded, then IDNA (UTS 46) to its ASCII form, so `bücher.example` and
//!   `xn--bcher-kva.example` are one host; trailing dots removed; IPv4 and IPv6 literals in
//!   canonical form (other IPv4 spellings such as `0x7f.1` are not rewritten);
//! - default port (80, 443) dropped, another port kept for the display only (rules ignore
//!   ports);
//! - path: `%XX` of unreserved characters decoded, other escapes in upper case, non-ASCII
//!   bytes and spaces escaped (RFC 3986 section 6.2.2), runs of `/` collapsed (most servers
//!   do), `.` and `..` segments removed (RFC 3986 section 5.2.4); query and fragment dropped
//!   (neither is compared, and either may carry a token that the archive should not repeat).
//!
//! Path prefixes compare ASCII case-insensitively: many servers treat `/Login` as `/login`,
//! and a block rule should rather match too much than too little.
//!
//! Bounds: a URL is read up to [`MAX_URL_LEN`] bytes; past that it is cut (its host and the
//! start of its path are still compared). A URL found inside another (a redirect parameter)
//! ends the outer one where it starts, so every byte of a text is read once.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use idna::AsciiDenyList;

use super::{model::UrlsConfig, RuleRef};
use crate::content::model::ContentError;

/// Longest URL read, in bytes.
pub const MAX_URL_LEN: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A normalised URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// ASCII, lowercase, no trailing dot; IPv6 in brackets.
    pub host: String,
    /// A port other than the scheme's default.
    pub port: Option<u16>,
    /// Starts with `/`.
    pub path: String,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.name(), self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

fn hex(c: Option<&u8>) -> Option<u8> {
    let c = *c?;
    (c as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn push_escaped(out: &mut String, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(c >> 4)] as char);
    out.push(HEX[usize::from(c & 15)] as char);
}

/// Decodes every `%XX` (a host is compared decoded, as browsers resolve it).
fn percent_decode_all(s: &str) -> Cow<'_, [u8]> {
    let b = s.as_bytes();
    if !b.contains(&b'%') {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            if let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    Cow::Owned(out)
}

/// Normalises a path (see the module documentation). The result starts with `/`.
pub fn normalise_path(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut dec = String::with_capacity(raw.len() + 1);
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => dec.push('/'),
            b'%' => {
                if let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    let v = h * 16 + l;
                    if unreserved(v) {
                        dec.push(v as char);
                    } else {
                        push_escaped(&mut dec, v);
                    }
                    i += 3;
                    continue;
                }
                // A `%` not followed by two hex digits stays (WHATWG leaves it too).
                dec.push('%');
            }
            c if !(0x21..0x7f).contains(&c)
                || matches!(c, b'"' | b'<' | b'>' | b'`' | b'{' | b'}') =>
            {
                push_escaped(&mut dec, c);
            }
            c => dec.push(c as char),
        }
        i += 1;
    }
    let mut out = String::with_capacity(dec.len() + 1);
    let mut trailing = false;
    for seg in dec.split('/') {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
            }
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

/// Normalises a host as found in a URL; `None` when nothing is left.
fn normalise_host(raw: &str) -> Option<String> {
    let decoded = percent_decode_all(raw);
    let s = String::from_utf8_lossy(&decoded);
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        return Some(match inner.parse::<Ipv6Addr>() {
            Ok(a) => format!("[{a}]"),
            Err(_) => format!("[{}]", inner.to_ascii_lowercase()),
        });
    }
    let s = s.trim_end_matches('.');
    if s.is_empty() {
        return None;
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Some(a.to_string());
    }
    let host = match idna::domain_to_ascii_cow(s.as_bytes(), AsciiDenyList::URL) {
        Ok(h) => h.trim_end_matches('.').to_owned(),
        // Not a valid name (a forbidden character, a bad xn-- label): it cannot be resolved
        // either, but compare its lowercase form rather than nothing.
        Err(_) => s.to_lowercase(),
    };
    (!host.is_empty()).then_some(host)
}

/// Parses a URL that starts with `http:`, `https:` (followed by at least one `/` or `\`) or
/// `www.`; `None` for anything else or a URL without a host.
pub fn parse(token: &str) -> Option<Url> {
    let token = token.get(..floor_boundary(token, MAX_URL_LEN))?;
    let (scheme, rest) = if let Some(r) = strip_prefix_ci(token, "https:") {
        (Scheme::Https, r)
    } else if let Some(r) = strip_prefix_ci(token, "http:") {
        (Scheme::Http, r)
    } else if strip_prefix_ci(token, "www.").is_some() {
        (Scheme::Http, token)
    } else {
        return None;
    };
    let bare = rest.len() == token.len();
    // `http:evil.example` is a relative reference without a base in a chat message, and a
    // chat client would not link it: at least one slash is required.
    if !bare && !rest.starts_with(['/', '\\']) {
        return None;
    }
    let rest = rest.trim_start_matches(['/', '\\']);
    let auth_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    let hostport = auth
        .rfind('@')
        .and_then(|p| auth.get(p + 1..))
        .unwrap_or(auth);
    let (host, port) = if hostport.starts_with('[') {
        match hostport.find(']') {
            Some(p) => (
                hostport.get(..=p)?,
                hostport.get(p + 1..).and_then(|r| r.strip_prefix(':')),
            ),
            None => (hostport, None),
        }
    } else {
        match hostport.rfind(':') {
            Some(p) => (hostport.get(..p)?, hostport.get(p + 1..)),
            None => (hostport, None),
        }
    };
    let port = port
        .filter(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != scheme.default_port());
    let host = normalise_host(host)?;
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let path = normalise_path(tail.get(..path_end)?);
    Some(Url {
        scheme,
        host,
        port,
        path,
    })
}

/// The largest char boundary of `s` at or below `n`.
fn floor_boundary(s: &str, n: usize) -> usize {
    if n >= s.len() {
        return s.len();
    }
    (0..=n).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0)
}

/// Where URLs start in `b`, in order: at `https:`, `http:` (any case) and at a `www.` that does
/// not continue a word, a host (`a.www.x`) or a path (`//www.` after a scheme). The scan
/// stops only at `:` and `.`, rare in chat text, and looks back from there.
fn anchors(b: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let ends_with = |end: usize, word: &[u8]| {
        end.checked_sub(word.len())
            .and_then(|s| b.get(s..end))
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let mut after = 0;
    memchr::memchr2_iter(b':', b'.', b).filter_map(move |p| {
        let start = if b.get(p) == Some(&b':') {
            if ends_with(p, b"https") {
                p - 5
            } else if ends_with(p, b"http") {
                p - 4
            } else {
                return None;
            }
        } else if ends_with(p, b"www") {
            let s = p - 3;
            let continues = s > 0
                && b.get(s - 1).is_some_and(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, b'.' | b'-' | b'_' | b'/' | b'\\' | b'@')
                });
            if continues {
                return None;
            }
            s
        } else {
            return None;
        };
        // Anchors do not overlap: `www.` inside `https://www.` is refused above already.
        (start >= after).then(|| {
            after = p + 1;
            start
        })
    })
}

/// Where the URL that starts at `start` ends: at whitespace, a control character, `<`, `>`,
/// `"` or a backtick, at `limit`, or [`MAX_URL_LEN`] bytes on; then trailing punctuation that
/// ends a sentence (and a `)` or `]` that closes nothing in the URL) is left out.
fn token_end(text: &str, start: usize, limit: usize) -> usize {
    let limit = floor_boundary(text, limit.min(start.saturating_add(MAX_URL_LEN)));
    let Some(slice) = text.get(start..limit) else {
        return start;
    };
    let mut end = slice
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | '`'))
        .map_or(slice.len(), |(i, _)| i);
    let bytes = slice.as_bytes();
    let (po, mut pc, so, mut sc) =
        bytes
            .get(..end)
            .unwrap_or_default()
            .iter()
            .fold((0, 0, 0, 0), |n, c| match c {
                b'(' => (n.0 + 1, n.1, n.2, n.3),
                b')' => (n.0, n.1 + 1, n.2, n.3),
                b'[' => (n.0, n.1, n.2 + 1, n.3),
                b']' => (n.0, n.1, n.2, n.3 + 1),
                _ => n,
            });
    while let Some(&last) = bytes.get(end.wrapping_sub(1)).filter(|_| end > 0) {
        let drop = match last {
            b'.' | b',' | b';' | b':' | b'!' | b'?' | b'\'' | b'*' => true,
            b')' => pc > po,
            b']' => sc > so,
            _ => false,
        };
        if !drop {
            break;
        }
        match last {
            b')' => pc -= 1,
            b']' => sc -= 1,
            _ => {}
        }
        end -= 1;
    }
    start + end
}

/// Why a URL matched a rule.
enum Why<'u> {
    /// The listed domain: the host or one of its parent domains.
    Domain(&'u str),
    Suffix(usize),
    Prefix(usize),
}

struct Prefix {
    host: Box<str>,
    /// Normalised, ASCII-lowercase.
    path: Box<str>,
    written: Box<str>,
    rule: usize,
}

/// The URL rules of a policy, compiled.
#[derive(Default)]
pub struct UrlRules {
    /// Normalised domain -> the rules that list it (a domain also matches its subdomains).
    domains: HashMap<Box<str>, Vec<usize>>,
    suffixes: Vec<(Box<str>, usize)>,
    prefixes: Vec<Prefix>,
    /// There is at least one URL rule: texts are searched for URLs.
    any: bool,
}

/// Normalises a domain of a rule; the error says why it is not one.
pub fn rule_domain(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("*.") {
        return Err(format!(
            "a domain already matches its subdomains; write `{rest}`"
        ));
    }
    if let Ok(a) = t
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<Ipv6Addr>()
    {
        return Ok(format!("[{a}]"));
    }
    if let Some(c) = t
        .chars()
        .find(|c| matches!(c, '/' | '\\' | ':' | '@' | '?' | '#' | '%') || c.is_whitespace())
    {
        return Err(format!(
            "a domain has no scheme, port or path (found `{c}`); write only the host name"
        ));
    }
    if let Ok(a) = t.parse::<Ipv4Addr>() {
        return Ok(a.to_string());
    }
    let t = t.strip_suffix('.').unwrap_or(t);
    let ascii = idna::domain_to_ascii_cow(t.as_bytes(), AsciiDenyList::URL)
        .map_err(|_| "not a valid internationalised domain name (UTS 46)".to_string())?;
    check_labels(&ascii, false)?;
    Ok(ascii.into_owned())
}

/// Checks the labels of an ASCII name; with `partial`, the first label may be cut (a suffix).
fn check_labels(name: &str, partial: bool) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for (i, label) in name.split('.').enumerate() {
        if label.is_empty() && !(partial && i == 0) {
            return Err("it has an empty label (two dots in a row, or a dot at the start)".into());
        }
        if label.len() > 63 {
            return Err(format!("the label `{label}` is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("the character `{c}` is not allowed in a host name"));
        }
    }
    Ok(())
}

/// Normalises a host suffix of a rule. A suffix with non-ASCII characters is converted as
/// whole labels, so it should start at a label (with a dot, or be a whole name).
pub fn rule_suffix(text: &str) -> Result<String, String> {
    let t = text.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    let (dot, body) = match t.strip_prefix('.') {
        Some(b) => (".", b),
        None => ("", t),
    };
    if body.is_empty() {
        return Err("a suffix needs at least one character besides the dot".into());
    }
    if let Some(c) = body
        .chars()
        .find(|c| matches!(c, '/' | '\\' | ':' | '@' | '?' | '#' | '%') || c.is_whitespace())
    {
        return Err(format!("a suffix is part of a host name (found `{c}`)"));
    }
    let body = if body.is_ascii() {
        body.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_cow(body.as_bytes(), AsciiDenyList::URL)
            .map_err(|_| "not a valid internationalised domain name (UTS 46)".to_string())?
            .into_owned()
    };
    check_labels(&body, true)?;
    Ok(format!("{dot}{body}"))
}

/// Normalises a `host/path` prefix of a rule into host and lowercase path.
pub fn rule_prefix(text: &str) -> Result<(String, String), String> {
    let t = text.trim();
    let t = strip_prefix_ci(t, "https://")
        .or_else(|| strip_prefix_ci(t, "http://"))
        .unwrap_or(t);
    let Some(slash) = t.find(['/', '\\']) else {
        return Err("a path prefix is `host/path`, such as `example.com/login`; for a whole host use domains".into());
    };
    let (host, path) = t.split_at(slash);
    if path.contains(['?', '#']) {
        return Err(
            "queries and fragments are not compared; end the prefix before `?` or `#`".into(),
        );
    }
    let host = rule_domain(host).map_err(|e| format!("host `{host}`: {e}"))?;
    Ok((host, normalise_path(path).to_ascii_lowercase()))
}

impl UrlRules {
    /// Adds the matchers of the URL rule `index`.
    pub fn add(
        &mut self,
        rule: &RuleRef,
        index: usize,
        c: &UrlsConfig,
    ) -> Result<(), ContentError> {
        if c.domains.is_empty() && c.suffixes.is_empty() && c.path_prefixes.is_empty() {
            return Err(ContentError::EmptyList {
                rule: rule.clone(),
                field: "urls",
            });
        }
        let lists: [(&'static str, &Vec<String>); 3] = [
            ("urls.domains", &c.domains),
            ("urls.suffixes", &c.suffixes),
            ("urls.path_prefixes", &c.path_prefixes),
        ];
        for (field, list) in lists {
            for (position, value) in list.iter().enumerate() {
                if value.trim().is_empty() {
                    return Err(ContentError::EmptyEntry {
                        rule: rule.clone(),
                        field,
                        position,
                    });
                }
                let bad = |why: String| ContentError::BadUrlMatcher {
                    rule: rule.clone(),
                    field,
                    position,
                    value: value.clone(),
                    why,
                };
                match field {
                    "urls.domains" => {
                        let d = rule_domain(value).map_err(bad)?;
                        let rules = self.domains.entry(d.into()).or_default();
                        if !rules.contains(&index) {
                            rules.push(index);
                        }
                    }
                    "urls.suffixes" => self
                        .suffixes
                        .push((rule_suffix(value).map_err(bad)?.into(), index)),
                    _ => {
                        let (host, path) = rule_prefix(value).map_err(bad)?;
                        self.prefixes.push(Prefix {
                            host: host.into(),
                            path: path.into(),
                            written: value.trim().into(),
                            rule: index,
                        });
                    }
                }
            }
        }
        self.any = true;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        !self.any
    }

    /// Calls `f` with every URL in `text` until it returns false.
    pub fn each_url(&self, text: &str, mut f: impl FnMut(&Url) -> bool) {
        if !self.any {
            return;
        }
        let mut starts = anchors(text.as_bytes()).peekable();
        while let Some(start) = starts.next() {
            let limit = starts.peek().copied().unwrap_or(text.len());
            let end = token_end(text, start, limit);
            if let Some(url) = text.get(start..end).and_then(parse) {
                if !f(&url) {
                    return;
                }
            }
        }
    }

    /// Appends `(rule, reason)` for every rule `url` matches.
    pub fn matching(&self, url: &Url, out: &mut Vec<(usize, String)>) {
        let mut whys: Vec<(usize, Why)> = Vec::new();
        let host = url.host.as_str();
        let mut rest = host;
        loop {
            if let Some(rules) = self.domains.get(rest) {
                whys.extend(rules.iter().map(|r| (*r, Why::Domain(rest))));
            }
            match rest.split_once('.') {
                Some((_, r)) if !r.is_empty() => rest = r,
                _ => break,
            }
        }
        for (i, (suffix, rule)) in self.suffixes.iter().enumerate() {
            if host.ends_with(&**suffix) {
                whys.push((*rule, Why::Suffix(i)));
            }
        }
        for (i, p) in self.prefixes.iter().enumerate() {
            let path_ok = url
                .path
                .as_bytes()
                .get(..p.path.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p.path.as_bytes()));
            if *p.host == *host && path_ok {
                whys.push((p.rule, Why::Prefix(i)));
            }
        }
        // The URL as shown in a reason, made once for all the rules it matches.
        let mut shown_url: Option<String> = None;
        for (rule, why) in whys {
            if out.iter().any(|(r, _)| *r == rule) {
                continue;
            }
            let (what, item) = match why {
                Why::Domain(d) => ("in domain", d),
                Why::Suffix(i) => ("ends with", self.suffixes.get(i).map_or("", |s| &*s.0)),
                Why::Prefix(i) => (
                    "starts with",
                    self.prefixes.get(i).map_or("", |p| &*p.written),
                ),
            };
            let shown = shown_url.get_or_insert_with(|| super::shown(&url.to_string()));
            let mut reason = String::with_capacity(shown.len() + what.len() + item.len() + 10);
            for part in ["url `", shown.as_str(), "` ", what, " `", item, "`"] {
                reason.push_str(part);
            }
            out.push((rule, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The anchors as an Aho-Corasick automaton finds them (leftmost-first, case-insensitive),
    /// with the same refusal of a `www.` that continues something.
    fn anchors_model(text: &str) -> Vec<usize> {
        let ac = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .ascii_case_insensitive(true)
            .build(["https:", "http:", "www."])
            .unwrap();
        let b = text.as_bytes();
        ac.find_iter(text)
            .filter(|m| {
                m.pattern().as_usize() != 2
                    || m.start() == 0
                    || !b.get(m.start() - 1).is_some_and(|c| {
                        c.is_ascii_alphanumeric()
                            || matches!(c, b'.' | b'-' | b'_' | b'/' | b'\\' | b'@')
                    })
            })
            .map(|m| m.start())
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn anchors_are_found_as_the_automaton_finds_them(
            text in "(https?|HTTP|www|WwW|w|s|:|\\.|/|-|@|x|é| ){0,40}",
        ) {
            proptest::prop_assert_eq!(anchors(text.as_bytes()).collect::<Vec<_>>(), anchors_model(&text));
        }
    }

    fn norm(s: &str) -> String {
        parse(s).map_or_else(|| "-".into(), |u| u.to_string())
    }

    #[test]
    fn scheme_host_case_port_and_trailing_dot() {
        assert_eq!(norm("HTTP://Evil.Example/Path"), "http://evil.example/Path");
        assert_eq!(norm("https://evil.example:443/"), "https://evil.example/");
        assert_eq!(norm("http://evil.example:80"), "http://evil.example/");
        assert_eq!(norm("http://evil.example:0080/a"), "http://evil.example/a");
        assert_eq!(
            norm("http://evil.example:8080/a"),
            "http://evil.example:8080/a"
        );
        assert_eq!(
            norm("https://evil.example:80/a"),
            "https://evil.example:80/a"
        );
        assert_eq!(norm("http://evil.example./a"), "http://evil.example/a");
        assert_eq!(norm("http://evil.example..:81"), "http://evil.example:81/");
        assert_eq!(norm("www.Evil.Example/x"), "http://www.evil.example/x");
    }

    #[test]
    fn userinfo_is_dropped() {
        assert_eq!(
            norm("http://good.com@evil.example/"),
            "http://evil.example/"
        );
        assert_eq!(
            norm("http://user:pw@evil.example:8443/x"),
            "http://evil.example:8443/x"
        );
        assert_eq!(norm("http://a@b@evil.example/"), "http://evil.example/");
        // A backslash ends the authority: the `@` is in the path.
        assert_eq!(
            norm("http://evil.example\\@good.com/"),
            "http://evil.example/@good.com/"
        );
    }

    #[test]
    fn backslashes_read_as_slashes() {
        assert_eq!(
            norm("http:\\\\evil.example\\login\\x"),
            "http://evil.example/login/x"
        );
        assert_eq!(norm("https:/evil.example/a"), "https://evil.example/a");
        assert_eq!(norm("http:///evil.example/a"), "http://evil.example/a");
        assert_eq!(norm("http:evil.example"), "-");
        assert_eq!(norm("http://"), "-");
    }

    #[test]
    fn idna_both_ways() {
        assert_eq!(
            norm("http://bücher.example/"),
            "http://xn--bcher-kva.example/"
        );
        assert_eq!(
            norm("http://BÜCHER.example/"),
            "http://xn--bcher-kva.example/"
        );
        assert_eq!(
            norm("http://xn--bcher-kva.example/"),
            "http://xn--bcher-kva.example/"
        );
        assert_eq!(
            norm("http://пример.испытание/"),
            "http://xn--e1afmkfd.xn--80akhbyknj4f/"
        );
        // Ideographic full stop separates labels (UTS 46 maps it to a dot).
        assert_eq!(norm("http://evil\u{3002}example/"), "http://evil.example/");
    }

    #[test]
    fn percent_encoding_in_host_and_path() {
        assert_eq!(norm("http://%65vil.example/"), "http://evil.example/");
        assert_eq!(
            norm("http://b%C3%BCcher.example/"),
            "http://xn--bcher-kva.example/"
        );
        assert_eq!(
            norm("http://evil.example/%6c%6F%67in"),
            "http://evil.example/login"
        );
        assert_eq!(
            norm("http://evil.example/a%2fb%3f"),
            "http://evil.example/a%2Fb%3F"
        );
        assert_eq!(norm("http://evil.example/100%"), "http://evil.example/100%");
        assert_eq!(norm("http://evil.example/ü"), "http://evil.example/%C3%BC");
    }

    #[test]
    fn dot_segments_and_slash_runs() {
        assert_eq!(
            norm("http://e.example/a/../login"),
            "http://e.example/login"
        );
        assert_eq!(
            norm("http://e.example/a/%2e%2E/login"),
            "http://e.example/login"
        );
        assert_eq!(norm("http://e.example/./a/./b/"), "http://e.example/a/b/");
        assert_eq!(norm("http://e.example/../../x"), "http://e.example/x");
        assert_eq!(norm("http://e.example//login"), "http://e.example/login");
        assert_eq!(norm("http://e.example/a/.."), "http://e.example/");
        assert_eq!(norm("http://e.example/a?x=1#f"), "http://e.example/a");
        assert_eq!(norm("http://e.example?x=/y"), "http://e.example/");
    }

    #[test]
    fn ip_literals() {
        assert_eq!(norm("http://192.0.2.1:80/"), "http://192.0.2.1/");
        assert_eq!(
            norm("http://[2001:DB8:0::1]:8080/x"),
            "http://[2001:db8::1]:8080/x"
        );
        assert_eq!(norm("http://[2001:db8::1]/"), "http://[2001:db8::1]/");
    }

    fn urls_in(text: &str) -> Vec<String> {
        let mut rules = UrlRules::default();
        let cfg = UrlsConfig {
            domains: vec!["x.example".into()],
            ..UrlsConfig::default()
        };
        rules
            .add(
                &RuleRef {
                    index: 0,
                    name: "r".into(),
                },
                0,
                &cfg,
            )
            .unwrap();
        let mut v = Vec::new();
        rules.each_url(text, |u| {
            v.push(u.to_string());
            true
        });
        v
    }

    #[test]
    fn extraction_from_text() {
        assert_eq!(
            urls_in("see https://a.example/x, and (www.b.example/y). Also http://c.example/p_(q)."),
            [
                "https://a.example/x",
                "http://www.b.example/y",
                "http://c.example/p_(q)"
            ]
        );
        assert_eq!(
            urls_in("<a href=\"http://a.example/\">x</a>"),
            ["http://a.example/"]
        );
        assert_eq!(
            urls_in("no urls: awww.x foo.www.bar http: mailto:x@y"),
            Vec::<String>::new()
        );
        assert_eq!(urls_in("http://www.a.example/"), ["http://www.a.example/"]);
        // A URL in a redirect parameter is read on its own and ends the outer one.
        assert_eq!(
            urls_in("https://r.example/go?to=https://evil.example/x"),
            ["https://r.example/go", "https://evil.example/x"]
        );
        assert_eq!(
            urls_in("網址：https://a.example/路徑　下一句"),
            ["https://a.example/%E8%B7%AF%E5%BE%91"]
        );
    }

    #[test]
    fn long_urls_are_cut_at_the_bound() {
        let long = format!("http://evil.example/{}", "a".repeat(10_000));
        let got = urls_in(&long);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("http://evil.example/aaa"));
        assert_eq!(got[0].len(), MAX_URL_LEN);
    }

    #[test]
    fn rule_domains_normalise_or_say_why() {
        assert_eq!(rule_domain("Evil.Example."), Ok("evil.example".into()));
        assert_eq!(
            rule_domain("bücher.example"),
            Ok("xn--bcher-kva.example".into())
        );
        assert_eq!(rule_domain("192.0.2.1"), Ok("192.0.2.1".into()));
        assert_eq!(rule_domain("2001:db8::1"), Ok("[2001:db8::1]".into()));
        assert!(rule_domain("*.evil.example")
            .unwrap_err()
            .contains("write `evil.example`"));
        assert!(rule_domain("http://evil.example")
            .unwrap_err()
            .contains("found `:`"));
        assert!(rule_domain("evil.example/x")
            .unwrap_err()
            .contains("found `/`"));
        assert!(rule_domain("evil..example")
            .unwrap_err()
            .contains("empty label"));
        assert!(rule_domain("ev!l.example").unwrap_err().contains("`!`"));
        assert!(rule_domain(&format!("{}.example", "a".repeat(64)))
            .unwrap_err()
            .contains("longer than 63"));
        assert!(rule_domain("xn--zz-.example").is_err());
    }

    #[test]
    fn rule_suffixes_and_prefixes() {
        assert_eq!(rule_suffix(".ZIP"), Ok(".zip".into()));
        assert_eq!(
            rule_suffix("xn--80ak6aa92e.com"),
            Ok("xn--80ak6aa92e.com".into())
        );
        assert_eq!(rule_suffix(".испытание"), Ok(".xn--80akhbyknj4f".into()));
        assert!(rule_suffix(".").unwrap_err().contains("besides the dot"));
        assert!(rule_suffix(".zip/").unwrap_err().contains("found `/`"));
        assert_eq!(
            rule_prefix("Example.com/Login"),
            Ok(("example.com".into(), "/login".into()))
        );
        assert_eq!(
            rule_prefix("https://example.com/a/../log%69n"),
            Ok(("example.com".into(), "/login".into()))
        );
        assert!(rule_prefix("example.com")
            .unwrap_err()
            .contains("host/path"));
        assert!(rule_prefix("example.com/login?x")
            .unwrap_err()
            .contains("queries"));
        assert!(rule_prefix("exa mple.com/x")
            .unwrap_err()
            .contains("host `exa mple.com`"));
    }
}
