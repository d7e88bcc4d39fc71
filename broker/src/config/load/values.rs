//! Scalar values with more than one spelling (`user = 1000` or `"1000:1000"`, `timeout =
//! 30` or `"1m30s"`) and the env value types that must never echo a secret.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

// ---------- Scalar: a string or an integer ----------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scalar {
    Str(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------- Env values: strings only, and errors that never quote them ----------

const ENV_VALUE_TYPE: &str =
    "env values must be strings: quote the value (the value is not shown: it may be a secret)";

/// One inline `env` value. serde's own type errors quote the offending value, which here
/// may be a secret, so every non-string is refused with a fixed message instead.
#[derive(Debug, Clone)]
pub(super) struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<EnvValue, E> {
                Err(E::custom(ENV_VALUE_TYPE))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<EnvValue, E> {
                Err(E::custom(ENV_VALUE_TYPE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<EnvValue, E> {
                Err(E::custom(ENV_VALUE_TYPE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<EnvValue, E> {
                Err(E::custom(ENV_VALUE_TYPE))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<EnvValue, A::Error> {
                Err(de::Error::custom(ENV_VALUE_TYPE))
            }
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<EnvValue, A::Error> {
                Err(de::Error::custom(ENV_VALUE_TYPE))
            }
        }
        deserializer.deserialize_any(V)
    }
}

const ENV_TABLE_TYPE: &str =
    "env must be a table of NAME = \"value\" (the value is not shown: it may be a secret)";

/// The inline `env` table in file order, keys and values spanned.
#[derive(Debug, Default)]
pub(super) struct EnvTable(pub Vec<(Spanned<String>, Spanned<EnvValue>)>);

impl<'de> Deserialize<'de> for EnvTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvTable;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvTable, A::Error> {
                let mut vars = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    vars.push((key, map.next_value::<Spanned<EnvValue>>()?));
                }
                Ok(EnvTable(vars))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<EnvTable, E> {
                Err(E::custom(ENV_TABLE_TYPE))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<EnvTable, E> {
                Err(E::custom(ENV_TABLE_TYPE))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<EnvTable, E> {
                Err(E::custom(ENV_TABLE_TYPE))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<EnvTable, E> {
                Err(E::custom(ENV_TABLE_TYPE))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<EnvTable, E> {
                Err(E::custom(ENV_TABLE_TYPE))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<EnvTable, A::Error> {
                Err(de::Error::custom(ENV_TABLE_TYPE))
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------- Durations ----------

const DURATION_HINT: &str =
    "use e.g. \"500ms\", \"30s\", \"10m\", \"2h\", \"1m30s\" or a number of seconds";

/// `"500ms"`, `"30s"`, `"10m"`, `"2h"`, `"1h30m"`; all digits = seconds. Zero is refused:
/// a timeout that fires at once is never what was meant.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let garbage = || format!("{text:?} is not a duration ({DURATION_HINT})");
    if text.is_empty() {
        return Err(garbage());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|_| garbage())?;
        return nonzero(Duration::from_secs(secs), text);
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(garbage());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| garbage())?;
        let per_ms: u64 = match &rest[digits..digits + unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(garbage()),
        };
        total_ms = amount
            .checked_mul(per_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = &rest[digits + unit_len..];
    }
    nonzero(Duration::from_millis(total_ms), text)
}

fn nonzero(duration: Duration, text: &str) -> Result<Duration, String> {
    if duration.is_zero() {
        Err(format!(
            "{text:?} is zero; a timeout must be more than zero (or leave it out for none)"
        ))
    } else {
        Ok(duration)
    }
}

/// A socket mode written as octal digits (`"0660"`). Integers are refused because
/// `socket_mode = 660` reads as decimal and would silently mean mode 01224.
pub(super) fn parse_mode(value: &Scalar) -> Result<u32, String> {
    let text = match value {
        Scalar::Str(text) => text,
        Scalar::Int(n) => {
            return Err(format!(
                "write the mode as a string of octal digits, e.g. \"0{n}\" or \"0660\""
            ))
        }
    };
    let octal =
        !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let mode = if octal {
        u32::from_str_radix(text, 8).ok()
    } else {
        None
    };
    match mode {
        Some(mode) if mode <= 0o777 => Ok(mode),
        Some(_) => Err(format!(
            "{text:?}: setuid/setgid/sticky bits mean nothing on a socket; use permission bits only, e.g. \"0660\""
        )),
        None => Err(format!("{text:?} is not an octal mode (e.g. \"0660\")")),
    }
}

// ---------- Sizes and log levels ----------

/// The smallest audit log cap: below it a rotation would happen every few launches.
const MIN_SIZE: u64 = 4096;

/// An audit log cap: [`parse_bytes`], at least [`MIN_SIZE`].
pub(super) fn parse_size(value: &Scalar) -> Result<u64, String> {
    let bytes = parse_bytes(value)?;
    if bytes < MIN_SIZE {
        return Err(format!(
            "{bytes} bytes is too small to rotate at; use at least \"4K\""
        ));
    }
    Ok(bytes)
}

/// `cpu_max`: `"50%"` of one CPU, `"1.5"` CPUs, or a whole number of CPUs. Returns the
/// percentage of one CPU (150 for 1.5 CPUs).
pub(super) fn parse_cpu(value: &Scalar) -> Result<u32, String> {
    const HINT: &str = "use e.g. \"50%\" (of one CPU), \"1.5\" or 2 (CPUs)";
    let percent = match value {
        Scalar::Int(n) if *n > 0 && *n <= 4096 => (*n as u32) * 100,
        Scalar::Int(n) => return Err(format!("{n} is not a number of CPUs ({HINT})")),
        Scalar::Str(text) => {
            let bad = || format!("{text:?} is not a CPU share ({HINT})");
            let t = text.trim();
            if let Some(p) = t.strip_suffix('%') {
                p.trim().parse::<u32>().map_err(|_| bad())?
            } else {
                let cpus: f64 = t.parse().map_err(|_| bad())?;
                if !(cpus.is_finite() && cpus > 0.0 && cpus <= 4096.0) {
                    return Err(bad());
                }
                (cpus * 100.0).round() as u32
            }
        }
    };
    if percent == 0 {
        return Err(format!("0% would stop the context entirely ({HINT})"));
    }
    Ok(percent)
}

/// `"10M"`, `"512K"`, `"1G"` (powers of 1024, optional `B`/`iB`), or a number of bytes.
pub(super) fn parse_bytes(value: &Scalar) -> Result<u64, String> {
    const HINT: &str = "use e.g. \"10M\", \"512K\", \"1G\" or a number of bytes";
    let bytes = match value {
        Scalar::Int(n) => u64::try_from(*n).map_err(|_| format!("{n} is not a size ({HINT})"))?,
        Scalar::Str(text) => {
            let digits = text.bytes().take_while(u8::is_ascii_digit).count();
            let amount: u64 = text[..digits]
                .parse()
                .map_err(|_| format!("{text:?} is not a size ({HINT})"))?;
            let shift = match text[digits..].trim_start() {
                "" | "B" => 0,
                "K" | "KB" | "KiB" | "k" => 10,
                "M" | "MB" | "MiB" => 20,
                "G" | "GB" | "GiB" => 30,
                _ => return Err(format!("{text:?} is not a size ({HINT})")),
            };
            amount
                .checked_mul(1 << shift)
                .ok_or_else(|| format!("{text:?} is too large"))?
        }
    };
    Ok(bytes)
}

/// The levels `tracing` knows; a full `RUST_LOG` directive belongs in `RUST_LOG`.
pub(super) fn parse_log_level(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let lower = text.to_ascii_lowercase();
    if LEVELS.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!(
            "{text:?} is not a log level (one of {}; per-module filters go in RUST_LOG)",
            LEVELS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |t: &str| parse_duration(t).ok();
        assert_eq!(ok("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(ok("30s"), Some(Duration::from_secs(30)));
        assert_eq!(ok("10m"), Some(Duration::from_secs(600)));
        assert_eq!(ok("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(ok("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(ok("1h2m3s4ms"), Some(Duration::from_millis(3_723_004)));
        assert_eq!(ok("45"), Some(Duration::from_secs(45)));
        for bad in [
            "",
            "0",
            "0s",
            "0m0s",
            "s",
            "10x",
            "1.5h",
            "-5s",
            "10 s",
            "m5",
            "10mm",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        let msg = parse_duration("soon").err().unwrap_or_default();
        assert!(msg.contains("\"soon\"") && msg.contains("30s"), "{msg}");
        let msg = parse_duration("0s").err().unwrap_or_default();
        assert!(msg.contains("zero"), "{msg}");
    }

    #[test]
    fn modes() {
        let s = |t: &str| parse_mode(&Scalar::Str(t.into()));
        assert_eq!(s("0660"), Ok(0o660));
        assert_eq!(s("600"), Ok(0o600));
        assert_eq!(s("0777"), Ok(0o777));
        assert!(s("0668").is_err());
        assert!(s("rw-rw----").is_err());
        assert!(s("").is_err());
        assert!(s("04660").is_err());
        assert!(s("4755").is_err());
        let int = parse_mode(&Scalar::Int(660)).err().unwrap_or_default();
        assert!(int.contains("\"0660\""), "{int}");
    }
}
