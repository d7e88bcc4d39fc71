//! The error pipe: the child writes the first step that failed as `(stage, errno)` and
//! exits; the parent reads nothing (the exec succeeded and closed the pipe) or that one
//! report, and classifies it for the caller.

use std::os::fd::RawFd;

use ctx_protocol::{classify, errno_name, ExecFailure, Stage};

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// One failed step, as the child reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFailure {
    pub stage: Stage,
    pub errno: i32,
}

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// Bytes of one error-pipe report: stage, three pad bytes, errno (native endian).
const REPORT_LEN: usize = 8;

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl ChildFailure {
    /// `detail` says what the errno alone does not (which path, which uid); the client
    /// prints it after the kind and errno name.
    pub fn into_exec_failure(self, detail: String) -> ExecFailure<'static> {
        ExecFailure {
            kind: classify(self.stage, self.errno),
            stage: self.stage,
            errno: self.errno,
            errno_name: errno_name(self.errno).into(),
            message: detail.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// Decodes what the child wrote to the error pipe: nothing (exec succeeded) or one report.
pub fn parse_report(buf: &[u8]) -> Option<ChildFailure> {
    if buf.len() < REPORT_LEN {
        return None;
    }
    let stage = Stage::from_u8(buf[0]).unwrap_or(Stage::Exec);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some(ChildFailure { stage, errno })
}

/// Writes `(stage, errno)` to the error pipe and exits. Async-signal-safe.
pub(super) unsafe fn fail(report: RawFd, stage: Stage, errno: i32) -> ! {
    let mut buf = [0u8; REPORT_LEN];
    buf[0] = stage as u8;
    buf[4..8].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report, buf.as_ptr().cast(), REPORT_LEN);
    libc::_exit(127)
}

/// The calling thread's errno, read without std (async-signal-safe).
pub(super) unsafe fn errno() -> i32 {
    *libc::__errno_location()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_roundtrip() {
        let mut buf = [0u8; REPORT_LEN];
        buf[0] = Stage::Chdir as u8;
        buf[4..8].copy_from_slice(&libc::EACCES.to_ne_bytes());
        assert_eq!(
            parse_report(&buf),
            Some(ChildFailure {
                stage: Stage::Chdir,
                errno: libc::EACCES
            })
        );
        assert_eq!(parse_report(&[]), None);
    }
}
