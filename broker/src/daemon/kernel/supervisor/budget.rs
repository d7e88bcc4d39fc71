//! How many of a launch's denials are audited: a process that loops on refused execs must
//! not flood the log.

use std::time::Instant;

pub(super) const AUDIT_BURST: f64 = 100.0;

const AUDIT_PER_SECOND: f64 = 10.0;

/// Audit lines left for a launch's denials: `AUDIT_BURST` at once, then
/// `AUDIT_PER_SECOND`.
pub(super) struct Budget {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Budget {
    pub(super) fn new() -> Budget {
        Budget {
            tokens: AUDIT_BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(denials suppressed since the last audited one)` when this one may be audited.
    pub(super) fn take(&mut self, now: Instant) -> Option<u64> {
        let refill = now.duration_since(self.last).as_secs_f64() * AUDIT_PER_SECOND;
        self.tokens = (self.tokens + refill).min(AUDIT_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_beyond_the_burst_are_counted_not_audited() {
        let mut b = Budget::new();
        let t = b.last;
        for _ in 0..AUDIT_BURST as usize {
            assert_eq!(b.take(t), Some(0));
        }
        assert_eq!(b.take(t), None);
        assert_eq!(b.take(t), None);
        // A tenth of a second later one more line may go, saying what it left out.
        let later = t + std::time::Duration::from_millis(100);
        assert_eq!(b.take(later), Some(2));
        assert_eq!(b.take(later), None);
    }
}
