//! `env_files`: files of `KEY=VALUE` lines, so secrets need not sit in `contexts.toml`.
//!
//! Accepted: blank lines, `#` comment lines, an optional `export ` prefix, spaces around
//! `=`, and a value wrapped in one pair of matching single or double quotes (removed, with
//! no escape processing and no `$VAR` expansion). The values are secrets: an error may
//! name the line and the key, never the value or the raw line.

use super::is_env_name;

/// A refused line; `line` is 1-based.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LineError {
    pub line: usize,
    pub reason: String,
}

/// The file's variables in file order; a later line for the same key replaces the value.
pub(super) fn parse(text: &str) -> Result<Vec<(String, String)>, LineError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let fail = |reason: String| LineError {
            line: index + 1,
            reason,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        let Some((key, value)) = line.split_once('=') else {
            // Without `=` there is no key to name, and the text may be a pasted secret.
            return Err(fail(
                "expected KEY=VALUE (the line is not shown: it may hold a secret)".into(),
            ));
        };
        let key = key.trim_end();
        if !is_env_name(key) {
            return Err(fail(format!(
                "{key:?} is not a variable name (letters, digits and _, not starting with a digit)"
            )));
        }
        let value = unquote(value.trim()).ok_or_else(|| {
            fail(format!(
                "the value of {key} opens a quote that is not closed at the end of the line"
            ))
        })?;
        if value.contains('\0') {
            return Err(fail(format!("the value of {key} contains a NUL byte")));
        }
        match vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => vars.push((key.to_string(), value.to_string())),
        }
    }
    Ok(vars)
}

/// Strips one pair of matching outer quotes; `None` for an opening quote with no close.
fn unquote(value: &str) -> Option<&str> {
    let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return Some(value);
    };
    if value.len() >= 2 && value.ends_with(quote) {
        Some(&value[1..value.len() - 1])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepted_forms() {
        let text = "# comment\n\n  \nA=1\nexport B = two words \nC=\"quoted # not a comment\"\n\
                    D='single'\nE=\nF=\"\"\nA=again\r\nexport=x\nG=a=b\n";
        assert_eq!(
            parse(text),
            Ok(pairs(&[
                ("A", "again"),
                ("B", "two words"),
                ("C", "quoted # not a comment"),
                ("D", "single"),
                ("E", ""),
                ("F", ""),
                ("export", "x"),
                ("G", "a=b"),
            ]))
        );
    }

    #[test]
    fn refused_lines_hide_the_value() {
        let err = parse("A=1\nsk-live-SECRET\n").err();
        let err = err.expect("a line without = is refused");
        assert_eq!(err.line, 2);
        assert!(!err.reason.contains("SECRET"), "{}", err.reason);

        let err = parse("OK=1\n\nTOKEN=\"SECRET\n").err();
        let err = err.expect("an unclosed quote is refused");
        assert_eq!(err.line, 3);
        assert!(err.reason.contains("TOKEN"), "{}", err.reason);
        assert!(!err.reason.contains("SECRET"), "{}", err.reason);

        let err = parse("1BAD=SECRET\n").err();
        let err = err.expect("a bad name is refused");
        assert_eq!(err.line, 1);
        assert!(err.reason.contains("1BAD"), "{}", err.reason);
        assert!(!err.reason.contains("SECRET"), "{}", err.reason);

        let err = parse("A='x'\nB='\0SECRET'\n").err();
        assert_eq!(err.map(|e| e.line), Some(2));
    }

    #[test]
    fn lone_quote_is_unclosed() {
        assert!(parse("A=\"\n").is_err());
        assert!(parse("A='\n").is_err());
        assert_eq!(parse("A=x\"\n"), Ok(pairs(&[("A", "x\"")])));
    }
}
