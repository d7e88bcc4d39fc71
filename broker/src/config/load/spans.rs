//! Byte offsets back to what a person can find: `line:column` and the dotted key an
//! offset belongs to. serde's errors carry only a span, so the key path is recovered by
//! re-reading the document into a tree of spanned keys.

use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Renders a key path the way it would be written in TOML: bare keys joined by dots, any
/// other key quoted (`contexts."a.b".user`), so a context name with a dot stays readable.
pub(super) fn join_key(parts: &[&str]) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        let bare = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare {
            out.push_str(part);
        } else {
            out.push_str(&format!("{part:?}"));
        }
    }
    out
}

/// The dotted key that the error span `span` is about, if the document can be read.
///
/// A span that starts at a `[table]` header covers that whole table (serde reports a
/// missing field that way), so it belongs to the deepest key named in the header. Any
/// other span is a key or a value, and belongs to the last key that starts at or before it.
pub(super) fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let root: Node = toml::from_str(text).ok()?;
    let mut keys = Vec::new();
    collect(&root, &mut Vec::new(), &mut keys);

    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let is_header = text[line_start..start].trim().is_empty() && text[start..].starts_with('[');
    let limit = if is_header {
        text[start..].find('\n').map_or(text.len(), |i| start + i)
    } else {
        start
    };
    keys.into_iter()
        .filter(|(_, at)| *at <= limit)
        .max_by_key(|(_, at)| *at)
        .map(|(path, _)| path)
}

fn collect<'a>(node: &'a Node, path: &mut Vec<&'a str>, out: &mut Vec<(String, usize)>) {
    match node {
        Node::Table(entries) => {
            for (key, child) in entries {
                path.push(key.get_ref());
                out.push((join_key(path), key.span().start));
                collect(child, path, out);
                path.pop();
            }
        }
        Node::Array(items) => {
            for item in items {
                collect(item, path, out);
            }
        }
        Node::Leaf => {}
    }
}

/// The document's shape with every key's span; values are dropped.
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Node>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value::<Node>()?));
        }
        Ok(Node::Table(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // Columns count characters, not bytes: `"` follows a two-byte é.
        let quote = text.find('"').unwrap_or(0);
        assert_eq!(line_col(text, quote), (2, 6));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    #[test]
    fn keys_for_spans() {
        let text = "[contexts.a]\nuser = 'x'\niso = { pid = 3 }\n\n[contexts.b]\ncwd = '/'\n";
        let at = |needle: &str| {
            let s = text.find(needle).unwrap_or(0);
            key_at(text, &(s..s + needle.len()))
        };
        assert_eq!(at("'x'").as_deref(), Some("contexts.a.user"));
        assert_eq!(at("3").as_deref(), Some("contexts.a.iso.pid"));
        assert_eq!(at("[contexts.b]").as_deref(), Some("contexts.b"));
        assert_eq!(at("cwd").as_deref(), Some("contexts.b.cwd"));
    }

    #[test]
    fn quoted_keys() {
        assert_eq!(
            join_key(&["contexts", "a.b", "user"]),
            "contexts.\"a.b\".user"
        );
        assert_eq!(join_key(&["contexts", "a-b_1"]), "contexts.a-b_1");
    }
}
