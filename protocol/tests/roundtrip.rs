//! Every message survives encode/decode; bad frames are errors, never panics.

use std::borrow::Cow;

use ctx_protocol::frame::{complete_frame, decode, encode_into, encode_vec, payload_len};
use ctx_protocol::*;
use serde_bytes::ByteBuf;

fn roundtrip_request(msg: Request) {
    let mut out = Vec::new();
    encode_vec(&msg, &mut out).unwrap();
    let total = complete_frame(&out).unwrap().unwrap();
    assert_eq!(total, out.len());
    let back: Request = decode(&out[FRAME_HEADER..]).unwrap();
    assert_eq!(back, msg);
    // The allocation-free encoder writes the same bytes.
    let mut buf = vec![0u8; out.len()];
    assert_eq!(encode_into(&msg, &mut buf).unwrap(), out.len());
    assert_eq!(buf, out);
}

fn roundtrip_reply(msg: Reply<'_>) {
    let mut out = Vec::new();
    encode_vec(&msg, &mut out).unwrap();
    let back: Reply = decode(&out[FRAME_HEADER..]).unwrap();
    assert_eq!(back, msg);
}

fn exec_request() -> ExecRequest {
    ExecRequest {
        context: "user".into(),
        argv: vec![
            ByteBuf::from(b"ls".to_vec()),
            ByteBuf::from(vec![0xff, 0xfe, b'x']),
        ],
        program: Some(ByteBuf::from(b"/bin/ls".to_vec())),
        search_path: Some(ByteBuf::from(b"/usr/bin:/bin".to_vec())),
        env: vec![
            ByteBuf::from(b"TERM=xterm".to_vec()),
            ByteBuf::from(vec![b'A', b'=', 0x80]),
        ],
        set_env: vec![ByteBuf::from(b"K=V".to_vec())],
        cwd: ByteBuf::from(b"/tmp".to_vec()),
        cwd_override: None,
        fds: vec![
            FdSlot {
                target: 0,
                source: FdSource::Passed,
            },
            FdSlot {
                target: 1,
                source: FdSource::Pty,
            },
            FdSlot {
                target: 7,
                source: FdSource::Passed,
            },
        ],
        tty: Some(TtyInfo {
            size: WinSize {
                rows: 40,
                cols: 120,
                xpixel: 0,
                ypixel: 0,
            },
            termios: Some(TermModes {
                iflag: 1,
                oflag: 2,
                cflag: 3,
                lflag: 4,
                cc: [7; 32],
            }),
        }),
        timeout_ms: Some(600_000),
        grouping: Grouping::SessionLeader,
        inherited: Some(Inherited {
            umask: 0o027,
            rlimits: vec![Rlimit {
                resource: 7,
                soft: 64,
                hard: u64::MAX,
            }],
            nice: Some(5),
            affinity: Some(ByteBuf::from(vec![1, 0, 0, 0, 0, 0, 0, 0])),
            ioprio: Some(3 << 13),
            oom_score_adj: Some(-17),
            blocked: 1 << 12,
            ignored: 1 << 12 | 1 << 1,
            cwd_fd: true,
            personality: Some(0x0004_0008),
            sched_policy: Some(5),
            timer_slack: Some(50_000),
            mempolicy: Some(ctx_protocol::inherit::Mempolicy {
                mode: 1,
                nodes: ByteBuf::from(vec![1, 0, 0, 0, 0, 0, 0, 0]),
            }),
        }),
    }
}

#[test]
fn every_request_roundtrips() {
    roundtrip_request(Request::Exec(exec_request()));
    roundtrip_request(Request::Signal { signo: 15 });
    roundtrip_request(Request::SignalProcess { signo: 15 });
    roundtrip_request(Request::Resize(WinSize {
        rows: 1,
        cols: 2,
        xpixel: 3,
        ypixel: 4,
    }));
    roundtrip_request(Request::Input(ByteBuf::from(
        (0..=255).collect::<Vec<u8>>(),
    )));
    roundtrip_request(Request::InputEof);
    roundtrip_request(Request::Status);
    roundtrip_request(Request::Contexts);
}

#[test]
fn hello_roundtrips() {
    let mut out = Vec::new();
    encode_vec(&Hello::new(ClientKind::Interposer), &mut out).unwrap();
    let back: Hello = decode(&out[FRAME_HEADER..]).unwrap();
    assert_eq!(back, Hello::new(ClientKind::Interposer));
    assert_eq!(back.magic, MAGIC);
}

#[test]
fn every_reply_roundtrips() {
    roundtrip_reply(Reply::Hello {
        version: PROTOCOL_VERSION,
        software: "ctx-broker 0.1".into(),
    });
    roundtrip_reply(Reply::Error {
        kind: ErrorKind::Refused,
        message: "no".into(),
    });
    roundtrip_reply(Reply::Started {
        id: u64::MAX,
        pid: 4_194_304,
    });
    roundtrip_reply(Reply::ExecFailed(ExecFailure {
        kind: FailureKind::NotFound,
        stage: Stage::Exec,
        errno: libc::ENOENT,
        errno_name: "ENOENT".into(),
        message: "nope".into(),
    }));
    roundtrip_reply(Reply::Exited {
        status: ExitStatus::Code(255),
        timed_out: false,
    });
    roundtrip_reply(Reply::Exited {
        status: ExitStatus::Signaled {
            signal: 11,
            core: true,
        },
        timed_out: true,
    });
    roundtrip_reply(Reply::Output(Cow::Borrowed(&[0, 1, 2, 255])));
    roundtrip_reply(Reply::Status(StatusReport {
        software: "x".into(),
        pid: 1,
        uid: 0,
        config_path: "/c".into(),
        socket_path: "/s".into(),
        audit_log: "/a".into(),
        uptime_ms: 5,
        running: 2,
        launches: 3,
        contexts: vec!["user".into()],
        warnings: vec!["w".into()],
        isolation: vec!["user: pid namespace".into()],
    }));
    roundtrip_reply(Reply::Contexts(vec![ContextInfo {
        name: "user".into(),
        user: "ctx-user".into(),
        uid: 1000,
        gid: 1000,
        cwd: "inherit".into(),
        env: vec![("K".into(), "****".into())],
        inherit_env: vec!["LC_*".into()],
        allow: "root".into(),
        timeout_ms: None,
        rlimits: vec![("nofile".into(), 4096)],
    }]));
}

#[test]
fn reply_tags_match_variant_order() {
    let tag = |r: Reply| {
        let mut out = Vec::new();
        encode_vec(&r, &mut out).unwrap();
        out[FRAME_HEADER]
    };
    assert_eq!(
        tag(Reply::Hello {
            version: 1,
            software: "".into()
        }),
        reply_tag::HELLO
    );
    assert_eq!(
        tag(Reply::Error {
            kind: ErrorKind::Internal,
            message: "".into()
        }),
        reply_tag::ERROR
    );
    assert_eq!(tag(Reply::Started { id: 1, pid: 1 }), reply_tag::STARTED);
    assert_eq!(
        tag(Reply::Exited {
            status: ExitStatus::Code(0),
            timed_out: false
        }),
        reply_tag::EXITED
    );
    assert_eq!(tag(Reply::Output(Cow::Borrowed(b""))), reply_tag::OUTPUT);
    assert_eq!(tag(Reply::Contexts(vec![])), reply_tag::CONTEXTS);
    assert_eq!(tag(Reply::Killed { ids: vec![] }), reply_tag::KILLED);
    assert_eq!(tag(Reply::Accepted), reply_tag::ACCEPTED);
    assert_eq!(tag(Reply::Stopped { signal: 20 }), reply_tag::STOPPED);
    assert_eq!(
        tag(Reply::SignalParent {
            signal: 10,
            guarded: true,
        }),
        reply_tag::SIGNAL_PARENT
    );
    assert_eq!(tag(Reply::Lingering), reply_tag::LINGERING);
    assert_eq!(tag(Reply::SendDescriptors), reply_tag::SEND_DESCRIPTORS);
    let size = ctx_protocol::WinSize {
        rows: 30,
        cols: 100,
        xpixel: 0,
        ypixel: 0,
    };
    assert_eq!(tag(Reply::Size(size)), reply_tag::SIZE);
    assert_eq!(tag(Reply::Watch), reply_tag::WATCH);
}

#[test]
fn borrowed_decode_does_not_copy_text() {
    let mut out = Vec::new();
    encode_vec(
        &Reply::Error {
            kind: ErrorKind::Refused,
            message: "refused".into(),
        },
        &mut out,
    )
    .unwrap();
    match decode::<Reply>(&out[FRAME_HEADER..]).unwrap() {
        Reply::Error {
            message: Cow::Borrowed(m),
            ..
        } => assert_eq!(m, "refused"),
        other => panic!("expected a borrowed message, got {other:?}"),
    }
}

#[test]
fn oversized_frames_are_refused() {
    let header = ((MAX_FRAME + 1) as u32).to_le_bytes();
    assert_eq!(
        payload_len(header),
        Err(FrameError::TooLarge(MAX_FRAME + 1))
    );
    assert!(complete_frame(&[0xff, 0xff, 0xff, 0xff, 0]).is_err());
    let big = Request::Input(ByteBuf::from(vec![0u8; MAX_FRAME + 10]));
    let mut out = Vec::new();
    assert!(matches!(
        encode_vec(&big, &mut out),
        Err(FrameError::TooLarge(_))
    ));
    assert!(out.is_empty(), "a refused frame leaves nothing behind");
}

#[test]
fn truncated_and_malformed_frames_are_errors() {
    let mut out = Vec::new();
    encode_vec(&Request::Exec(exec_request()), &mut out).unwrap();
    for cut in 0..out.len() {
        assert_eq!(complete_frame(&out[..cut]).unwrap(), None, "cut at {cut}");
    }
    let payload = &out[FRAME_HEADER..];
    for cut in 0..payload.len() {
        assert!(
            decode::<Request>(&payload[..cut]).is_err(),
            "truncated payload of {cut} bytes decoded"
        );
    }
    // Trailing garbage is not silently ignored.
    let mut longer = payload.to_vec();
    longer.push(0);
    assert!(matches!(
        decode::<Request>(&longer),
        Err(FrameError::Trailing(1))
    ));
    // Every single-byte corruption decodes to something or fails; it never panics.
    for i in 0..payload.len() {
        let mut bad = payload.to_vec();
        bad[i] ^= 0xa5;
        let _ = decode::<Request>(&bad);
    }
    assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
    assert!(decode::<Hello>(b"").is_err());
}

#[test]
fn small_buffer_is_an_error() {
    let mut buf = [0u8; 8];
    assert!(matches!(
        encode_into(&Request::Exec(exec_request()), &mut buf),
        Err(FrameError::BufferTooSmall(_))
    ));
    assert!(encode_into(&Request::Status, &mut [0u8; 2]).is_err());
}

#[test]
fn fds_travel_with_frames() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    let (a, b) = UnixStream::pair().unwrap();
    let f = std::fs::File::open("/dev/null").unwrap();
    let mut out = Vec::new();
    encode_vec(&Request::Status, &mut out).unwrap();
    fdpass::send_with_fds(a.as_raw_fd(), &out, &[f.as_raw_fd(), 0]).unwrap();
    let mut buf = [0u8; 64];
    let mut fds = [-1; 4];
    let (n, nfds) = fdpass::recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
    assert_eq!(&buf[..n], &out[..]);
    assert_eq!(nfds, 2);
    for fd in &fds[..2] {
        // SAFETY: test-owned descriptors just received.
        let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            libc::FD_CLOEXEC,
            "received fds are close-on-exec"
        );
        unsafe { libc::close(*fd) };
    }
    // Too many descriptors for the receiver's array: all closed, EMSGSIZE.
    fdpass::send_with_fds(a.as_raw_fd(), &out, &[f.as_raw_fd(); 8]).unwrap();
    let err = fdpass::recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
}

/// A frame of descriptors only: a payload byte per `SCM_RIGHTS` group, every descriptor
/// there once the frame is, in order.
#[test]
fn a_descriptor_frame_carries_more_than_one_message() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    let (a, b) = UnixStream::pair().unwrap();
    let files: Vec<_> = (0..600)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let raws: Vec<_> = files.iter().map(|f| f.as_raw_fd()).collect();
    fdpass::send_fds_frame(a.as_raw_fd(), &raws, 0).unwrap();
    let (mut got, mut bytes) = (Vec::new(), Vec::new());
    let mut fds = [-1; fdpass::MAX_FDS];
    while bytes.len() < FRAME_HEADER || bytes.len() < FRAME_HEADER + frame_len(&bytes) {
        let mut buf = [0u8; 64];
        let (n, nfds) = fdpass::recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert!(n > 0);
        bytes.extend_from_slice(&buf[..n]);
        got.extend_from_slice(&fds[..nfds]);
    }
    assert_eq!(
        frame_len(&bytes),
        3,
        "a byte per group of {}",
        fdpass::MAX_FDS
    );
    assert_eq!(bytes.len(), FRAME_HEADER + 3);
    assert_eq!(got.len(), 600);
    let ino = |fd: i32| std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(got.iter().all(|&fd| ino(fd).rdev() == ino(raws[0]).rdev()));
    for fd in got {
        // SAFETY: test-owned descriptors just received.
        unsafe { libc::close(fd) };
    }
    // Past what one frame's payload bytes carry: refused before anything is sent.
    let too_many = vec![raws[0]; fdpass::MAX_FDS * fdpass::FD_FRAME_MAX + 1];
    let e = fdpass::send_fds_frame(a.as_raw_fd(), &too_many, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
}

fn frame_len(bytes: &[u8]) -> usize {
    u32::from_le_bytes(bytes[..FRAME_HEADER].try_into().unwrap()) as usize
}

#[test]
fn exit_status_and_classification() {
    assert_eq!(
        ExitStatus::from_siginfo(libc::CLD_EXITED, 3),
        ExitStatus::Code(3)
    );
    assert_eq!(
        ExitStatus::from_siginfo(libc::CLD_KILLED, 9),
        ExitStatus::Signaled {
            signal: 9,
            core: false
        }
    );
    assert_eq!(
        ExitStatus::from_siginfo(libc::CLD_DUMPED, 11),
        ExitStatus::Signaled {
            signal: 11,
            core: true
        }
    );
    assert_eq!(classify(Stage::Exec, libc::ENOENT), FailureKind::NotFound);
    assert_eq!(
        classify(Stage::Exec, libc::EACCES),
        FailureKind::PermissionDenied
    );
    assert_eq!(
        classify(Stage::Exec, libc::ENOEXEC),
        FailureKind::NotExecutable
    );
    assert_eq!(classify(Stage::Chdir, libc::EACCES), FailureKind::BadCwd);
    assert_eq!(
        classify(Stage::Rlimits, libc::EPERM),
        FailureKind::ResourceLimit
    );
    assert_eq!(failed_exit_code(Stage::Exec, libc::ENOENT), 127);
    for errno in [
        libc::EACCES,
        libc::ELOOP,
        libc::ENAMETOOLONG,
        libc::EISDIR,
        libc::ETXTBSY,
    ] {
        assert_eq!(failed_exit_code(Stage::Exec, errno), 126, "errno {errno}");
    }
    assert_eq!(failed_exit_code(Stage::Chdir, libc::ENOENT), 125);
    for n in 0..17u8 {
        assert_eq!(Stage::from_u8(n).map(|s| s as u8), Some(n));
    }
    assert_eq!(Stage::from_u8(17), None);
    assert_eq!(Stage::Seccomp.as_str(), "seccomp");
    assert_eq!(Stage::from_u8(13), Some(Stage::Namespace));
    assert_eq!(Stage::Landlock.as_str(), "landlock");
}

#[test]
fn isolation_lines_read_back_what_they_wrote() {
    let cases = [
        IsolationLine {
            context: "user".into(),
            in_force: vec![
                "pid namespace".into(),
                "cgroup v1 (memory 64M, pids 32)".into(),
                "reserved ports 8080,8888 unbindable".into(),
            ],
            not_in_force: vec![],
        },
        IsolationLine {
            context: "a.b-c_d".into(),
            in_force: vec![],
            not_in_force: vec![
                "pid = true".into(),
                "network = \"none\"".into(),
                "memory_max".into(),
            ],
        },
        IsolationLine {
            context: "x".into(),
            in_force: vec!["filesystem rules".into()],
            not_in_force: vec!["uid separation from the broker".into()],
        },
    ];
    for line in cases {
        let text = line.render();
        assert_eq!(IsolationLine::parse(&text), Some(line.clone()), "{text}");
    }
    assert_eq!(
        IsolationLine {
            context: "a".into(),
            in_force: vec![],
            not_in_force: vec!["pids_max".into()],
        }
        .render(),
        "a: none; NOT in force: pids_max"
    );
}

/// PTY output is encoded as one length and the bytes themselves (what a sequence of `u8`
/// also gives in postcard, so older peers read it alike), and decoded without a copy.
#[test]
fn output_is_raw_bytes_on_the_wire_and_decodes_borrowed() {
    let data: Vec<u8> = (0..=255).collect();
    let mut out = Vec::new();
    encode_vec(&Reply::Output(Cow::Borrowed(&data)), &mut out).unwrap();
    let payload = &out[FRAME_HEADER..];
    // Tag, then the length 256 as a varint (0x80 0x02), then the bytes.
    assert_eq!(&payload[..3], &[reply_tag::OUTPUT, 0x80, 0x02]);
    assert_eq!(&payload[3..], &data[..]);
    match decode::<Reply>(payload).unwrap() {
        Reply::Output(Cow::Borrowed(b)) => assert_eq!(b, &data[..]),
        other => panic!("expected borrowed output, got {other:?}"),
    }
}
