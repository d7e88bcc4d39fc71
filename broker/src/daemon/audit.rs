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
    file: Mutex<Option<Open>>,
    /// Rotation threshold in bytes; 0 = never rotate.
    max_size: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The open log and how much it holds, counted here rather than `fstat`ed per line.
struct Open {
    file: File,
    size: u64,
    /// Only a regular file rotates (an operator may point the log at a pipe or /dev/null).
    regular: bool,
}

impl Audit {
    pub fn open(path: &Path) -> Audit {
        let audit = Audit {
            path: path.to_path_buf(),
            file: Mutex::new(None),
            max_size: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        let opened = audit.open_file();
        audit.install(opened);
        audit
    }

    /// Sets (or with `None` lifts) the size at which the log rotates; takes effect at the
    /// next event, so a reload can change it.
    pub fn set_max_size(&self, max: Option<u64>) {
        self.max_size.store(max.unwrap_or(0), Ordering::Relaxed);
    }

    /// The file the log rotates into.
    pub fn rotated_path(&self) -> PathBuf {
        rotated_path(&self.path)
    }

    fn open_file(&self) -> Result<Open, String> {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", self.path.display()))?;
        Ok(Open {
            file,
            size: meta.len(),
            regular: meta.is_file(),
        })
    }

    fn install(&self, opened: Result<Open, String>) {
        match opened {
            Ok(open) => *self.lock() = Some(open),
            Err(why) => self.failed(why),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("audit log: {why}");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Appends one event; `time` is added. One `write` per line so concurrent appends from
    /// other broker threads never interleave within a line. A failed write drops this one
    /// event (counted for `ctx status`) rather than hold up the launch it describes.
    pub fn record(&self, mut event: Value) {
        if let Value::Object(map) = &mut event {
            map.insert("time".into(), Value::String(rfc3339_now()));
        }
        // Serialised straight into bytes: `Value`'s Display goes through the formatting
        // machinery, which cost a third more per launch (callgrind).
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        let mut guard = self.lock();
        if guard.is_none() {
            match self.open_file() {
                Ok(open) => *guard = Some(open),
                Err(why) => {
                    drop(guard);
                    return self.failed(why);
                }
            }
        }
        let Some(open) = guard.as_mut() else { return };
        if let Err(e) = open.file.write_all(&line) {
            *guard = None;
            drop(guard);
            return self.failed(format!("cannot write {}: {e}", self.path.display()));
        }
        open.size += line.len() as u64;
        let max = self.max_size.load(Ordering::Relaxed);
        if max > 0 && open.regular && open.size >= max {
            // Under the lock, so no event lands between the rename and the new file:
            // every line is in either the rotated file or the new one.
            self.rotate(&mut guard);
        }
    }

    fn rotate(&self, guard: &mut std::sync::MutexGuard<'_, Option<Open>>) {
        let rotated = self.rotated_path();
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            // Keep appending to the current file; try again after another `max` bytes.
            if let Some(open) = guard.as_mut() {
                open.size = 0;
            }
            let why = format!(
                "cannot rotate {} to {}: {e}",
                self.path.display(),
                rotated.display()
            );
            return self.failed(why);
        }
        match self.open_file() {
            Ok(open) => **guard = Some(open),
            Err(why) => {
                **guard = None;
                self.failed(why);
            }
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
            "audit log: {n} event(s) could not be written (launches went on); last error: {}",
            last.unwrap_or_default()
        ))
    }
}

/// `audit.jsonl` -> `audit.jsonl.1`: the one generation kept, so the log's disk use stays
/// under twice `audit_log_max`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Current UTC time as `2026-11-22T07:51:59.123Z`.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `time` in UTC as `2026-11-22T07:51:59.123Z`: fixed width, so these strings sort as the
/// times they name (what `ctx log --since` relies on).
pub fn rfc3339(time: SystemTime) -> String {
    let now = time.duration_since(UNIX_EPOCH).unwrap_or_default();
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
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::*;
    use serde_json::json;

    fn temp_log(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ctx-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn rotates_at_the_cap_without_losing_a_line() {
        let path = temp_log("rotate");
        let audit = Audit::open(&path);
        // 200 lines of about 90 bytes: one rotation, so the two files hold every event.
        audit.set_max_size(Some(12 * 1024));
        std::thread::scope(|s| {
            for t in 0..4 {
                let audit = &audit;
                s.spawn(move || {
                    for i in 0..50 {
                        audit.record(
                            json!({ "event": "test", "n": t * 1000 + i, "pad": "x".repeat(40) }),
                        );
                    }
                });
            }
        });
        let rotated = lines(&audit.rotated_path());
        let current = lines(&path);
        assert!(
            !rotated.is_empty() && !current.is_empty(),
            "no rotation happened"
        );
        let rotated_size = std::fs::metadata(audit.rotated_path()).unwrap().len();
        assert!(
            (12 * 1024..12 * 1024 + 200).contains(&rotated_size),
            "{rotated_size}"
        );
        let mut seen: Vec<i64> = rotated
            .iter()
            .chain(&current)
            .map(|v| v["n"].as_i64().unwrap())
            .collect();
        seen.sort();
        let expected: Vec<i64> = (0..4)
            .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(seen, expected);
        assert!(audit.health().is_none(), "{:?}", audit.health());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn no_cap_means_no_rotation() {
        let path = temp_log("nocap");
        let audit = Audit::open(&path);
        for i in 0..200 {
            audit.record(json!({ "event": "test", "n": i, "pad": "y".repeat(40) }));
        }
        assert_eq!(lines(&path).len(), 200);
        assert!(!audit.rotated_path().exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_full_disk_is_counted_not_fatal() {
        let audit = Audit::open(Path::new("/dev/full"));
        audit.set_max_size(Some(4096));
        audit.record(json!({ "event": "test" }));
        audit.record(json!({ "event": "test" }));
        let health = audit.health().expect("failures reported");
        assert!(health.contains("2 event(s)"), "{health}");
        assert!(health.contains("No space left"), "{health}");
    }
}
