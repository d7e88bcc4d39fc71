//! Durations as `ctx` reads them on its command line (`--timeout`, `ctx log --since`) and
//! writes them in its messages and tables (`1m30s`, `500ms`, `2h`).
//!
//! Not the `humantime` crate: it needs a unit on every number (bare seconds, `--timeout 15`,
//! would stop working), takes what ctx refuses (`10 s`, `0s`, `2days`, `1us`), and writes
//! `1m 30s` with spaces, which would change the tables and messages. The parser is the
//! config's, so `--timeout` and contexts.toml's `timeout` keep one syntax.

/// Parses `500ms`, `30s`, `10m`, `1h`, `1m30s`, or bare seconds, into milliseconds, with
/// the same rules as the config's `timeout`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    crate::config::parse_duration(text.trim()).map(|d| d.as_millis().min(u64::MAX as u128) as u64)
}

/// The inverse of [`parse_duration`], for messages: `1m30s`, `500ms`, `2h`.
pub fn format_duration(ms: u64) -> String {
    let mut out = String::new();
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (milli, "ms")] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(3_723_004));
        assert_eq!(parse_duration("15"), Ok(15_000));
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "10x",
            "1.5s",
            "-1",
            "10 s",
            "m10",
            "99999999999999999999",
            "18446744073709551615s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_format_back() {
        for (ms, text) in [
            (500, "500ms"),
            (30_000, "30s"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (3_723_004, "1h2m3s4ms"),
        ] {
            assert_eq!(format_duration(ms), text);
            assert_eq!(parse_duration(text), Ok(ms));
        }
    }
}
