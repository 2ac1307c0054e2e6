//! A reader of a strict subset of YAML: what configurations are usually written in, and
//! nothing it is not sure libyaml reads the same way.
//!
//! The subset:
//! - printable ASCII and line feeds only (no tabs, carriage returns, byte order marks or
//!   other characters);
//! - documents separated by lines that are exactly `---`; whole-line comments and blank
//!   lines anywhere;
//! - block mappings (`key: value`, `key:` then a more indented node or nothing) and block
//!   sequences (`- node`, `- key: value` starting a mapping at the column after `- `), each
//!   entry on lines of its own at the node's column;
//! - flow mappings and sequences (`{a: b, c: [d]}`) that close on the line they open on,
//!   with `: ` after keys and no trailing comma;
//! - plain scalars of `A-Z a-z 0-9 . _ / - :` (and `,` outside flow collections) that start
//!   with a letter or a digit, with a `:` only before another of these characters;
//! - quoted scalars on one line, with no escapes (no `\` in double quotes, no `''` in single
//!   quotes);
//! - keys that YAML reads as strings, at most [`MAX_KEY`] bytes long, each written once in
//!   its mapping.
//!
//! Anything else gives up (`None`): anchors, aliases, tags, directives, `...`, complex keys,
//! block scalars, multi-line scalars, comments after content, a node nested deeper than
//! [`MAX_DEPTH`].

use serde_yaml_ng::Value;

/// Deepest nesting of nodes read; a configuration needs eight.
const MAX_DEPTH: usize = 32;

/// Longest key, quotes included: libyaml refuses a key of more than 1,024 characters.
const MAX_KEY: usize = 1000;

/// A node of the subset. Scalars are slices of the text: the subset has no escapes.
/// Collections are ranges of their [`Tree`]'s entries or items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Node<'a> {
    /// A value left empty (`key:` with nothing under it): null.
    Empty,
    /// A plain scalar, typed as YAML types it by [`resolve`].
    Plain(&'a str),
    /// A quoted scalar: a string.
    Quoted(&'a str),
    /// A mapping, in the order written; its keys are strings, each written once.
    Map(Span),
    /// A sequence.
    Seq(Span),
}

/// Where a collection's children are in its tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Span {
    start: usize,
    len: usize,
}

/// The collections of a text: each one's children next to each other, so that a text of
/// any size takes a handful of allocations.
#[derive(Debug, Default)]
pub(super) struct Tree<'a> {
    entries: Vec<(&'a str, Node<'a>)>,
    items: Vec<Node<'a>>,
    /// The children of the collections being read, innermost last.
    open_entries: Vec<(&'a str, Node<'a>)>,
    open_items: Vec<Node<'a>>,
}

impl<'a> Tree<'a> {
    /// A mapping's entries; `None` for another node.
    pub(super) fn map(&self, node: Node<'a>) -> Option<&[(&'a str, Node<'a>)]> {
        match node {
            Node::Map(span) => self.entries.get(span.start..span.start + span.len),
            _ => None,
        }
    }

    /// A sequence's items; `None` for another node.
    pub(super) fn seq(&self, node: Node<'a>) -> Option<&[Node<'a>]> {
        match node {
            Node::Seq(span) => self.items.get(span.start..span.start + span.len),
            _ => None,
        }
    }

    /// The mapping of the entries read since `open_entries` was `mark` long.
    fn close_map(&mut self, mark: usize) -> Option<Node<'a>> {
        let open = self.open_entries.get(mark..)?;
        if !unique(open) {
            return None;
        }
        let span = Span {
            start: self.entries.len(),
            len: open.len(),
        };
        self.entries.extend(self.open_entries.drain(mark..));
        Some(Node::Map(span))
    }

    /// The sequence of the items read since `open_items` was `mark` long.
    fn close_seq(&mut self, mark: usize) -> Node<'a> {
        let span = Span {
            start: self.items.len(),
            len: self.open_items.len().saturating_sub(mark),
        };
        self.items
            .extend(self.open_items.drain(mark.min(self.open_items.len())..));
        Node::Seq(span)
    }
}

/// The documents of `text`, each its top node (`None` for an empty document), and the tree
/// they are in; or `None` where `text` is not in the subset.
pub(super) fn documents(text: &str) -> Option<(Tree<'_>, Vec<Option<Node<'_>>>)> {
    let mut lines = Vec::with_capacity(text.len() / 16);
    // Where each document's lines end in `lines`.
    let mut ends = Vec::new();
    for raw in text.split('\n') {
        if !raw.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        if raw.starts_with("---") || raw.starts_with("...") {
            if raw != "---" {
                return None;
            }
            ends.push(lines.len());
            continue;
        }
        let content = raw.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        lines.push(Line {
            indent: raw.len() - content.len(),
            text: content.trim_end_matches(' '),
        });
    }
    ends.push(lines.len());
    let mut documents = Vec::with_capacity(ends.len());
    let mut tree = Tree::default();
    let mut start = 0;
    for end in ends {
        let mut block = Block {
            lines: &mut lines[start..end],
            at: 0,
            tree: &mut tree,
        };
        start = end;
        let Some(first) = block.lines.first() else {
            documents.push(None);
            continue;
        };
        if first.indent != 0 || first.text.starts_with('-') {
            return None;
        }
        let node = block.map(0, 0)?;
        if block.at != block.lines.len() {
            return None;
        }
        documents.push(Some(node));
    }
    Some((tree, documents))
}

/// A line with content, without its indentation and trailing spaces.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The block structure of one document's lines. A sequence entry `- key: value` narrows
/// its line in place to the mapping that starts after `- `.
struct Block<'l, 'a> {
    lines: &'l mut [Line<'a>],
    at: usize,
    tree: &'l mut Tree<'a>,
}

impl<'a> Block<'_, 'a> {
    fn next_indent(&self) -> Option<usize> {
        self.lines.get(self.at).map(|l| l.indent)
    }

    /// The block node starting at the current line.
    fn node(&mut self, depth: usize) -> Option<Node<'a>> {
        let line = *self.lines.get(self.at)?;
        if line.text.starts_with('-') {
            self.seq(line.indent, depth)
        } else {
            self.map(line.indent, depth)
        }
    }

    fn map(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mark = self.tree.open_entries.len();
        while let Some(line) = self.lines.get(self.at).copied() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let (key, rest) = key_entry(line.text)?;
            self.at += 1;
            let value = if rest.is_empty() {
                let next = self.lines.get(self.at);
                match next {
                    Some(next) if next.indent > indent => self.node(depth + 1)?,
                    // A sequence at the key's own column.
                    Some(next) if next.indent == indent && next.text.starts_with('-') => {
                        return None;
                    }
                    _ => Node::Empty,
                }
            } else {
                let node = inline(self.tree, rest, depth + 1)?;
                // A more indented line would go on with a plain scalar.
                if self.next_indent().is_some_and(|n| n > indent) {
                    return None;
                }
                node
            };
            self.tree.open_entries.push((key, value));
        }
        self.tree.close_map(mark)
    }

    fn seq(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mark = self.tree.open_items.len();
        while let Some(line) = self.lines.get(self.at).copied() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let after = line.text.strip_prefix('-')?;
            let item = after.trim_start_matches(' ');
            if item.is_empty() || item.len() == after.len() || item.starts_with('-') {
                return None;
            }
            if key_entry(item).is_some() {
                let column = indent + 1 + (after.len() - item.len());
                self.lines[self.at] = Line {
                    indent: column,
                    text: item,
                };
                let map = self.map(column, depth + 1)?;
                self.tree.open_items.push(map);
            } else {
                let node = inline(self.tree, item, depth + 1)?;
                self.tree.open_items.push(node);
                self.at += 1;
                if self.next_indent().is_some_and(|n| n > indent) {
                    return None;
                }
            }
        }
        Some(self.tree.close_seq(mark))
    }
}

/// `key: rest` or `key:`: the key, and the rest after the spaces that follow `:`.
fn key_entry(text: &str) -> Option<(&str, &str)> {
    let mut scan = Scan {
        text,
        at: 0,
        in_flow: false,
    };
    let key = scan.key()?;
    let rest = &text[scan.at..];
    // `key:` ends the line, or `: ` follows the key.
    Some((key, rest.trim_start_matches(' ')))
}

/// A node written on the rest of one line: a scalar or a flow collection.
fn inline<'a>(tree: &mut Tree<'a>, text: &'a str, depth: usize) -> Option<Node<'a>> {
    let mut flow = Flow {
        scan: Scan {
            text,
            at: 0,
            in_flow: false,
        },
        tree,
    };
    let node = flow.node(depth)?;
    (flow.scan.at == text.len()).then_some(node)
}

/// A scan along one line.
struct Scan<'a> {
    text: &'a str,
    at: usize,
    /// Inside `[` or `{`, where `,` ends a plain scalar.
    in_flow: bool,
}

/// A scan that reads nodes into a tree.
struct Flow<'t, 'a> {
    scan: Scan<'a>,
    tree: &'t mut Tree<'a>,
}

impl<'a> Flow<'_, 'a> {
    fn node(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.scan.peek()? {
            b'{' => self.map(depth),
            b'[' => self.seq(depth),
            b'\'' | b'"' => self.scan.quoted().map(Node::Quoted),
            b if b.is_ascii_alphanumeric() => Some(Node::Plain(self.scan.plain())),
            _ => None,
        }
    }

    fn map(&mut self, depth: usize) -> Option<Node<'a>> {
        let scan = &mut self.scan;
        let outer = std::mem::replace(&mut scan.in_flow, true);
        scan.at += 1;
        scan.spaces();
        let mark = self.tree.open_entries.len();
        if !self.scan.eat(b'}') {
            loop {
                let key = self.scan.key()?;
                let value = self.node(depth + 1)?;
                self.tree.open_entries.push((key, value));
                self.scan.spaces();
                if self.scan.eat(b',') {
                    self.scan.spaces();
                } else if self.scan.eat(b'}') {
                    break;
                } else {
                    return None;
                }
            }
        }
        self.scan.in_flow = outer;
        self.tree.close_map(mark)
    }

    fn seq(&mut self, depth: usize) -> Option<Node<'a>> {
        let scan = &mut self.scan;
        let outer = std::mem::replace(&mut scan.in_flow, true);
        scan.at += 1;
        scan.spaces();
        let mark = self.tree.open_items.len();
        if !self.scan.eat(b']') {
            loop {
                let node = self.node(depth + 1)?;
                self.tree.open_items.push(node);
                self.scan.spaces();
                if self.scan.eat(b',') {
                    self.scan.spaces();
                } else if self.scan.eat(b']') {
                    break;
                } else {
                    return None;
                }
            }
        }
        self.scan.in_flow = outer;
        Some(self.tree.close_seq(mark))
    }
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn spaces(&mut self) -> usize {
        let start = self.at;
        while self.eat(b' ') {}
        self.at - start
    }

    /// A key, its `:` and, unless the line ends there, the space after it.
    fn key(&mut self) -> Option<&'a str> {
        let start = self.at;
        let key = match self.peek()? {
            b'\'' | b'"' => self.quoted()?,
            b if b.is_ascii_alphanumeric() => {
                let key = self.plain();
                if !is_string(key) {
                    return None;
                }
                key
            }
            _ => return None,
        };
        if self.at - start > MAX_KEY || !self.eat(b':') {
            return None;
        }
        let end_of_line = !self.in_flow && self.at == self.text.len();
        (end_of_line || self.spaces() > 0).then_some(key)
    }

    /// A quoted scalar's content; `None` where it has escapes or does not close.
    fn quoted(&mut self) -> Option<&'a str> {
        let quote = self.peek()?;
        let start = self.at + 1;
        let len = self.text[start..].find(quote as char)?;
        let content = &self.text[start..start + len];
        self.at = start + len + 1;
        // `\` escapes in double quotes, `''` is a quote in single quotes.
        if (quote == b'"' && content.contains('\\')) || self.peek() == Some(quote) {
            return None;
        }
        Some(content)
    }

    /// A plain scalar, from a letter or a digit at the current byte.
    fn plain(&mut self) -> &'a str {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let safe = |b: u8| b.is_ascii_alphanumeric() || b"._/-".contains(&b);
        while let Some(&b) = bytes.get(self.at) {
            let more = safe(b)
                || (b == b',' && !self.in_flow)
                || (b == b':'
                    && bytes
                        .get(self.at + 1)
                        .is_some_and(|&n| safe(n) || n == b':'));
            if !more {
                break;
            }
            self.at += 1;
        }
        &self.text[start..self.at]
    }
}

/// Whether no key of `entries` is written twice.
fn unique<T>(entries: &[(&str, T)]) -> bool {
    if entries.len() <= 16 {
        return entries
            .iter()
            .enumerate()
            .all(|(i, (key, _))| entries[..i].iter().all(|(k, _)| k != key));
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1])
}

/// Whether YAML reads a plain scalar of the subset as a string.
pub(super) fn is_string(plain: &str) -> bool {
    match plain.as_bytes().first() {
        Some(b) if b.is_ascii_alphabetic() => !is_null_or_bool(plain),
        _ => matches!(resolve(plain), Some(Value::String(_))),
    }
}

fn is_null_or_bool(plain: &str) -> bool {
    matches!(
        plain,
        "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
    )
}

/// The value YAML gives a plain scalar of the subset, as serde_yaml_ng types it: null,
/// boolean, number or string. A scalar that starts with a letter, or holds a `/`, `:` or
/// `,`, is no number; the rest is typed by serde_yaml_ng itself.
pub(super) fn resolve(plain: &str) -> Option<Value> {
    match plain {
        "null" | "Null" | "NULL" | "~" | "" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let bytes = plain.as_bytes();
    if bytes[0].is_ascii_alphabetic() || bytes.iter().any(|b| b"/:,".contains(b)) {
        return Some(Value::String(plain.to_owned()));
    }
    // A whole number without leading zeros: what serde_yaml_ng reads as a u64.
    if bytes[0] != b'0'
        && bytes.len() <= 19
        && bytes.iter().all(u8::is_ascii_digit)
        && let Ok(n) = plain.parse::<u64>()
    {
        return Some(Value::Number(n.into()));
    }
    serde_yaml_ng::from_str(plain).ok()
}
