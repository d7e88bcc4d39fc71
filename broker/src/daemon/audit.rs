//! The audit log: one JSON object per line for every launch and every refusal. A write that
//! fails (full disk, removed directory) never blocks or fails a launch; it is counted and
//! reported by `ctx status`.
//!
//! What a caller chose is bounded before it is written, so nobody can flood the log or
//! rotate the record of what they did out of both generations:
//! - argv keeps its first [`ARGV_KEEP`] bytes (counted as the kernel counts `ARG_MAX`: each
//!   argument and its NUL), with the whole argv's size and count beside it; other text a
//!   caller chose (a context name, a cwd, a message) keeps [`NAME_KEEP`] or [`TEXT_KEEP`]
//!   bytes; any line still over [`MAX_LINE`] keeps only its small fields.
//! - refusals (what a peer allowed into nothing can cause) are metered per caller uid in
//!   bytes of log, [`REFUSAL_BURST`] at once and [`REFUSAL_RATE`] a second after; what is
//!   dropped is counted in a `refusals_suppressed` line, written within a second. Root and
//!   the broker's own uid are never metered.
//! - allowed egress attempts (which a context's process can open as fast as its proxy
//!   accepts them) are metered the same way, per uid on a meter of their own, so a loop of
//!   them neither silences the uid's refusals nor the other way round; what is left out is
//!   summed per context, with the bytes it carried, in an `egress_suppressed` line within
//!   a second. Those lines are charged to the uid's share too: what a uid's egress writes
//!   stays within the burst and the rate.
//! - bytes that are not UTF-8 stay distinguishable: beside the text (with U+FFFD) the line
//!   holds the [`crate::escape`] form, e.g. `"argv_escaped": ["\\xff"]`.
//!
//! What a line holds is an [`AuditEvent`] (shared with `ctx log`); this module stamps each
//! with its `time` and the broker's `run`, a random id made when the log is opened: launch
//! ids start again at 1 with every broker, and the run tells whose launch 3 a line is.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::audit_event::{Argv, AuditEvent, Lossless};

/// Bytes of argv kept per line: each argument's bytes plus one for its NUL, as `ARG_MAX`
/// counts them. Enough for any command line a person reads; a 3 MiB argv is not.
pub const ARGV_KEEP: usize = 4096;
/// Bytes kept of a context name a caller sent (a config's names are far shorter).
pub const NAME_KEEP: usize = 256;
/// Argv bytes a launch keeps once its party is over its budget.
pub const COMPACT_ARGV_KEEP: usize = 256;
/// Argv bytes one party's launches may log in full at once...
pub const LAUNCH_ARGV_BURST: f64 = 1024.0 * 1024.0;
/// ...and then per second.
pub const LAUNCH_ARGV_RATE: f64 = 64.0 * 1024.0;
/// Bytes kept of other caller-chosen text: a cwd (`PATH_MAX`), a failure's message.
pub const TEXT_KEEP: usize = 4096;
/// No line is longer: one that would be keeps its small fields and says what it left out.
/// (Worst case of the caps above: argv of bytes that are not UTF-8, 8 bytes of JSON each.)
pub const MAX_LINE: usize = 64 * 1024;
/// A field of an oversized line is kept when its JSON is at most this long.
const OVERSIZED_FIELD_KEEP: usize = 1024;
/// Bytes of refusal lines one uid may have written at once...
pub const REFUSAL_BURST: f64 = 64.0 * 1024.0;
/// ...and per second after that.
pub const REFUSAL_RATE: f64 = 4.0 * 1024.0;
/// Bytes of allowed egress lines one uid may have written at once...
pub const EGRESS_BURST: f64 = 64.0 * 1024.0;
/// ...and per second after that.
pub const EGRESS_RATE: f64 = 4.0 * 1024.0;
/// How soon a count of suppressed refusals reaches the log when no refusal follows.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// This broker run's id, on every line.
    run: String,
    /// Per launching party (a context, or a uid outside every context): argv bytes logged
    /// in full lately, a token bucket (see [`Audit::argv_keep`]).
    launch_argv: Mutex<std::collections::HashMap<String, (f64, Instant)>>,
    file: Mutex<Option<Open>>,
    /// Rotation threshold in bytes; 0 = never rotate.
    max_size: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    refusals: Mutex<Refusals>,
    egress: Mutex<EgressMeter>,
}

/// The open log and how much it holds, counted here rather than `fstat`ed per line.
struct Open {
    file: File,
    size: u64,
    /// Only a regular file rotates (an operator may point the log at a pipe or /dev/null).
    regular: bool,
}

/// The refusal meter: one token bucket of log bytes per uid that has been refused lately.
#[derive(Default)]
struct Refusals {
    buckets: HashMap<u32, Bucket>,
    /// A thread is on its way to write the counts of suppressed lines.
    summarising: bool,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Lines (and their bytes) left out since the last count was written.
    lines: u64,
    bytes: u64,
}

/// The meter of allowed egress lines: a token bucket of log bytes per uid, and what it left
/// out, per context.
#[derive(Default)]
struct EgressMeter {
    buckets: HashMap<u32, EgressBucket>,
    /// A thread is on its way to write the sums of suppressed lines.
    summarising: bool,
}

struct EgressBucket {
    /// Below zero after a summary the bucket could not pay for: a summary is never left
    /// out (it is what stands for the lines that were), so it is paid for afterwards.
    tokens: f64,
    last: Instant,
    left_out: std::collections::BTreeMap<String, EgressTally>,
}

/// Egress lines of one context left out: what an `egress_suppressed` line says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct EgressTally {
    count: u64,
    bytes: u64,
    bytes_up: u64,
    bytes_down: u64,
}

/// Lines of one uid left out of the log: what a `refusals_suppressed` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suppressed {
    uid: u32,
    lines: u64,
    bytes: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Write the line, after the count of those suppressed before it.
    Write(Option<Suppressed>),
    /// Leave it out; `true` when no thread is yet due to write the count.
    Suppress { summarise: bool },
}

impl Audit {
    pub fn open(path: &Path) -> Audit {
        let inner = Inner {
            path: path.to_path_buf(),
            run: new_run_id(),
            file: Mutex::new(None),
            max_size: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            refusals: Mutex::new(Refusals::default()),
            egress: Mutex::new(EgressMeter::default()),
            launch_argv: Mutex::new(Default::default()),
        };
        let opened = inner.open_file();
        inner.install(opened);
        Audit {
            inner: Arc::new(inner),
        }
    }

    /// Sets (or with `None` lifts) the size at which the log rotates; takes effect at the
    /// next event, so a reload can change it.
    pub fn set_max_size(&self, max: Option<u64>) {
        self.inner
            .max_size
            .store(max.unwrap_or(0), Ordering::Relaxed);
    }

    /// The id every line of this broker run carries (`run`).
    pub fn run(&self) -> &str {
        &self.inner.run
    }

    /// The file the log rotates into.
    pub fn rotated_path(&self) -> PathBuf {
        rotated_path(&self.inner.path)
    }

    /// Appends one event; `time` is added. For launches, reloads and kills: what a caller
    /// was allowed to do is always written. A failed write drops this one event (counted
    /// for `ctx status`) rather than hold up the launch it describes.
    pub fn record(&self, event: AuditEvent) {
        self.inner.append(&line(&event, &self.inner.run));
    }

    /// How many argv bytes to keep in the record of a launch by `party` (a context's name,
    /// or `uid:N` outside every context; `None` for the operator, never metered): 4 KiB
    /// while the party's recent launches stay within [`LAUNCH_ARGV_BURST`] and
    /// [`LAUNCH_ARGV_RATE`], then [`COMPACT_ARGV_KEEP`]. Every launch is still recorded,
    /// with its digest, argc and size: only what lets a busy party push older events out of
    /// the rotated log faster is cut.
    pub fn argv_keep(&self, party: Option<&str>, argv_bytes: usize) -> usize {
        let Some(party) = party else { return ARGV_KEEP };
        let want = argv_bytes.min(ARGV_KEEP) as f64;
        let now = Instant::now();
        let mut map = self
            .inner
            .launch_argv
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() > 4096 {
            map.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(600));
        }
        let (tokens, at) = map
            .entry(party.to_string())
            .or_insert((LAUNCH_ARGV_BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * LAUNCH_ARGV_RATE)
            .min(LAUNCH_ARGV_BURST);
        *at = now;
        if *tokens >= want {
            *tokens -= want;
            ARGV_KEEP
        } else {
            COMPACT_ARGV_KEEP
        }
    }

    /// Appends the event of a refusal charged to `uid`, within that uid's share of the log
    /// (see the module's notes): what a peer allowed into nothing can make the broker
    /// write. `None`: the operator's, never metered.
    pub fn record_refusal(&self, charged: Option<u32>, event: AuditEvent) {
        let Some(uid) = charged else {
            return self.record(event);
        };
        let line = line(&event, &self.inner.run);
        let admission = self.inner.meter().admit(uid, line.len(), Instant::now());
        match admission {
            Admission::Write(before) => {
                if let Some(s) = before {
                    self.inner.append(&summary_line(s, &self.inner.run));
                }
                self.inner.append(&line);
            }
            Admission::Suppress { summarise: true } => self
                .start_summariser(Inner::refusals_due, |inner| {
                    inner.meter().summarising = false
                }),
            Admission::Suppress { summarise: false } => {}
        }
    }

    /// Appends the line of an allowed egress attempt of `uid`, within that uid's share of
    /// the log for them (see the module's notes); past it, the attempt is summed into its
    /// context's next `egress_suppressed` line. Any other event is written as it is. An
    /// egress attempt always comes from a context's process: a uid-0 one is metered too.
    pub fn record_egress(&self, uid: u32, event: AuditEvent) {
        let AuditEvent::Egress {
            context,
            bytes_up,
            bytes_down,
            ..
        } = &event
        else {
            return self.record(event);
        };
        let line = line(&event, &self.inner.run);
        let attempt = EgressTally {
            count: 1,
            bytes: line.len() as u64,
            bytes_up: *bytes_up,
            bytes_down: *bytes_down,
        };
        let now = Instant::now();
        let (write, summarise) = {
            let mut meter = self.inner.egress_meter();
            let written = meter.admit(uid, context, attempt, now, &self.inner.run);
            match written {
                Some(mut lines) => {
                    lines.push(line);
                    (lines, false)
                }
                None => {
                    let summarise = !meter.summarising;
                    meter.summarising = true;
                    (Vec::new(), summarise)
                }
            }
        };
        for l in write {
            self.inner.append(&l);
        }
        if summarise {
            self.start_summariser(Inner::egress_due, |inner| {
                inner.egress_meter().summarising = false
            });
        }
    }

    /// A thread that writes what `due` gives (the counts of suppressed lines) every
    /// [`SUMMARY_EVERY`] and ends once it gives nothing: a flood that stops is still
    /// counted in the log, without a thread for the broker's lifetime. `failed` undoes the
    /// meter's note that a thread is on its way.
    fn start_summariser(&self, due: fn(&Inner, Instant) -> Vec<Vec<u8>>, failed: fn(&Inner)) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("ctx-audit-summary".into())
            .spawn(move || loop {
                std::thread::sleep(SUMMARY_EVERY);
                let Some(inner) = weak.upgrade() else { return };
                let lines = due(&inner, Instant::now());
                if lines.is_empty() {
                    return;
                }
                for l in lines {
                    inner.append(&l);
                }
            });
        if spawned.is_err() {
            // The count is written before the uid's next admitted line instead.
            failed(&self.inner);
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `Some(description)` when writes have failed since the broker started.
    pub fn health(&self) -> Option<String> {
        let n = self.inner.failures.load(Ordering::Relaxed);
        if n == 0 {
            return None;
        }
        let last = self
            .inner
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

impl Drop for Audit {
    fn drop(&mut self) {
        // A broker that stops mid-flood still says how much it left out.
        let now = Instant::now();
        for l in Inner::refusals_due(&self.inner, now) {
            self.inner.append(&l);
        }
        for l in Inner::egress_due(&self.inner, now) {
            self.inner.append(&l);
        }
    }
}

impl Inner {
    fn open_file(&self) -> Result<Open, String> {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open = |follow: bool| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(
                    libc::O_CLOEXEC | libc::O_NONBLOCK | if follow { 0 } else { libc::O_NOFOLLOW },
                )
                .open(&self.path)
        };
        // Root appends here: a link is followed only where no one but root could have
        // made it (the operator's `/dev/stderr`), never one planted in a directory that a
        // context's uid can write.
        let file = match open(false) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) && self.parent_is_roots() => open(true),
            other => other,
        }
        .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", self.path.display()))?;
        // In a directory others can write, O_NOFOLLOW is not enough: the entry may be a hard
        // link to a file root must not append to, or a file the context made. Only the
        // broker's own, single-named regular file is written there.
        if !self.parent_is_roots() {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: plain getter.
            let me = unsafe { libc::geteuid() };
            if !meta.is_file() || meta.nlink() != 1 || meta.uid() != me {
                return Err(format!(
                    "refusing {}: it lies in a directory others can write and is not a \
                     regular file of the broker's own with one name; put the audit log in a \
                     root-owned directory such as /var/log/ctx",
                    self.path.display()
                ));
            }
        }
        Ok(Open {
            file,
            size: meta.len(),
            regular: meta.is_file(),
        })
    }

    fn parent_is_roots(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let dir = self.path.parent().unwrap_or(std::path::Path::new("/"));
        std::fs::metadata(dir).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
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

    fn meter(&self) -> std::sync::MutexGuard<'_, Refusals> {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn egress_meter(&self) -> std::sync::MutexGuard<'_, EgressMeter> {
        self.egress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `refusals_suppressed` lines due now.
    fn refusals_due(&self, now: Instant) -> Vec<Vec<u8>> {
        let due = self.meter().take_due(now);
        due.into_iter()
            .map(|s| summary_line(s, &self.run))
            .collect()
    }

    /// The `egress_suppressed` lines due now.
    fn egress_due(&self, now: Instant) -> Vec<Vec<u8>> {
        self.egress_meter().take_due(now, &self.run)
    }

    fn failed(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("audit log: {why}");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// One `write` per line so concurrent appends from other broker threads never
    /// interleave within a line.
    fn append(&self, line: &[u8]) {
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
        if let Err(e) = open.file.write_all(line) {
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
        let rotated = rotated_path(&self.path);
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
}

impl Refusals {
    fn admit(&mut self, uid: u32, cost: usize, now: Instant) -> Admission {
        if self.buckets.len() >= 1024 {
            // Only uids refused in the last burst-refill time are here; a full bucket with
            // nothing to report is the same as none.
            self.buckets
                .retain(|_, b| b.lines > 0 || b.level(now) < REFUSAL_BURST);
        }
        let bucket = self.buckets.entry(uid).or_insert(Bucket {
            tokens: REFUSAL_BURST,
            last: now,
            lines: 0,
            bytes: 0,
        });
        bucket.tokens = bucket.level(now);
        bucket.last = now;
        let cost = cost as f64;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            let before = (bucket.lines > 0).then(|| Suppressed {
                uid,
                lines: std::mem::take(&mut bucket.lines),
                bytes: std::mem::take(&mut bucket.bytes),
            });
            Admission::Write(before)
        } else {
            bucket.lines += 1;
            bucket.bytes += cost as u64;
            let summarise = !self.summarising;
            self.summarising = true;
            Admission::Suppress { summarise }
        }
    }

    /// Every uid's count of suppressed lines, taken; an empty list also ends the
    /// summariser (under this lock, so a suppression after it starts a new one).
    fn take_due(&mut self, now: Instant) -> Vec<Suppressed> {
        let mut due = Vec::new();
        for (&uid, b) in self.buckets.iter_mut() {
            if b.lines > 0 {
                due.push(Suppressed {
                    uid,
                    lines: std::mem::take(&mut b.lines),
                    bytes: std::mem::take(&mut b.bytes),
                });
            }
        }
        self.buckets
            .retain(|_, b| b.lines > 0 || b.level(now) < REFUSAL_BURST);
        if due.is_empty() {
            self.summarising = false;
        }
        due.sort_by_key(|s| s.uid);
        due
    }
}

impl EgressMeter {
    /// The lines to write for `attempt` (of `context`, whose line is `attempt.bytes` long):
    /// `Some` with the context's sums of what was left out before it, to be written first,
    /// when the uid's share has room for its line; `None` when it is left out (and summed).
    fn admit(
        &mut self,
        uid: u32,
        context: &str,
        attempt: EgressTally,
        now: Instant,
        run: &str,
    ) -> Option<Vec<Vec<u8>>> {
        if self.buckets.len() >= 1024 {
            self.buckets
                .retain(|_, b| !b.left_out.is_empty() || b.level(now) < EGRESS_BURST);
        }
        let bucket = self.buckets.entry(uid).or_insert(EgressBucket {
            tokens: EGRESS_BURST,
            last: now,
            left_out: Default::default(),
        });
        bucket.tokens = bucket.level(now);
        bucket.last = now;
        let cost = attempt.bytes as f64;
        if bucket.tokens < cost {
            let tally = bucket.left_out.entry(context.to_string()).or_default();
            tally.count += attempt.count;
            tally.bytes += attempt.bytes;
            tally.bytes_up += attempt.bytes_up;
            tally.bytes_down += attempt.bytes_down;
            return None;
        }
        bucket.tokens -= cost;
        Some(bucket.summaries(uid, run))
    }

    /// Every uid's sums of suppressed lines, as lines, taken and charged; none also ends
    /// the summariser (under this lock, so a suppression after it starts a new one).
    fn take_due(&mut self, now: Instant, run: &str) -> Vec<Vec<u8>> {
        let mut uids: Vec<u32> = self.buckets.keys().copied().collect();
        uids.sort_unstable();
        let mut due = Vec::new();
        for uid in uids {
            if let Some(b) = self.buckets.get_mut(&uid) {
                b.tokens = b.level(now);
                b.last = now;
                due.extend(b.summaries(uid, run));
            }
        }
        self.buckets
            .retain(|_, b| !b.left_out.is_empty() || b.level(now) < EGRESS_BURST);
        if due.is_empty() {
            self.summarising = false;
        }
        due
    }
}

impl EgressBucket {
    fn level(&self, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * EGRESS_RATE;
        (self.tokens + refill).min(EGRESS_BURST)
    }

    /// The `egress_suppressed` line of each context with lines left out, which are then
    /// forgotten; their bytes are charged to the bucket.
    fn summaries(&mut self, uid: u32, run: &str) -> Vec<Vec<u8>> {
        let lines: Vec<Vec<u8>> = std::mem::take(&mut self.left_out)
            .into_iter()
            .map(|(context, t)| {
                let event = AuditEvent::EgressSuppressed {
                    context,
                    uid,
                    count: t.count,
                    bytes_up: t.bytes_up,
                    bytes_down: t.bytes_down,
                    bytes: t.bytes,
                };
                line(&event, run)
            })
            .collect();
        self.tokens -= lines.iter().map(|l| l.len() as f64).sum::<f64>();
        lines
    }
}

impl Bucket {
    fn level(&self, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * REFUSAL_RATE;
        (self.tokens + refill).min(REFUSAL_BURST)
    }
}

/// `event` with its `time` and `run`, as one line of JSON; never longer than [`MAX_LINE`].
fn line(event: &AuditEvent, run: &str) -> Vec<u8> {
    // Through a `Value`: its map keeps the keys sorted, as the lines have always been, and
    // an oversized line can be cut field by field.
    let mut event = serde_json::to_value(event).unwrap_or_default();
    if let Value::Object(map) = &mut event {
        map.insert("time".into(), Value::String(rfc3339_now()));
        map.insert("run".into(), Value::String(run.to_string()));
    }
    // Serialised straight into bytes: `Value`'s Display goes through the formatting
    // machinery, which cost a third more per launch (callgrind).
    let mut line = serde_json::to_vec(&event).unwrap_or_default();
    if line.len() > MAX_LINE {
        line = serde_json::to_vec(&shrunk(event, line.len())).unwrap_or_default();
    }
    // The JSON encoder leaves C1 controls and bidirectional overrides raw inside strings:
    // an operator's `tail -f` or `jq -r` of the file would hand a caller's bytes to the
    // terminal (helper-106). Escaped, the line means the same.
    if let Ok(text) = std::str::from_utf8(&line) {
        if let std::borrow::Cow::Owned(safe) = crate::escape::json(text) {
            line = safe.into_bytes();
        }
    }
    line.push(b'\n');
    line
}

/// An oversized event with each field whose JSON is long replaced by its size: the caps
/// at the call sites should make this unreachable, so it guards against one they miss.
fn shrunk(event: Value, size: usize) -> Value {
    let Value::Object(map) = event else {
        return json!({ "event": "oversized", "bytes": size });
    };
    let mut small = Map::new();
    for (key, value) in map {
        let len = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        if len <= OVERSIZED_FIELD_KEEP {
            small.insert(key, value);
        } else {
            small.insert(key, json!({ "omitted_bytes": len }));
        }
    }
    small.insert("oversized".into(), json!({ "bytes": size }));
    Value::Object(small)
}

fn summary_line(s: Suppressed, run: &str) -> Vec<u8> {
    let event = AuditEvent::RefusalsSuppressed {
        uid: s.uid,
        count: s.lines,
        bytes: s.bytes,
    };
    line(&event, run)
}

/// A fresh id for a broker run: 64 random bits in hex. Not the start time and pid: a broker
/// that is a container's PID 1 has pid 1 at every start, and a clock can be unset or go
/// back, so those could name two runs alike; random bits need no state and say nothing.
fn new_run_id() -> String {
    let mut bits = [0u8; 8];
    // SAFETY: writes at most `bits.len()` bytes into `bits`.
    let got = unsafe { libc::getrandom(bits.as_mut_ptr().cast(), bits.len(), 0) };
    if got != bits.len() as isize {
        // No getrandom (an old kernel's seccomp filter): the clock's nanoseconds and the
        // pid still set this run apart from the ones before it on this log.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bits = (now ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    }
    bits.iter().map(|b| format!("{b:02x}")).collect()
}

/// `argv`'s audit fields: `argv` (text, at most [`ARGV_KEEP`] bytes of it); `argv_escaped`
/// beside it when an argument is not UTF-8; when it was cut, `argv_truncated`, `argc`,
/// `argv_bytes` (the whole argv's size, without NULs) and `argv_sha256`.
pub fn argv<A: AsRef<[u8]>>(argv: &[A]) -> Argv {
    argv_kept(argv, ARGV_KEEP)
}

/// [`argv`], keeping at most `keep` bytes of it.
pub fn argv_kept<A: AsRef<[u8]>>(argv: &[A], keep: usize) -> Argv {
    let mut budget = keep.max(1);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut cut = false;
    for arg in argv.iter().map(AsRef::as_ref) {
        if budget == 0 {
            cut = true;
            break;
        }
        if arg.len() < budget {
            kept.push(arg);
            budget -= arg.len() + 1;
        } else {
            kept.push(clip(arg, budget - 1));
            cut = true;
            budget = 0;
        }
    }
    let mut logged = Argv {
        argv: kept
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        ..Argv::default()
    };
    if kept.iter().any(|a| std::str::from_utf8(a).is_err()) {
        logged.argv_escaped = Some(kept.iter().map(|a| crate::escape::bytes(a)).collect());
    }
    if cut {
        logged.argv_truncated = true;
        logged.argc = Some(argv.len() as u64);
        let total: usize = argv.iter().map(|a| a.as_ref().len()).sum();
        logged.argv_bytes = Some(total as u64);
        // Two argvs that differ only past the cut must still differ in the log.
        logged.argv_sha256 = Some(argv_digest(argv));
    }
    logged
}

/// SHA-256 of the whole argv as the kernel lays it out (each argument and its NUL), hex.
pub fn argv_digest<A: AsRef<[u8]>>(argv: &[A]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for arg in argv {
        h.update(arg.as_ref());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `bytes` as text (at most `keep` bytes of it), with their escaped form when they are not
/// UTF-8 and their whole size when they were cut: a field's `KEY`, `KEY_escaped` and
/// `KEY_bytes` (see [`crate::audit_event::Lossless`]).
pub fn lossless(bytes: &[u8], keep: usize) -> Lossless {
    let kept = clip(bytes, keep);
    Lossless {
        text: String::from_utf8_lossy(kept).into_owned(),
        escaped: std::str::from_utf8(kept)
            .is_err()
            .then(|| crate::escape::bytes(kept)),
        bytes: (kept.len() < bytes.len()).then_some(bytes.len() as u64),
    }
}

/// The first `keep` bytes of `b`, or a few fewer so as not to cut a character in two (a
/// cut one would read as bytes that are not UTF-8, which the whole text does not hold).
fn clip(b: &[u8], keep: usize) -> &[u8] {
    if b.len() <= keep {
        return b;
    }
    let mut cut = keep;
    while cut > 0 && keep - cut < 3 && b[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    let whole_char_at_cut = std::str::from_utf8(&b[cut..b.len().min(cut + 4)])
        .map_or_else(|e| e.valid_up_to() > 0, |_| true);
    if cut < keep && whole_char_at_cut {
        &b[..cut]
    } else {
        &b[..keep]
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
/// times they name (what `ctx log --since` relies on). Clamped to the years 1970-9999,
/// the range that format (and `humantime`, which would panic outside it) can write.
pub fn rfc3339(time: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_millis(time.clamp(UNIX_EPOCH, last)).to_string()
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn times_are_fixed_width_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_709_164_800, 5), "2024-02-29T00:00:00.005Z");
        assert_eq!(at(1_763_797_919, 123), "2025-11-22T07:51:59.123Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100)),
            "9999-12-31T23:59:59.000Z"
        );
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    /// A small event numbered `n`.
    fn numbered(n: u32) -> AuditEvent {
        AuditEvent::RefusalsSuppressed {
            uid: n,
            count: 0,
            bytes: 0,
        }
    }

    /// A log in a directory this test made itself, in the shared temp directory (these
    /// tests run as root): whatever another user planted under the name is removed
    /// without following it (std's `remove_dir_all` does not follow links), and the
    /// `mkdir` after fails, never follows, should a link be planted again in between.
    pub(super) fn temp_log(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ctx-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    /// A link planted under the name `temp_log` uses, into a directory of someone else's:
    /// the log is made in a fresh directory of its own, and nothing lands in theirs.
    #[test]
    fn a_link_planted_under_the_temp_logs_name_is_not_followed() {
        let theirs = std::env::temp_dir().join(format!("ctx-audit-theirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&theirs);
        std::fs::create_dir(&theirs).unwrap();
        let name =
            std::env::temp_dir().join(format!("ctx-audit-planted-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&name);
        std::os::unix::fs::symlink(&theirs, &name).unwrap();
        let path = temp_log("planted-link");
        let audit = Audit::open(&path);
        audit.record(numbered(1));
        let dir = std::fs::symlink_metadata(&name).unwrap();
        assert!(dir.is_dir() && !dir.file_type().is_symlink());
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&name);
        let _ = std::fs::remove_dir_all(&theirs);
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
        // 200 lines of about 110 bytes: one rotation, so the two files hold every event.
        audit.set_max_size(Some(12 * 1024));
        std::thread::scope(|s| {
            for t in 0..4 {
                let audit = &audit;
                s.spawn(move || {
                    for i in 0..50 {
                        audit.record(numbered(t * 1000 + i));
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
            .map(|v| v["uid"].as_i64().unwrap())
            .collect();
        seen.sort();
        let expected: Vec<i64> = (0..4)
            .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(seen, expected);
        // One broker run, named on every line.
        assert!(rotated
            .iter()
            .chain(&current)
            .all(|v| v["run"] == audit.run()));
        assert!(audit.health().is_none(), "{:?}", audit.health());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A link planted where the log goes, in a directory others can write: root never
    /// appends through it (it would write its JSON into whatever file the link names).
    #[test]
    fn a_planted_link_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_log("planted");
        let dir = path.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let audit = Audit::open(&path);
        audit.record(numbered(0));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        assert!(audit.health().is_some(), "the failure is reported");
        // A hard link is no better than a symlink there.
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&victim, &path).unwrap();
        let audit = Audit::open(&path);
        audit.record(numbered(0));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        assert!(audit.health().is_some(), "the failure is reported");
        // The broker's own new file there is fine.
        std::fs::remove_file(&path).unwrap();
        let audit = Audit::open(&path);
        audit.record(numbered(0));
        assert!(audit.health().is_none(), "{:?}", audit.health());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn no_cap_means_no_rotation() {
        let path = temp_log("nocap");
        let audit = Audit::open(&path);
        for i in 0..200 {
            audit.record(numbered(i));
        }
        assert_eq!(lines(&path).len(), 200);
        assert!(!audit.rotated_path().exists());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_full_disk_is_counted_not_fatal() {
        let audit = Audit::open(Path::new("/dev/full"));
        audit.set_max_size(Some(4096));
        audit.record(numbered(0));
        audit.record(numbered(0));
        let health = audit.health().expect("failures reported");
        assert!(health.contains("2 event(s)"), "{health}");
        assert!(health.contains("No space left"), "{health}");
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;
    use crate::audit_event::{Caller, Message};

    fn refused(argv: Argv) -> AuditEvent {
        AuditEvent::Refused {
            reason: "not allowed".into(),
            caller: Caller {
                pid: 1,
                uid: 1000,
                gid: 1000,
                context: None,
                cgroup_context: None,
                confined_root: false,
            },
            context: Some("c".to_string().into()),
            argv: Some(argv),
            ids: None,
            signal: None,
        }
    }

    #[test]
    fn a_huge_argv_keeps_its_head_its_size_and_its_count() {
        let big = vec![b'A'; 128 * 1024];
        let argv: Vec<&[u8]> = std::iter::repeat_n(&big[..], 24).collect();
        let e = super::argv(&argv);
        assert_eq!(e.argv.len(), 1);
        assert_eq!(e.argv[0].len(), ARGV_KEEP - 1);
        assert!(e.argv_truncated);
        assert_eq!(e.argc, Some(24));
        assert_eq!(e.argv_bytes, Some(24 * 128 * 1024));
        assert!(e.argv_escaped.is_none());
        // Many empty arguments cost their NULs.
        let empties = vec![b"".as_slice(); 1_000_000];
        let e = super::argv(&empties);
        assert_eq!(e.argv.len(), ARGV_KEEP);
        assert_eq!(e.argc, Some(1_000_000));
        // A short argv is as it was, with no extra fields.
        let e = super::argv(&[b"ls".as_slice(), b"-l"]);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({ "argv": ["ls", "-l"] })
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_stay_apart() {
        let ff = super::argv(&[b"echo".as_slice(), b"\xff"]);
        let fe = super::argv(&[b"echo".as_slice(), b"\xfe"]);
        assert_eq!(ff.argv, fe.argv, "the text is lossy by nature");
        assert_eq!(ff.argv_escaped, Some(vec!["echo".into(), "\\xff".into()]));
        assert_eq!(fe.argv_escaped, Some(vec!["echo".into(), "\\xfe".into()]));
        let cwd = lossless(b"/tmp/\xff", TEXT_KEEP);
        assert_eq!(cwd.escaped.as_deref(), Some("/tmp/\\xff"));
        assert!(lossless(b"/tmp", TEXT_KEEP).escaped.is_none());
        // Under the field's own names in the line.
        let cwd: crate::audit_event::Cwd = cwd.into();
        let v = serde_json::to_value(&cwd).unwrap();
        assert_eq!(v["cwd_escaped"], "/tmp/\\xff");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let text = "\u{e9}".repeat(10);
        for keep in 0..text.len() {
            let kept = clip(text.as_bytes(), keep);
            assert!(std::str::from_utf8(kept).is_ok(), "{keep}");
            assert!(kept.len() + 1 >= keep, "{keep}");
        }
        // Bytes that were never UTF-8 are cut where asked.
        assert_eq!(clip(b"\x80\x80\x80\x80\x80", 3).len(), 3);
        let name = lossless("x".repeat(10_000).as_bytes(), NAME_KEEP);
        assert_eq!(name.text.len(), NAME_KEEP);
        assert_eq!(name.bytes, Some(10_000));
        let name: crate::audit_event::ContextName = name.into();
        assert_eq!(
            serde_json::to_value(&name).unwrap()["context_bytes"],
            10_000
        );
    }

    #[test]
    fn no_line_is_longer_than_the_cap() {
        // The caps at the call sites keep a message far shorter; this one missed them.
        let e = AuditEvent::ExecFailed {
            caller: Caller {
                pid: 1,
                uid: 0,
                gid: 0,
                context: None,
                cgroup_context: None,
                confined_root: false,
            },
            context: "c".into(),
            kind: "NotFound".into(),
            stage: "exec".into(),
            errno: "ENOENT".into(),
            duration_ms: 1,
            message: Message::from("m".repeat(MAX_LINE)),
            argv: super::argv(&["x"]),
        };
        let l = line(&e, "0123456789abcdef");
        assert!(l.len() <= MAX_LINE, "{}", l.len());
        let v: Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["context"], "c");
        assert_eq!(v["event"], "exec_failed");
        assert_eq!(v["run"], "0123456789abcdef");
        assert!(v["message"]["omitted_bytes"].as_u64().unwrap() > MAX_LINE as u64);
        assert!(v["oversized"]["bytes"].as_u64().is_some());
        // The worst argv the caps allow fits whole.
        let worst: Vec<&[u8]> = vec![b"\xff".as_slice(); 2 * ARGV_KEEP];
        assert!(line(&refused(super::argv(&worst)), "r").len() <= MAX_LINE);
        let worst = vec![b"\x01".repeat(ARGV_KEEP)];
        assert!(line(&refused(super::argv(&worst)), "r").len() <= MAX_LINE);
    }

    #[test]
    fn lines_keep_their_sorted_keys_and_read_back() {
        let l = line(&refused(super::argv(&["ls"])), "00000000000000ff");
        let text = std::str::from_utf8(&l).unwrap();
        assert!(
            text.starts_with(r#"{"argv":["ls"],"caller":{"cgroup_context":null,"context":null,"#),
            "{text}"
        );
        assert!(text.contains(r#""event":"refused""#), "{text}");
        let back: crate::audit_event::Line = serde_json::from_str(text).unwrap();
        assert_eq!(back.run.as_deref(), Some("00000000000000ff"));
        assert_eq!(back.event, refused(super::argv(&["ls"])));
    }

    #[test]
    fn runs_have_distinct_ids() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_meter_allows_a_burst_then_the_rate_and_counts_the_rest() {
        let mut m = Refusals::default();
        let t0 = Instant::now();
        let line = 4096;
        let burst = REFUSAL_BURST as usize / line;
        for _ in 0..burst {
            assert_eq!(m.admit(1000, line, t0), Admission::Write(None));
        }
        assert_eq!(
            m.admit(1000, line, t0),
            Admission::Suppress { summarise: true }
        );
        assert_eq!(
            m.admit(1000, line, t0),
            Admission::Suppress { summarise: false }
        );
        // Another uid has its own share.
        assert_eq!(m.admit(1001, line, t0), Admission::Write(None));
        // A second later the rate has refilled one line; the count comes first.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            m.admit(1000, line, t1),
            Admission::Write(Some(Suppressed {
                uid: 1000,
                lines: 2,
                bytes: 2 * line as u64
            }))
        );
        assert_eq!(m.take_due(t1), vec![]);
        assert!(!m.summarising);
        // Suppressed, then taken by the summariser.
        m.admit(1000, line, t1);
        assert_eq!(
            m.take_due(t1),
            vec![Suppressed {
                uid: 1000,
                lines: 1,
                bytes: line as u64
            }]
        );
        // Buckets that refilled are forgotten.
        let later = t1 + Duration::from_secs(60);
        assert_eq!(m.take_due(later), vec![]);
        assert!(m.buckets.is_empty());
    }

    #[test]
    fn a_refusal_flood_is_metered_and_counted_but_root_is_not() {
        let dir = std::env::temp_dir().join(format!("ctx-audit-meter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let audit = Audit::open(&path);
        let big = vec![b'A'; 1024 * 1024];
        for _ in 0..100 {
            audit.record_refusal(Some(4242), refused(super::argv(&[&big])));
        }
        for _ in 0..100 {
            audit.record_refusal(None, refused(super::argv(&[&big])));
        }
        drop(audit);
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let refused = lines.iter().filter(|l| l["event"] == "refused").count();
        let summary: Vec<&Value> = lines
            .iter()
            .filter(|l| l["event"] == "refusals_suppressed")
            .collect();
        // One summary per second of flood: more than one on a machine slow enough that
        // the 100 refusals (each a 1 MiB argv to hash) span a summary tick.
        assert!(!summary.is_empty(), "{lines:?}");
        assert!(summary.iter().all(|s| s["uid"] == 4242), "{summary:?}");
        let dropped: usize = summary
            .iter()
            .map(|s| s["count"].as_u64().unwrap() as usize)
            .sum();
        assert_eq!(refused + dropped, 200, "every refusal written or counted");
        // Root's 100 all written; of the other uid's, what its burst allows.
        assert!(dropped > 80, "{dropped}");
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 100 * 4600 + REFUSAL_BURST as u64, "{size}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod egress_meter_tests {
    use super::*;

    fn egress(context: &str, up: u64) -> AuditEvent {
        AuditEvent::Egress {
            context: context.into(),
            launch: Some(7),
            via: "connect".into(),
            name: lossless(b"pkg.example.test", NAME_KEEP).into(),
            port: 443,
            allowed: true,
            reason: None,
            error: None,
            address: Some("192.0.2.1:443".into()),
            bytes_up: up,
            bytes_down: 2 * up,
            duration_ms: 1,
        }
    }

    #[test]
    fn allowed_egress_is_written_within_a_burst_then_summed_per_context() {
        let mut m = EgressMeter::default();
        let t0 = Instant::now();
        let tally = |bytes| EgressTally {
            count: 1,
            bytes,
            bytes_up: 5,
            bytes_down: 10,
        };
        let line = 4096;
        for _ in 0..EGRESS_BURST as u64 / line {
            assert_eq!(m.admit(1000, "a", tally(line), t0, "r"), Some(vec![]));
        }
        assert_eq!(m.admit(1000, "a", tally(line), t0, "r"), None);
        assert_eq!(m.admit(1000, "b", tally(line), t0, "r"), None);
        assert_eq!(m.admit(1000, "a", tally(line), t0, "r"), None);
        // Another uid has its own share.
        assert_eq!(m.admit(1001, "a", tally(line), t0, "r"), Some(vec![]));
        let due: Vec<Value> = m
            .take_due(t0, "r")
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(due.len(), 2, "{due:?}");
        assert_eq!(
            (&due[0]["event"], &due[0]["context"], &due[0]["count"]),
            (&json!("egress_suppressed"), &json!("a"), &json!(2))
        );
        assert_eq!(
            (&due[0]["bytes_up"], &due[0]["bytes_down"]),
            (&json!(10), &json!(20))
        );
        assert_eq!(
            (&due[1]["context"], &due[1]["uid"]),
            (&json!("b"), &json!(1000))
        );
        // The summaries were charged: a second's refill does not yet pay for a line.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(m.admit(1000, "a", tally(line), t1, "r"), None);
        assert_eq!(m.take_due(t1, "r").len(), 1);
    }

    /// Every egress attempt is a context's, a uid-0 context's too: each is metered.
    #[test]
    fn an_egress_flood_is_bounded_and_counted_also_from_a_uid0_context() {
        let path = super::rotation_tests::temp_log("egress");
        let audit = Audit::open(&path);
        let started = Instant::now();
        for _ in 0..3000 {
            audit.record_egress(4242, egress("eg", 1));
            audit.record_egress(0, egress("root", 1));
        }
        let secs = started.elapsed().as_secs_f64();
        drop(audit);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for context in ["eg", "root"] {
            let written = lines
                .iter()
                .filter(|l| l["event"] == "egress" && l["context"] == context)
                .count() as u64;
            let summed: u64 = lines
                .iter()
                .filter(|l| l["event"] == "egress_suppressed" && l["context"] == context)
                .map(|l| l["count"].as_u64().unwrap())
                .sum();
            assert_eq!(
                written + summed,
                3000,
                "{context}: every attempt written or counted"
            );
            let up: u64 = lines
                .iter()
                .filter(|l| l["context"] == context)
                .map(|l| l["bytes_up"].as_u64().unwrap())
                .sum();
            assert_eq!(up, 3000, "{context}: what they carried is all in the log");
            let bytes: usize = text
                .lines()
                .filter(|l| l.contains(&format!("\"context\":\"{context}\"")))
                .map(|l| l.len() + 1)
                .sum();
            let bound = EGRESS_BURST + EGRESS_RATE * (secs + 1.0) + 1024.0;
            assert!((bytes as f64) < bound, "{context}: {bytes} > {bound}");
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
