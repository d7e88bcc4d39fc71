//! A bare protocol client for the tests that must send what the `ctx` CLI never would
//! (truncated frames, stray descriptors, names with NUL) or must launch faster than
//! spawning one CLI process per launch allows (the load tests).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ctx_protocol::fdpass::send_with_fds;
use ctx_protocol::frame::{decode, encode_vec, FRAME_HEADER};
use ctx_protocol::{
    ClientKind, ErrorKind, ExecRequest, ExitStatus, FailureKind, FdSlot, FdSource, Grouping, Hello,
    Reply, Request, Stage,
};
use serde_bytes::ByteBuf;

/// An `Exec` of `argv` in `context`, looked up along the context's PATH as the CLI does,
/// with descriptors 0, 1 and 2 passed (send three with it).
pub fn exec_request(context: &str, argv: &[&[u8]]) -> ExecRequest {
    ExecRequest {
        context: context.into(),
        argv: argv.iter().map(|a| ByteBuf::from(a.to_vec())).collect(),
        program: None,
        search_path: None,
        env: Vec::new(),
        set_env: Vec::new(),
        cwd: ByteBuf::from(b"/".to_vec()),
        cwd_override: None,
        fds: passed_slots(3),
        tty: None,
        timeout_ms: None,
        grouping: Grouping::GroupLeader,
        inherited: None,
    }
}

/// Slots for descriptors 0..n, each passed: a request naming `n` descriptors to send.
pub fn passed_slots(n: i32) -> Vec<FdSlot> {
    (0..n)
        .map(|target| FdSlot {
            target,
            source: FdSource::Passed,
        })
        .collect()
}

/// `bytes` in lower-case hexadecimal, as the tests' Python clients take an opening.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a CLI `Hello` followed by `request`, as one client write sends them.
pub fn opening(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    encode_vec(&Hello::new(ClientKind::Cli), &mut out).expect("encode hello");
    encode_vec(request, &mut out).expect("encode request");
    out
}

/// Connects, sends `bytes` with `fds` riding along.
pub fn send_opening(socket: &Path, bytes: &[u8], fds: &[RawFd]) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect to the broker");
    send_with_fds(s.as_raw_fd(), bytes, fds).expect("send to the broker");
    s
}

/// Reads until the broker closes `s` or `timeout` passes; the payloads of the whole frames
/// received, and whether the broker closed the connection in time.
pub fn read_until_close(s: &mut UnixStream, timeout: Duration) -> (Vec<Vec<u8>>, bool) {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        s.set_read_timeout(Some(left)).expect("set read timeout");
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    (split_frames(&bytes), closed)
}

/// The payloads of the whole frames at the start of `bytes`.
pub fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while bytes.len() >= FRAME_HEADER {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
            break;
        };
        frames.push(payload.to_vec());
        bytes = &bytes[FRAME_HEADER + len..];
    }
    frames
}

/// The `Reply::Error` among `frames`: (kind, message).
pub fn error_of(frames: &[Vec<u8>]) -> Option<(ErrorKind, String)> {
    frames.iter().find_map(|p| match decode::<Reply>(p) {
        Ok(Reply::Error { kind, message }) => Some((kind, message.into_owned())),
        _ => None,
    })
}

/// The `Reply::Exited` status among `frames`.
pub fn exit_of(frames: &[Vec<u8>]) -> Option<ExitStatus> {
    frames.iter().find_map(|p| match decode::<Reply>(p) {
        Ok(Reply::Exited { status, .. }) => Some(status),
        _ => None,
    })
}

/// The `Reply::ExecFailed` among `frames`: (kind, stage, errno).
pub fn failure_of(frames: &[Vec<u8>]) -> Option<(FailureKind, Stage, i32)> {
    frames.iter().find_map(|p| match decode::<Reply>(p) {
        Ok(Reply::ExecFailed(f)) => Some((f.kind, f.stage, f.errno)),
        _ => None,
    })
}

/// Runs one launch over the raw protocol with `stdio` as descriptors 0-2; the exit status
/// (or `None` when the broker answered something else), and the frames for messages.
pub fn exec(
    socket: &Path,
    context: &str,
    argv: &[&[u8]],
    stdio: [RawFd; 3],
    timeout: Duration,
) -> (Option<ExitStatus>, Vec<Vec<u8>>) {
    let bytes = opening(&Request::Exec(exec_request(context, argv)));
    let mut s = send_opening(socket, &bytes, &stdio);
    let (frames, _) = read_until_close(&mut s, timeout);
    (exit_of(&frames), frames)
}

/// How many descriptors process `pid` holds.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls until process `pid` holds at most `baseline` descriptors (connections still being
/// torn down may hold a few for a moment); the last count seen.
pub fn settle_fds(pid: u32, baseline: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = fd_count(pid);
        if n <= baseline || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
