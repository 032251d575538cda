//! Errors that point into a file: `FILE:LINE:COL: message`.

use std::fmt;

use super::locate::{Locations, Pos};

/// One problem in a policy or catalogue file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    /// 1-based; 0 when the error is about the file as a whole (it cannot be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl PolicyError {
    pub fn new(file: &str, line: usize, column: usize, message: impl Into<String>) -> PolicyError {
        PolicyError { file: file.to_owned(), line, column, message: message.into() }
    }

    pub(crate) fn at(file: &str, pos: Pos, message: impl Into<String>) -> PolicyError {
        PolicyError::new(file, pos.line, pos.column, message)
    }

    /// Converts a `serde_yaml` error, moving its position out of the message.
    pub(crate) fn from_yaml(file: &str, err: &serde_yaml::Error) -> PolicyError {
        let text = err.to_string();
        match err.location() {
            Some(loc) => {
                let here = format!(" at line {} column {}", loc.line(), loc.column());
                let message = match text.strip_suffix(&here) {
                    Some(m) => m.to_owned(),
                    // libyaml's messages go on with a context after the position.
                    None => text.replacen(&here, "", 1),
                };
                PolicyError::new(file, loc.line(), loc.column(), message)
            }
            None => PolicyError::new(file, 1, 1, text),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found in one check, in file and line order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// `Ok(())` when there are none; otherwise the errors, sorted.
    pub(crate) fn into_result(mut self) -> Result<(), PolicyErrors> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        self.0.dedup();
        Err(self)
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> PolicyErrors {
        PolicyErrors(vec![e])
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A parsed file's name and node positions, to report errors against.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub file: String,
    pub locs: Locations,
}

impl Source {
    /// An error about the value at `path`.
    pub fn err(&self, path: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::at(&self.file, self.locs.at_value(path), message)
    }

    /// An error about the key at `path`.
    pub fn err_key(&self, path: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::at(&self.file, self.locs.at_key(path), message)
    }

    /// `FILE:LINE` of the node at `path`, to name it in another error.
    pub fn where_is(&self, path: &str) -> String {
        format!("{}:{}", self.file, self.locs.at_key(path).line)
    }

    /// Parses `text` with serde after checking its syntax and keys with the event parser, so
    /// that duplicate keys are reported at the duplicate rather than at their mapping.
    pub fn parse<T: serde::de::DeserializeOwned>(
        text: &str,
        file: &str,
        empty_hint: &str,
    ) -> Result<(Source, T), PolicyErrors> {
        let locs = Locations::build(text)
            .map_err(|e| PolicyError::at(file, e.at, format!("YAML syntax error: {}", e.message)))?;
        if !locs.has_root {
            return Err(PolicyError::new(file, 1, 1, format!("the file is empty; {empty_hint}")).into());
        }
        let mut errs = PolicyErrors::default();
        for d in &locs.duplicates {
            errs.0.push(PolicyError::at(
                file,
                d.at,
                format!("duplicate key `{}` (first given at line {}); each key may appear once", d.path, d.first.line),
            ));
        }
        errs.into_result()?;
        let value = serde_yaml::from_str(text).map_err(|e| PolicyError::from_yaml(file, &e))?;
        Ok((Source { file: file.to_owned(), locs }, value))
    }
}
