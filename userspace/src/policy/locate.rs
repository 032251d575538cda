//! Where each node of a YAML document is, by path.
//!
//! serde forgets positions once a value is deserialized, so the semantic checks (unknown app
//! names, duplicate rules, ...) find them again here: the same text is run through
//! `yaml_rust2`'s event parser, and every key and value is recorded under a path such as
//! `rules[2].apps[1]` or `apps.whatsapp`.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::{Marker, ScanError},
};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The top of the file, for errors that belong to no particular node.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: Marker) -> Pos {
        // yaml_rust2 counts lines from 1 but columns from 0.
        Pos { line: m.line(), column: m.col() + 1 }
    }
}

/// A key that appears twice in one mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    pub path: String,
    pub key: String,
    pub at: Pos,
    pub first: Pos,
}

/// Positions of the keys and values of one document.
#[derive(Clone, Debug, Default)]
pub struct Locations {
    /// Position of the key naming each path (for sequence items: the item itself). A path can
    /// occur more than once when a mapping repeats a key.
    keys: HashMap<String, Vec<Pos>>,
    /// Position of the value at each path.
    values: HashMap<String, Vec<Pos>>,
    pub duplicates: Vec<DuplicateKey>,
    /// Whether the document has a root node at all (an empty or comment-only file has none).
    pub has_root: bool,
}

/// A YAML syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub at: Pos,
    pub message: String,
}

impl Locations {
    pub fn build(source: &str) -> Result<Locations, SyntaxError> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        parser.load(&mut builder, false).map_err(|e: ScanError| SyntaxError {
            at: Pos::from_marker(*e.marker()),
            message: e.info().to_owned(),
        })?;
        Ok(builder.locs)
    }

    /// Position of the key (or sequence item) at `path`: its first occurrence.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.key_nth(path, 0)
    }

    /// Position of the `n`th occurrence of the key at `path`.
    pub fn key_nth(&self, path: &str, n: usize) -> Option<Pos> {
        self.keys.get(path).and_then(|v| v.get(n)).copied()
    }

    /// Position of the value at `path`.
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).and_then(|v| v.first()).copied()
    }

    /// Best position for an error about the value at `path`: the value, else its key, else the
    /// nearest enclosing node that exists (a missing field points at its parent).
    pub fn at_value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.value(p).or_else(|| self.key(p)) {
                return pos;
            }
            match parent(p) {
                Some(up) => p = up,
                None => return Pos::START,
            }
        }
    }

    /// Best position for an error about the key at `path` (e.g. an unknown app name used as a
    /// key): the key, else the value, else the nearest enclosing node.
    pub fn at_key(&self, path: &str) -> Pos {
        match self.key(path) {
            Some(pos) => pos,
            None => self.at_value(path),
        }
    }
}

/// `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> `` (the root), `` -> none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return Some(&path[..i]);
        }
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

/// Joins a mapping's path and one of its keys.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Path of item `i` of the sequence at `path`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<String>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    locs: Locations,
    stack: Vec<Frame>,
}

/// What the next node is to its parent.
enum Slot {
    /// A mapping key (a scalar is recorded as such; a complex key is only skipped over).
    Key,
    /// A value at this path.
    Value(String),
}

impl Builder {
    fn slot(&self) -> Slot {
        match self.stack.last() {
            None => Slot::Value(String::new()),
            Some(Frame::Map { key: None, .. }) => Slot::Key,
            Some(Frame::Map { path, key: Some(k), .. }) => Slot::Value(join(path, k)),
            Some(Frame::Seq { path, next }) => Slot::Value(index(path, *next)),
        }
    }

    /// Records the position of a value (and, for sequence items, of the item as a key).
    fn record_value(&mut self, path: &str, pos: Pos) {
        if path.is_empty() {
            self.locs.has_root = true;
        }
        if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
            self.locs.keys.entry(path.to_owned()).or_default().push(pos);
        }
        self.locs.values.entry(path.to_owned()).or_default().push(pos);
    }

    /// The node just finished was a complete value (or key) of the top frame.
    fn finish_node(&mut self, was_key: Option<String>) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = was_key,
            Some(Frame::Seq { next, .. }) => *next += 1,
            None => {}
        }
    }

    fn record_key(&mut self, name: &str, pos: Pos) {
        let Some(Frame::Map { path, seen, .. }) = self.stack.last_mut() else {
            return;
        };
        let full = join(path, name);
        if seen.is_empty() {
            // yaml_rust2 marks a block mapping where its first `:` is; point at the first key
            // instead, as libyaml does (a flow mapping's `{` comes first and stays).
            let at = path.clone();
            for list in [self.locs.values.get_mut(&at), self.locs.keys.get_mut(&at)].into_iter().flatten() {
                if let Some(last) = list.last_mut() {
                    if (pos.line, pos.column) < (last.line, last.column) {
                        *last = pos;
                    }
                }
            }
        }
        if let Some(first) = seen.get(name) {
            self.locs.duplicates.push(DuplicateKey {
                path: full.clone(),
                key: name.to_owned(),
                at: pos,
                first: *first,
            });
        } else {
            seen.insert(name.to_owned(), pos);
        }
        self.locs.keys.entry(full).or_default().push(pos);
    }

    fn leaf(&mut self, text: Option<&str>, pos: Pos) {
        match self.slot() {
            Slot::Key => {
                // Aliases and other odd keys still need a name so the value that follows lands
                // somewhere.
                let name = text.unwrap_or("?").to_owned();
                self.record_key(&name, pos);
                self.finish_node(Some(name));
            }
            Slot::Value(path) => {
                self.record_value(&path, pos);
                self.finish_node(None);
            }
        }
    }

    fn open(&mut self, is_map: bool, pos: Pos) {
        let path = match self.slot() {
            // A complex key: walk it without recording anything useful.
            Slot::Key => "?".to_owned(),
            Slot::Value(path) => {
                self.record_value(&path, pos);
                path
            }
        };
        self.stack.push(if is_map {
            Frame::Map { path, key: None, seen: HashMap::new() }
        } else {
            Frame::Seq { path, next: 0 }
        });
    }

    fn close(&mut self) {
        self.stack.pop();
        // The closed container was a key if its parent mapping still waits for one.
        let was_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
        self.finish_node(was_key.then(|| "?".to_owned()));
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(text, ..) => self.leaf(Some(&text), pos),
            Event::Alias(_) => self.leaf(None, pos),
            Event::MappingStart(..) => self.open(true, pos),
            Event::SequenceStart(..) => self.open(false, pos),
            Event::MappingEnd | Event::SequenceEnd => self.close(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}
