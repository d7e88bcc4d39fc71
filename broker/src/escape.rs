//! The one escaper for text an untrusted party wrote (argv, context names, env names, user
//! names, paths, messages) on its way to a terminal: `ctx log`, `ps`, `status` and
//! `contexts` all print through it, and the audit log keeps its form of bytes that are not
//! UTF-8 (`argv_escaped`), so the log and the table show the same thing.
//!
//! The form is injective: every backslash in the output starts an escape, so different
//! bytes never print the same and [`unescape`] gives the bytes back.
//!
//! - `\` → `\\`; newline, tab, carriage return → `\n`, `\t`, `\r`;
//! - other C0 controls and DEL → `\xNN` (ESC is `\x1b`);
//! - bytes that are not UTF-8 → `\xNN` (always 0x80 or above, so never a control's);
//! - C1 controls (U+0080 to U+009F: some terminals take U+009B as CSI), bidirectional
//!   overrides and isolates (which reorder what follows them on screen) and the Unicode
//!   line and paragraph separators, and characters drawn as nothing or as blank space
//!   without being white space (zero-width, default-ignorable, the braille blank) →
//!   `\u{NNNN}`;
//! - everything else as it is.

use std::borrow::Cow;
use std::fmt::Write;

/// `bytes` as a terminal may show them.
pub fn bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `text` as a terminal may show it; borrowed when nothing needed escaping (the usual case).
pub fn text(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| !needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// One escaped argument as a word of a command line: single-quoted (a `'` inside as `'\''`)
/// when it is empty or holds a space or a quote, so that `'a b' c` and `a 'b c'` stay
/// two different command lines on screen.
pub fn word(escaped: &str) -> Cow<'_, str> {
    let plain = !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"');
    if plain {
        return Cow::Borrowed(escaped);
    }
    Cow::Owned(format!("'{}'", escaped.replace('\'', "'\\''")))
}

/// The bytes [`bytes`] escaped; `None` for text it cannot have produced.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next()? {
            '\\' => out.push(b'\\'),
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                if hex.len() != 2 {
                    return None;
                }
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A JSON text made safe for a terminal without changing what it means: the controls a
/// JSON encoder leaves raw inside strings (DEL, C1, bidi, separators) become `\uNNNN`
/// escapes, and a raw C0 control, which valid JSON holds only as whitespace between
/// tokens, becomes a space.
pub fn json(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| !needs_escape(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push(c),
            c if (c as u32) < 0x20 => out.push(' '),
            c if needs_escape(c) => {
                // Outside the BMP as JSON spells it: a surrogate pair.
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(c,
        '\\'
        | '\0'..='\x1f'
        | '\x7f'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
        || invisible(c)
}

/// Characters a terminal draws as nothing or as blank space without being white space
/// (which [`word`] quotes): Unicode's default-ignorable code points (zero-width spaces and
/// joiners, word joiners, variation selectors, tags, the byte-order mark, the soft
/// hyphen) and the blank-looking letters (Hangul fillers, the braille blank). Raw, they
/// made `["a\u{2800}b"]` look like `["a", "b"]` in `ctx ps` (helper-107).
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}'
        | '\u{034f}'
        | '\u{115f}'
        | '\u{1160}'
        | '\u{17b4}'
        | '\u{17b5}'
        | '\u{180b}'..='\u{180f}'
        | '\u{200b}'..='\u{200d}'
        | '\u{2060}'..='\u{2065}'
        | '\u{206a}'..='\u{206f}'
        | '\u{2800}'
        | '\u{3164}'
        | '\u{fe00}'..='\u{fe0f}'
        | '\u{feff}'
        | '\u{ffa0}'
        | '\u{fff0}'..='\u{fff8}'
        | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

fn push_char(out: &mut String, c: char) {
    if !needs_escape(c) {
        out.push(c);
        return;
    }
    let _ = match c {
        '\\' => write!(out, "\\\\"),
        '\n' => write!(out, "\\n"),
        '\t' => write!(out, "\\t"),
        '\r' => write!(out, "\\r"),
        '\0'..='\x1f' | '\x7f' => write!(out, "\\x{:02x}", c as u32),
        _ => write!(out, "\\u{{{:04x}}}", c as u32),
    };
}

#[cfg(test)]
mod word_tests {
    #[test]
    fn words_that_would_merge_are_quoted() {
        let line = |args: &[&str]| {
            args.iter()
                .map(|a| super::word(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line(&["a b", "c"]), "'a b' c");
        assert_eq!(line(&["a", "b c"]), "a 'b c'");
        assert_ne!(line(&["a b", "c"]), line(&["a", "b c"]));
        assert_eq!(line(&["", "it's"]), "'' 'it'\\''s'");
        // A no-break space looks like a space: quoted too.
        assert_eq!(line(&["a\u{a0}b"]), "'a\u{a0}b'");
        assert_eq!(line(&["ls", "-l"]), "ls -l");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bad_bytes_are_escaped_and_nothing_else() {
        assert_eq!(bytes(b"ls -l /tmp"), "ls -l /tmp");
        assert_eq!(
            bytes("caf\u{e9} \u{1f600}".as_bytes()),
            "caf\u{e9} \u{1f600}"
        );
        assert_eq!(bytes(b"a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(bytes(b"\x1b[31mred\x07"), "\\x1b[31mred\\x07");
        assert_eq!(bytes(b"\x7f\x00"), "\\x7f\\x00");
        assert_eq!(bytes(b"\xff\xfe"), "\\xff\\xfe");
        assert_eq!(bytes(b"back\\slash"), "back\\\\slash");
        assert_eq!(bytes("\u{9b}2J".as_bytes()), "\\u{009b}2J");
        assert_eq!(bytes("\u{202e}txt.exe".as_bytes()), "\\u{202e}txt.exe");
        // A cut UTF-8 sequence is bytes, not a replacement character.
        assert_eq!(bytes(&"\u{e9}".as_bytes()[..1]), "\\xc3");
    }

    #[test]
    fn different_bytes_print_differently_and_come_back() {
        let samples: [&[u8]; 9] = [
            b"\xff",
            b"\xfe",
            "\u{fffd}".as_bytes(),
            b"\\xff",
            b"\\",
            b"\n",
            b"\\n",
            "\u{9b}".as_bytes(),
            b"\xc2\x9b\xc2",
        ];
        let shown: Vec<String> = samples.iter().map(|s| bytes(s)).collect();
        for (i, a) in shown.iter().enumerate() {
            for b in &shown[i + 1..] {
                assert_ne!(a, b);
            }
        }
        for (s, e) in samples.iter().zip(&shown) {
            assert_eq!(unescape(e).as_deref(), Some(*s), "{e}");
            assert!(!e.chars().any(needs_escape_but_backslash), "{e:?}");
        }
        assert_eq!(unescape("\\q"), None);
        assert_eq!(unescape("\\x4"), None);
        assert_eq!(unescape("trailing\\"), None);
    }

    fn needs_escape_but_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }

    #[test]
    fn text_borrows_when_clean() {
        assert!(matches!(text("plain"), Cow::Borrowed(_)));
        assert_eq!(text("a\x1b]0;t\x07"), "a\\x1b]0;t\\x07");
    }

    #[test]
    fn json_stays_json_and_holds_no_controls() {
        let value = serde_json::json!({ "argv": ["\u{9b}31m", "\u{202e}", "a\\b\n\x1b"] });
        let line = serde_json::to_string(&value).unwrap();
        let safe = json(&line);
        assert!(!safe.chars().any(needs_escape_but_backslash), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
        assert_eq!(json("{\r\"a\":1}"), "{ \"a\":1}");
        // Outside the BMP: a surrogate pair, as JSON spells it.
        let tagged = serde_json::json!(["a\u{e0041}b", "\u{2800}"]);
        let safe = json(&serde_json::to_string(&tagged).unwrap()).into_owned();
        assert!(safe.contains("\\udb40\\udc41"), "{safe}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            tagged
        );
    }

    /// Invisible characters never pass raw: `["a\u{2800}b"]` must not look like `["a",
    /// "b"]` (helper-107), nor a zero-width space like nothing at all.
    #[test]
    fn invisible_characters_are_escaped() {
        for c in [
            '\u{2800}',
            '\u{200b}',
            '\u{2060}',
            '\u{feff}',
            '\u{3164}',
            '\u{e0041}',
        ] {
            let shown = text(&format!("a{c}b")).into_owned();
            assert_eq!(shown, format!("a\\u{{{:04x}}}b", c as u32));
            assert_eq!(unescape(&shown).unwrap(), format!("a{c}b").into_bytes());
        }
        assert!(matches!(text("é日本"), Cow::Borrowed(_)));
    }
}
