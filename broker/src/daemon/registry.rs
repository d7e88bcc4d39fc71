//! The table of running routed processes: what `ctx ps`/`status` list, what shutdown
//! signals, and how the broker tells which context a connecting peer runs in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Running {
    pub id: u64,
    pub pid: i32,
    pub context: String,
    pub caller_pid: i32,
    pub caller_uid: u32,
    pub argv: Vec<String>,
    pub started: Instant,
}

#[derive(Default)]
pub struct Registry {
    by_id: Mutex<HashMap<u64, Running>>,
}

impl Registry {
    pub fn insert(&self, r: Running) {
        self.lock().insert(r.id, r);
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<Running> {
        self.lock().values().cloned().collect()
    }

    /// The context of the routed process `pid` is, or descends from (following parent
    /// pids through /proc), if any.
    pub fn context_of(&self, pid: i32) -> Option<String> {
        let by_pid: HashMap<i32, String> = self
            .lock()
            .values()
            .map(|r| (r.pid, r.context.clone()))
            .collect();
        if by_pid.is_empty() {
            return None;
        }
        let mut cur = pid;
        for _ in 0..128 {
            if cur <= 1 {
                return None;
            }
            if let Some(c) = by_pid.get(&cur) {
                return Some(c.clone());
            }
            cur = parent_pid(cur)?;
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The parent pid from `/proc/PID/stat` (the field after the command name's closing paren,
/// which may itself contain spaces and parens).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parent_of_self() {
        let me = std::process::id() as i32;
        let expected = nix::unistd::getppid().as_raw();
        assert_eq!(super::parent_pid(me), Some(expected));
    }
}
