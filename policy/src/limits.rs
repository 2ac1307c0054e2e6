//! Bounds on configuration text, checked before the YAML parser does heavy work.
//!
//! The YAML parser takes time quadratic in the nesting depth of flow collections
//! (`{a: {a: {a: ...}}}`: 250 KB took 13 s natively), and aliases expand when read (a few
//! hundred bytes of nested anchors make gigabytes). So, in one linear pass over the text and
//! before any parsing: flow collections nest at most [`MAX_FLOW_DEPTH`] deep, block structure
//! at most [`MAX_BLOCK_COLUMN`] columns, and a text with aliases is walked once, counting the
//! nodes they expand to, at most [`MAX_EXPANDED_NODES`]. A configuration of the spec's kinds
//! never comes near these bounds.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of `[` and `{` collections.
pub const MAX_FLOW_DEPTH: usize = 64;
/// Deepest column block structure (indentation and `- ` indicators) may start a node at.
pub const MAX_BLOCK_COLUMN: usize = 512;
/// Most nodes a text may hold once its aliases are expanded.
pub const MAX_EXPANDED_NODES: usize = 4_000_000;

/// Why a text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRefused {
    /// Where, as `line L`.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Checks the flow depth and the block column of `text`, in one pass.
pub fn check_text(text: &str) -> Result<(), TextRefused> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let at = || Some(format!("line {}", n + 1));
        if line.starts_with("---") {
            depth = 0;
        }
        let bytes = line.as_bytes();
        // Block structure: leading spaces, then `- `, `? ` and `: ` indicators.
        let mut column = 0;
        while column < bytes.len() {
            match bytes[column] {
                b' ' => column += 1,
                b'-' | b'?' | b':' if bytes.get(column + 1).is_none_or(|&b| b == b' ') => {
                    column += 1
                }
                _ => break,
            }
        }
        if column > MAX_BLOCK_COLUMN && depth == 0 {
            return Err(TextRefused {
                value: at(),
                message: format!(
                    "block structure nested past column {MAX_BLOCK_COLUMN}: refused before parsing"
                ),
            });
        }
        // Flow collections, outside quoted scalars and comments.
        let mut quote: Option<u8> = None;
        let mut i = 0;
        loop {
            // The bytes no arm below acts on are stepped over in one go.
            let acted_on = match quote {
                None => &OUTSIDE_QUOTES,
                Some(b'"') => &IN_DOUBLE_QUOTES,
                Some(_) => &IN_SINGLE_QUOTES,
            };
            while bytes.get(i).is_some_and(|&b| !acted_on[usize::from(b)]) {
                i += 1;
            }
            let Some(&b) = bytes.get(i) else {
                break;
            };
            match quote {
                Some(b'"') if b == b'\\' => i += 1,
                Some(q) if b == q => {
                    // '' inside single quotes is an escaped quote.
                    if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        quote = None;
                    }
                }
                Some(_) => {}
                None => match b {
                    b'"' | b'\'' if i == 0 || b" [{,:".contains(&bytes[i - 1]) => quote = Some(b),
                    b'#' if i == 0 || bytes[i - 1] == b' ' => break,
                    // A bracket opens a collection only where a node starts; inside a
                    // plain scalar (`a[1`) it is text.
                    b'[' | b'{' if i == 0 || b" \t[{,:-?".contains(&bytes[i - 1]) => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Err(TextRefused {
                                value: at(),
                                message: format!(
                                    "flow collections (`[` and `{{`) nested deeper than {MAX_FLOW_DEPTH}: refused before parsing"
                                ),
                            });
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            i += 1;
        }
        // A double-quoted scalar may go on over lines; a single-quoted one too.
    }
    Ok(())
}

/// The bytes [`check_text`] acts on outside quotes, in double quotes and in single quotes.
const OUTSIDE_QUOTES: [bool; 256] = bytes_of(b"\"'#[{]}");
const IN_DOUBLE_QUOTES: [bool; 256] = bytes_of(b"\\\"");
const IN_SINGLE_QUOTES: [bool; 256] = bytes_of(b"'");

const fn bytes_of(list: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < list.len() {
        table[list[i] as usize] = true;
        i += 1;
    }
    table
}

/// Whether `text` may hold an alias (`*name` where a node starts). Cheap and conservative:
/// a `*` after a space, `[`, `{`, `,` or at the start of a line.
pub fn has_aliases(text: &str) -> bool {
    let bytes = text.as_bytes();
    // From one `*` to the next: `find` skips the bytes between many at a time.
    let mut from = 0;
    while let Some(i) = text.get(from..).and_then(|rest| rest.find('*')) {
        let i = from + i;
        if (i == 0 || b" \t\n[{,".contains(&bytes[i - 1]))
            && bytes
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        {
            return true;
        }
        from = i + 1;
    }
    false
}

/// A walk over a document that counts nodes as aliases expand, and stops past
/// [`MAX_EXPANDED_NODES`].
pub struct Budget<'a>(pub &'a Cell<usize>);

impl Budget<'_> {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        let n = self.0.get() + 1;
        self.0.set(n);
        if n > MAX_EXPANDED_NODES {
            return Err(E::custom(format!(
                "aliases expand to more than {MAX_EXPANDED_NODES} nodes: refused"
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.spend()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        Budget(self.0).deserialize(d)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        Budget(self.0).deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(Budget(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        while map.next_key_seed(Budget(self.0))?.is_some() {
            map.next_value_seed(Budget(self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess;
        self.spend()?;
        let ((), variant) = data.variant_seed(Budget(self.0))?;
        variant.newtype_variant_seed(Budget(self.0))
    }
}

/// The object a 1-based `line` of `text` is in, as `Kind name`, read from the text around
/// it: for errors the YAML parser finds before any object exists (a duplicate key). Looks
/// back to the document's start (`---`) for a top-level `kind:` and `metadata` name.
pub fn object_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let end = line.min(lines.len());
    let start = lines[..end]
        .iter()
        .rposition(|l| l.starts_with("---"))
        .map_or(0, |i| i + 1);
    let doc = &lines[start..];
    let top = |key: &str| {
        doc.iter().position(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        })
    };
    let scalar = |s: &str| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
    let kind = doc[top("kind")?]["kind:".len()..].to_owned();
    let kind = scalar(&kind);
    let meta = top("metadata")?;
    let inline = doc[meta]["metadata:".len()..].trim();
    let name = if let Some(body) = inline.strip_prefix('{') {
        body.split(',')
            .find_map(|kv| kv.trim().strip_prefix("name:"))
            .map(|v| scalar(v.trim_end_matches('}')))
    } else {
        doc[meta + 1..]
            .iter()
            .take_while(|l| l.starts_with(' ') || l.trim().is_empty())
            .find_map(|l| l.trim().strip_prefix("name:"))
            .map(scalar)
    }?;
    (!kind.is_empty() && !name.is_empty()).then(|| format!("{kind} `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`check_text`] as it was first written, a byte at a time: the reference for the
    /// version that steps over the bytes it does not act on.
    fn check_text_byte_by_byte(text: &str) -> Result<(), TextRefused> {
        let mut depth = 0usize;
        for (n, line) in text.lines().enumerate() {
            let at = || Some(format!("line {}", n + 1));
            if line.starts_with("---") {
                depth = 0;
            }
            let bytes = line.as_bytes();
            // Block structure: leading spaces, then `- `, `? ` and `: ` indicators.
            let mut column = 0;
            while column < bytes.len() {
                match bytes[column] {
                    b' ' => column += 1,
                    b'-' | b'?' | b':' if bytes.get(column + 1).is_none_or(|&b| b == b' ') => {
                        column += 1
                    }
                    _ => break,
                }
            }
            if column > MAX_BLOCK_COLUMN && depth == 0 {
                return Err(TextRefused {
                    value: at(),
                    message: format!(
                        "block structure nested past column {MAX_BLOCK_COLUMN}: refused before parsing"
                    ),
                });
            }
            // Flow collections, outside quoted scalars and comments.
            let mut quote: Option<u8> = None;
            let mut i = 0;
            while i < bytes.len() {
                let b = bytes[i];
                match quote {
                    Some(b'"') if b == b'\\' => i += 1,
                    Some(q) if b == q => {
                        // '' inside single quotes is an escaped quote.
                        if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = None;
                        }
                    }
                    Some(_) => {}
                    None => match b {
                        b'"' | b'\'' if i == 0 || b" [{,:".contains(&bytes[i - 1]) => {
                            quote = Some(b)
                        }
                        b'#' if i == 0 || bytes[i - 1] == b' ' => break,
                        // A bracket opens a collection only where a node starts; inside a
                        // plain scalar (`a[1`) it is text.
                        b'[' | b'{' if i == 0 || b" \t[{,:-?".contains(&bytes[i - 1]) => {
                            depth += 1;
                            if depth > MAX_FLOW_DEPTH {
                                return Err(TextRefused {
                                    value: at(),
                                    message: format!(
                                        "flow collections (`[` and `{{`) nested deeper than {MAX_FLOW_DEPTH}: refused before parsing"
                                    ),
                                });
                            }
                        }
                        b']' | b'}' => depth = depth.saturating_sub(1),
                        _ => {}
                    },
                }
                i += 1;
            }
            // A double-quoted scalar may go on over lines; a single-quoted one too.
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn stepping_over_bytes_changes_no_answer(
            opened in 0..80usize,
            text in proptest::collection::vec(
                proptest::sample::select(b"\"'#[{]}\\ :,-?\nab".to_vec()), 0..1000
            )
        ) {
            // Opened collections first, so that some texts nest too deep.
            let text = "[".repeat(opened) + &String::from_utf8(text).unwrap_or_default();
            proptest::prop_assert_eq!(check_text(&text), check_text_byte_by_byte(&text));
        }
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("{}1{}", "{a: ".repeat(100), "}".repeat(100));
        let e = check_text(&deep).unwrap_err();
        assert!(e.message.contains("nested deeper than 64"), "{e:?}");
        let fine = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check_text(&fine), Ok(()));
        // Brackets inside quotes and comments do not count.
        let quoted = format!(
            "a: '{}'\nb: \"{}\" # {}\n",
            "[".repeat(99),
            "{".repeat(99),
            "[".repeat(99)
        );
        assert_eq!(check_text(&quoted), Ok(()));
    }

    #[test]
    fn brackets_inside_plain_scalars_do_not_count() {
        let text = "names:\n".to_owned() + &"  - a[1\n".repeat(200);
        assert_eq!(check_text(&text), Ok(()));
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let deep = "- ".repeat(600) + "1";
        assert!(check_text(&deep).is_err());
        assert_eq!(check_text("a:\n  - b: 1\n    c: [1, 2]\n"), Ok(()));
    }

    #[test]
    fn aliases_are_found() {
        assert!(has_aliases("a: &x 1\nb: *x\n"));
        assert!(has_aliases("b: [*x]"));
        assert!(!has_aliases("a: '2*3'\nb: 10.0.0.0/8\n"));
        assert!(has_aliases("*a: 1"));
        assert!(has_aliases("a: b*c\nd: *e"));
        assert!(!has_aliases("a: b*c\nd: 1 *"));
    }

    #[test]
    fn the_object_of_a_line() {
        let text = "kind: VPCInfo\nmetadata: {name: a}\nspec: {vni: 1}\n---\napiVersion: v1\nkind: Peering\nmetadata:\n  name: a--b\nspec:\n  peering:\n    a: {}\n    a: {}\n";
        assert_eq!(object_at_line(text, 12).as_deref(), Some("Peering `a--b`"));
        assert_eq!(object_at_line(text, 3).as_deref(), Some("VPCInfo `a`"));
    }
}
