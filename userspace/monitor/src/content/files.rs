//! File rules: an attachment matches by extension and/or by size.
//!
//! The file name compared is the attachment's name and, when the attachment has a URL, the
//! last segment of the URL's normalised path (an XEP-0363 upload URL names the file even when
//! the offer does not); the rule matches when either does. A name is reduced the way a
//! receiving system would store it: the last path component (after `/` or `\`), trailing dots
//! and spaces dropped (Windows drops them, so `evil.exe.` runs as `evil.exe`), and, when it
//! holds a NUL, also the part before it (what a C program would write). Extensions compare
//! case-insensitively as a suffix after a dot: the last extension decides (`report.pdf.exe`
//! is `exe`), and a multi-part extension such as `tar.gz` matches `x.tar.gz`.
//!
//! Size: a file matches `larger_than: N` when its stated size is strictly larger than N. A
//! file whose size is unknown matches only when the rule says `match_unknown_size: true`.
//!
//! Bound: only the last [`MAX_NAME_LEN`] bytes of a name are compared (an extension sits at
//! the end, and no file system stores longer names).

use super::{model::FilesConfig, urls, RuleRef};
use crate::{content::model::ContentError, message::Attachment};

/// Bytes of a file name compared, counted from its end.
pub const MAX_NAME_LEN: usize = 1024;

struct FileRule {
    rule: usize,
    /// Lowercase, without the leading dot.
    extensions: Vec<Box<str>>,
    larger_than: Option<u64>,
    match_unknown_size: bool,
}

/// The file rules of a policy, compiled.
#[derive(Default)]
pub struct FileRules {
    rules: Vec<FileRule>,
}

/// Normalises an extension of a rule.
fn rule_extension(text: &str) -> Result<String, String> {
    let t = text.trim();
    let t = t.strip_prefix('.').unwrap_or(t);
    if t.is_empty() {
        return Err("it is only a dot".into());
    }
    if let Some(c) = t
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '\0' | '*' | '?') || c.is_whitespace())
    {
        return Err(format!(
            "it contains `{}`; write the extension alone, such as `exe` or `tar.gz`",
            c.escape_default()
        ));
    }
    if t.ends_with('.') || t.contains("..") {
        return Err("it has an empty part (a dot at the end or two dots in a row)".into());
    }
    Ok(t.to_lowercase())
}

impl FileRules {
    /// Adds the file rule `index`.
    pub fn add(
        &mut self,
        rule: &RuleRef,
        index: usize,
        c: &FilesConfig,
    ) -> Result<(), ContentError> {
        if c.extensions.is_empty() && c.larger_than.is_none() {
            return Err(ContentError::EmptyList {
                rule: rule.clone(),
                field: "files",
            });
        }
        if c.match_unknown_size && c.larger_than.is_none() {
            return Err(ContentError::UnknownSizeWithoutSize { rule: rule.clone() });
        }
        let mut extensions = Vec::with_capacity(c.extensions.len());
        for (position, value) in c.extensions.iter().enumerate() {
            if value.trim().is_empty() {
                return Err(ContentError::EmptyEntry {
                    rule: rule.clone(),
                    field: "files.extensions",
                    position,
                });
            }
            let e = rule_extension(value).map_err(|why| ContentError::BadExtension {
                rule: rule.clone(),
                position,
                value: value.clone(),
                why,
            })?;
            extensions.push(e.into());
        }
        let larger_than = match &c.larger_than {
            None => None,
            Some(s) => {
                Some(
                    super::model::parse_size(&s.0).map_err(|why| ContentError::BadSize {
                        rule: rule.clone(),
                        why,
                    })?,
                )
            }
        };
        self.rules.push(FileRule {
            rule: index,
            extensions,
            larger_than,
            match_unknown_size: c.match_unknown_size,
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Appends `(rule, reason)` for every rule the attachment matches.
    pub fn matching(&self, att: &Attachment, out: &mut Vec<(usize, String)>) {
        if self.rules.is_empty() {
            return;
        }
        let from_url = att
            .url
            .as_deref()
            .and_then(|u| urls::parse(u.trim()))
            .and_then(|u| {
                u.path
                    .rsplit('/')
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            });
        let mut names: Vec<String> = Vec::with_capacity(3);
        for raw in [Some(att.name.as_str()), from_url.as_deref()]
            .into_iter()
            .flatten()
        {
            let (name, cut) = reduce(raw);
            names.extend([name, cut].into_iter().flatten());
        }
        let shown = if att.name.is_empty() {
            from_url.as_deref().unwrap_or("")
        } else {
            &att.name
        };
        for r in &self.rules {
            if out.iter().any(|(x, _)| *x == r.rule) {
                continue;
            }
            let ext = if r.extensions.is_empty() {
                None
            } else {
                match r
                    .extensions
                    .iter()
                    .find(|e| names.iter().any(|n| has_extension(n, e)))
                {
                    Some(e) => Some(e),
                    None => continue,
                }
            };
            let size = match (r.larger_than, att.size) {
                (None, _) => None,
                (Some(limit), Some(size)) if size > limit => {
                    Some(format!("{size} bytes, larger than {limit}"))
                }
                (Some(limit), None) if r.match_unknown_size => {
                    Some(format!("of unknown size (counted as larger than {limit})"))
                }
                (Some(_), _) => continue,
            };
            let what = match (ext, size) {
                (Some(e), Some(s)) => format!("has extension `{e}` and is {s}"),
                (Some(e), None) => format!("has extension `{e}`"),
                (None, Some(s)) => format!("is {s}"),
                (None, None) => continue,
            };
            out.push((r.rule, format!("file `{}` {what}", super::shown(shown))));
        }
    }
}

/// The name as stored, lowercased; and, when it holds a NUL, its part before the NUL.
fn reduce(raw: &str) -> (Option<String>, Option<String>) {
    let mut start = raw.len().saturating_sub(MAX_NAME_LEN);
    while !raw.is_char_boundary(start) {
        start += 1;
    }
    let tail = raw.get(start..).unwrap_or("");
    let base = tail.rsplit(['/', '\\']).next().unwrap_or(tail);
    let clean = |s: &str| {
        let s = s.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
        (!s.is_empty()).then(|| s.to_lowercase())
    };
    let cut = base.find('\0').and_then(|p| base.get(..p)).and_then(clean);
    (clean(base), cut)
}

/// Whether `name` ends with `.ext`.
fn has_extension(name: &str, ext: &str) -> bool {
    name.strip_suffix(ext)
        .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_take_the_last_part_and_multi_part_ones() {
        assert!(has_extension("report.pdf.exe", "exe"));
        assert!(!has_extension("report.exe.pdf", "exe"));
        assert!(has_extension("x.tar.gz", "tar.gz"));
        assert!(has_extension("x.tar.gz", "gz"));
        assert!(!has_extension("x.gz", "tar.gz"));
        assert!(!has_extension("xexe", "exe"));
        assert!(has_extension(".exe", "exe"));
    }

    #[test]
    fn names_are_reduced_as_stored() {
        assert_eq!(
            reduce("C:\\Users\\x\\Report.EXE"),
            (Some("report.exe".into()), None)
        );
        assert_eq!(
            reduce("../../evil.exe. . "),
            (Some("evil.exe".into()), None)
        );
        assert_eq!(
            reduce("evil.exe\0.pdf"),
            (Some("evil.exe\0.pdf".into()), Some("evil.exe".into()))
        );
        assert_eq!(reduce("..."), (None, None));
        let long = format!("{}.exe", "a".repeat(5000));
        let (n, _) = reduce(&long);
        assert_eq!(n.as_deref().map(str::len), Some(MAX_NAME_LEN));
        assert!(has_extension(n.as_deref().unwrap(), "exe"));
        // A cut inside a multi-byte character moves to the next boundary.
        let wide = format!("{}.exe", "é".repeat(600));
        assert!(reduce(&wide).0.is_some_and(|n| has_extension(&n, "exe")));
    }

    #[test]
    fn rule_extensions_normalise_or_say_why() {
        assert_eq!(rule_extension(".EXE"), Ok("exe".into()));
        assert_eq!(rule_extension("Tar.GZ"), Ok("tar.gz".into()));
        assert!(rule_extension(".").unwrap_err().contains("only a dot"));
        assert!(rule_extension("*.exe").unwrap_err().contains("`*`"));
        assert!(rule_extension("tar..gz")
            .unwrap_err()
            .contains("empty part"));
        assert!(rule_extension("a b").unwrap_err().contains("` `"));
    }
}
