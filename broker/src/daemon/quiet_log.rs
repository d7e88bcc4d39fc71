//! Log lines that an untrusted peer can cause (refused connections, failed handshakes) are
//! metered: one line a second at most, then a count of the ones left out, so that a flood
//! of connections cannot fill the broker's log (or trip journald's rate limit and hide the
//! broker's real warnings).

use std::time::{Duration, Instant};

/// At most one log line a second for a repeated event, saying how many were not logged.
#[derive(Default)]
pub struct Quiet {
    last: Option<Instant>,
    unlogged: u64,
}

impl Quiet {
    pub const fn new() -> Quiet {
        Quiet {
            last: None,
            unlogged: 0,
        }
    }

    /// `Some(suffix)` when this occurrence is to be logged, with the suffix to append.
    pub fn should_log(&mut self) -> Option<String> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        let more = std::mem::take(&mut self.unlogged);
        Some(if more > 0 {
            format!(" ({more} more since the last message)")
        } else {
            String::new()
        })
    }
}
