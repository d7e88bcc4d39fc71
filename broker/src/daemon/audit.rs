//! The audit log: one JSON object per line for every launch and every refusal. A write that
//! fails (full disk, removed directory) never blocks or fails a launch; it is counted and
//! reported by `ctx status`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub struct Audit {
    path: PathBuf,
    file: Mutex<Option<File>>,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Audit {
    pub fn open(path: &Path) -> Audit {
        let audit = Audit {
            path: path.to_path_buf(),
            file: Mutex::new(None),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        audit.reopen();
        audit
    }

    fn reopen(&self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path);
        match opened {
            Ok(f) => *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Err(e) => self.failed(format!("cannot open {}: {e}", self.path.display())),
        }
    }

    fn failed(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("audit log: {why}");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Appends one event; `time` is added. One `write` per line so concurrent appends from
    /// other broker threads never interleave within a line.
    pub fn record(&self, mut event: Value) {
        if let Value::Object(map) = &mut event {
            map.insert("time".into(), Value::String(rfc3339_now()));
        }
        let mut line = event.to_string();
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            drop(guard);
            self.reopen();
            guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        }
        let result = match guard.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => return,
        };
        if let Err(e) = result {
            *guard = None;
            drop(guard);
            self.failed(format!("cannot write {}: {e}", self.path.display()));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Some(description)` when writes have failed since the broker started.
    pub fn health(&self) -> Option<String> {
        let n = self.failures.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(format!(
            "audit log: {n} event(s) could not be written; last error: {}",
            last.unwrap_or_default()
        ))
    }
}

/// Current UTC time as `2026-11-22T07:51:59.123Z`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Gregorian date of a day count since 1970-01-01 (proleptic calendar, era arithmetic).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }
}
