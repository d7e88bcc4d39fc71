//! Hostile input: frames of every wrong length, handshakes that never complete, descriptors
//! a peer should not send, argv and env at ARG_MAX, context names no config can hold, a
//! cwd that is a symlink to a forbidden place, and a replay of the fuzz corpus. The broker
//! must answer each with an error (or the launch's own failure), never hang or leak, and
//! keep serving everyone else.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ctx_protocol::frame::{complete_frame, decode, encode_vec, FRAME_HEADER, MAX_FRAME};
use ctx_protocol::{reply_tag, ErrorKind, ExitStatus, FailureKind, Hello, Reply, Request, Stage};

use ctx_tests::raw;
use ctx_tests::*;

/// How long the broker may take to close a connection it refuses.
const FAST: Duration = Duration::from_secs(3);

fn devnull() -> OwnedFd {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap()
        .into()
}

/// The broker still answers `ctx status` and runs a launch.
fn still_serves(b: &Broker) {
    assert_eq!(run(&mut b.ctx(["status"])).code(), 0);
    assert_eq!(b.exec("alice", &["echo", "ok"]).ok(), "ok\n");
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

#[test]
fn every_truncation_and_every_wrong_length_of_an_opening_is_refused_promptly() {
    let b = Broker::start(&standard_config());
    let good = raw::opening(&Request::Status);
    let hello_len = good.len() - {
        let mut req = Vec::new();
        encode_vec(&Request::Status, &mut req).unwrap();
        req.len()
    };
    let start = Instant::now();
    // 1. Every prefix of a good opening, then the client stops writing.
    for cut in 0..good.len() {
        let mut s = raw::send_opening(&b.socket(), &good[..cut], &[]);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (frames, closed) = raw::read_until_close(&mut s, FAST);
        assert!(closed, "prefix of {cut} bytes: connection left open");
        assert!(
            cut == 0 || raw::error_of(&frames).is_some(),
            "prefix of {cut} bytes: closed without an error"
        );
    }
    // 2. The hello's header announcing every wrong length around the real one (and the
    //    limits), with the real bytes following.
    let real = hello_len - FRAME_HEADER;
    let lengths: Vec<usize> = (0..real + 8)
        .filter(|&l| l != real)
        .chain([MAX_FRAME, MAX_FRAME + 1, u32::MAX as usize])
        .collect();
    for len in lengths {
        let mut bytes = (len as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&good[FRAME_HEADER..]);
        let mut s = raw::send_opening(&b.socket(), &bytes, &[]);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (frames, closed) = raw::read_until_close(&mut s, FAST);
        assert!(closed, "hello length {len}: connection left open");
        let (kind, _) = raw::error_of(&frames)
            .unwrap_or_else(|| panic!("hello length {len}: closed without an error"));
        assert_eq!(kind, ErrorKind::BadRequest, "hello length {len}");
    }
    // 3. A good hello, then a request frame of every wrong length.
    let req = &good[hello_len..];
    let real = req.len() - FRAME_HEADER;
    for len in (0..real + 8).filter(|&l| l != real) {
        let mut bytes = good[..hello_len].to_vec();
        bytes.extend_from_slice(&(len as u32).to_le_bytes());
        bytes.extend_from_slice(&req[FRAME_HEADER..]);
        let mut s = raw::send_opening(&b.socket(), &bytes, &[]);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (frames, closed) = raw::read_until_close(&mut s, FAST);
        assert!(closed, "request length {len}: connection left open");
        assert!(
            raw::error_of(&frames).is_some(),
            "request length {len}: closed without an error"
        );
    }
    eprintln!("every wrong length refused in {:?}", start.elapsed());
    still_serves(&b);
}

#[test]
fn a_handshake_that_never_completes_is_dropped_in_bounded_time() {
    let b = Broker::start(&standard_config());
    let good = raw::opening(&Request::Status);
    let bound = Duration::from_secs(9); // the broker's 5 s handshake timeout, and slack
                                        // Silent peers, a hello without a request, and a peer dripping one byte at a time.
    let mut silent: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(b.socket()).unwrap())
        .collect();
    let mut hello_only = UnixStream::connect(b.socket()).unwrap();
    let hello = {
        let mut v = Vec::new();
        encode_vec(&Hello::new(ctx_protocol::ClientKind::Cli), &mut v).unwrap();
        v
    };
    hello_only.write_all(&hello).unwrap();
    let mut drip = UnixStream::connect(b.socket()).unwrap();
    let start = Instant::now();
    // Meanwhile everyone else is served at once.
    still_serves(&b);
    let dripper = std::thread::spawn(move || {
        for &byte in &good {
            if drip.write_all(&[byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        drip
    });
    let (_, closed) = raw::read_until_close(&mut hello_only, bound);
    assert!(closed, "a hello without a request held the connection open");
    for s in &mut silent {
        let left = bound.saturating_sub(start.elapsed()) + Duration::from_millis(100);
        let (_, closed) = raw::read_until_close(s, left);
        assert!(closed, "a silent peer held its connection past {bound:?}");
    }
    let mut drip = dripper.join().unwrap();
    let (_, closed) = raw::read_until_close(&mut drip, Duration::from_secs(1));
    assert!(
        closed,
        "a peer sending a byte every 400 ms held its connection open for {:?}",
        start.elapsed()
    );
    eprintln!("unfinished handshakes dropped after {:?}", start.elapsed());
    still_serves(&b);
}

// ---------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------

/// `n` descriptors of /dev/null.
fn nulls(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|_| devnull()).collect()
}

fn raws(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

#[test]
fn descriptors_a_peer_should_not_send_are_refused_and_not_leaked() {
    let b = Broker::start(&standard_config());
    still_serves(&b);
    let pid = b.pid();
    let baseline = raw::settle_fds(pid, 0, Duration::from_millis(200));

    // 1. More descriptors than the request names (3): 200 with the hello, 200 with the
    //    request, more than one message carries (253).
    let opening = raw::opening(&Request::Exec(raw::exec_request("alice", &[b"true"])));
    let many = nulls(400);
    let all = raws(&many);
    let s = UnixStream::connect(b.socket()).unwrap();
    ctx_protocol::fdpass::send_with_fds(s.as_raw_fd(), &opening[..3], &all[..200]).unwrap();
    let _ = ctx_protocol::fdpass::send_with_fds(s.as_raw_fd(), &opening[3..], &all[200..]);
    let mut s = s;
    let (frames, closed) = raw::read_until_close(&mut s, FAST);
    assert!(closed, "too many descriptors: connection left open");
    let (kind, message) = raw::error_of(&frames).expect("an error for 400 descriptors");
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");

    // 2. Descriptors with a request that takes none.
    let few = nulls(3);
    let mut s = raw::send_opening(&b.socket(), &raw::opening(&Request::Status), &raws(&few));
    let (frames, _) = raw::read_until_close(&mut s, FAST);
    let (kind, message) = raw::error_of(&frames).expect("an error for descriptors with Status");
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");

    // 3. Fewer descriptors than the request's slots name.
    let one = nulls(1);
    let mut s = raw::send_opening(&b.socket(), &opening, &raws(&one));
    let (frames, _) = raw::read_until_close(&mut s, FAST);
    assert!(
        raw::failure_of(&frames).is_some() || raw::error_of(&frames).is_some(),
        "a launch with 1 of 3 descriptors was not refused"
    );

    // 4. Descriptors riding on a follow-up frame (Signal) of a running launch: dropped.
    let req = raw::exec_request("alice", &[b"sleep", b"1"]);
    let io = nulls(3);
    let mut s = raw::send_opening(&b.socket(), &raw::opening(&Request::Exec(req)), &raws(&io));
    let mut sig = Vec::new();
    encode_vec(
        &Request::Signal {
            signo: libc::SIGCONT,
        },
        &mut sig,
    )
    .unwrap();
    let stray = nulls(50);
    ctx_protocol::fdpass::send_with_fds(s.as_raw_fd(), &sig, &raws(&stray)).unwrap();
    let (frames, _) = raw::read_until_close(&mut s, Duration::from_secs(10));
    assert_eq!(raw::exit_of(&frames), Some(ExitStatus::Code(0)));

    drop((many, few, one, io, stray));
    let after = raw::settle_fds(pid, baseline, Duration::from_secs(5));
    assert!(
        after <= baseline,
        "broker holds {after} descriptors after the stray ones, {baseline} before"
    );
    still_serves(&b);
}

/// A request naming more descriptors than one message carries comes without them, and
/// the broker asks for them (`SendDescriptors`) once it has room: it then takes exactly
/// the frame it asked for, with exactly the descriptors named, and nothing is left held.
#[test]
fn descriptors_sent_when_asked_for_are_exactly_the_ones_named() {
    let b = Broker::start(&standard_config());
    still_serves(&b);
    let pid = b.pid();
    let baseline = raw::settle_fds(pid, 0, Duration::from_millis(200));
    let mut req = raw::exec_request("alice", &[b"sh", b"-c", b"ls /proc/self/fd | wc -l"]);
    let out = TempDir::new();
    let listing = out.path().join("listing");
    let file = fs::File::create(&listing).unwrap();
    req.fds = raw::passed_slots(300);
    let opening = raw::opening(&Request::Exec(req));
    let nulls_ = nulls(400);
    // Descriptor 1 of the program is the listing file; the others /dev/null.
    let mut passed = raws(&nulls_[..300]);
    passed[1] = file.as_raw_fd();

    // Asked for, before the greeting; then the launch runs with all 300.
    let mut s = raw::send_opening(&b.socket(), &opening, &[]);
    assert_eq!(read_one_frame(&mut s), vec![reply_tag::SEND_DESCRIPTORS]);
    ctx_protocol::fdpass::send_fds_frame(s.as_raw_fd(), &passed, 0).unwrap();
    let (frames, _) = raw::read_until_close(&mut s, Duration::from_secs(10));
    assert_eq!(
        raw::exit_of(&frames),
        Some(ExitStatus::Code(0)),
        "{frames:?}"
    );
    let seen: usize = fs::read_to_string(&listing)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(seen >= 300, "the program had {seen} descriptors");

    // One fewer than named, or more: refused, the connection closed.
    for n in [299, 400] {
        let mut s = raw::send_opening(&b.socket(), &opening, &[]);
        assert_eq!(read_one_frame(&mut s), vec![reply_tag::SEND_DESCRIPTORS]);
        let _ = ctx_protocol::fdpass::send_fds_frame(s.as_raw_fd(), &raws(&nulls_[..n]), 0);
        let (frames, closed) = raw::read_until_close(&mut s, FAST);
        assert!(closed, "{n} descriptors: connection left open");
        let (kind, message) = raw::error_of(&frames).expect("an error");
        assert_eq!(kind, ErrorKind::BadRequest, "{n}: {message}");
        assert!(message.contains("300 descriptors"), "{n}: {message}");
    }

    // A frame of bytes instead of descriptors, and a frame larger than any such frame.
    for payload in [
        vec![0u8; 2],
        vec![0u8; ctx_protocol::fdpass::FD_FRAME_MAX + 1],
    ] {
        let mut s = raw::send_opening(&b.socket(), &opening, &[]);
        assert_eq!(read_one_frame(&mut s), vec![reply_tag::SEND_DESCRIPTORS]);
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let _ = s.write_all(&frame);
        let (frames, closed) = raw::read_until_close(&mut s, FAST);
        assert!(closed, "connection left open");
        let (kind, _) = raw::error_of(&frames).expect("an error");
        assert_eq!(kind, ErrorKind::BadRequest);
    }

    // Asked for and never sent: dropped at the handshake's deadline.
    let mut s = raw::send_opening(&b.socket(), &opening, &[]);
    assert_eq!(read_one_frame(&mut s), vec![reply_tag::SEND_DESCRIPTORS]);
    let (_, closed) = raw::read_until_close(&mut s, Duration::from_secs(8));
    assert!(
        closed,
        "a connection that never sent its descriptors was kept"
    );

    drop((nulls_, file));
    let after = raw::settle_fds(pid, baseline, Duration::from_secs(5));
    assert!(
        after <= baseline,
        "broker holds {after} descriptors, {baseline} before"
    );
    still_serves(&b);
}

/// The payload of the next whole frame on `s`.
fn read_one_frame(s: &mut UnixStream) -> Vec<u8> {
    use std::io::Read;
    s.set_read_timeout(Some(FAST)).unwrap();
    let mut head = [0u8; FRAME_HEADER];
    s.read_exact(&mut head).expect("a frame from the broker");
    let mut payload = vec![0u8; u32::from_le_bytes(head) as usize];
    s.read_exact(&mut payload).expect("a whole frame");
    payload
}

/// Runs `cat` routed with `stdin` as its standard input; the exit status and stderr.
fn cat_from(b: &Broker, stdin: RawFd) -> (Option<ExitStatus>, String) {
    let td = TempDir::new();
    let err_path = td.path().join("stderr");
    let err = fs::File::create(&err_path).unwrap();
    fs::set_permissions(
        &err_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let null = devnull();
    let (status, _) = raw::exec(
        &b.socket(),
        "alice",
        &[b"cat"],
        [stdin, null.as_raw_fd(), err.as_raw_fd()],
        Duration::from_secs(10),
    );
    (status, fs::read_to_string(&err_path).unwrap_or_default())
}

#[test]
fn descriptors_of_the_wrong_type_reach_the_program_which_fails_as_it_would_locally() {
    let b = Broker::start(&standard_config());
    // A directory as stdin: cat's read fails with EISDIR, as `cat < /tmp` does locally.
    let dir: OwnedFd = fs::File::open("/tmp").unwrap().into();
    let (status, err) = cat_from(&b, dir.as_raw_fd());
    assert_eq!(status, Some(ExitStatus::Code(1)), "directory stdin: {err}");
    assert!(err.contains("Is a directory"), "{err}");
    // An epoll descriptor as stdin: read fails with EINVAL.
    // SAFETY: plain syscall; the new descriptor is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    // SAFETY: ep is a fresh descriptor owned here.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let (status, err) = cat_from(&b, ep.as_raw_fd());
    assert_eq!(status, Some(ExitStatus::Code(1)), "epoll stdin: {err}");
    assert!(err.contains("Invalid argument"), "{err}");
    still_serves(&b);
}

// ---------------------------------------------------------------------------------------
// argv and env at ARG_MAX
// ---------------------------------------------------------------------------------------

/// Arguments of 100 KiB each (under MAX_ARG_STRLEN, 128 KiB) adding up to `total` bytes.
fn big_args(total: usize) -> Vec<String> {
    let each = 100 * 1024;
    (0..total / each)
        .map(|i| format!("{}", (b'a' + (i % 26) as u8) as char).repeat(each))
        .collect()
}

#[test]
fn argv_and_env_near_arg_max_arrive_whole() {
    let b = Broker::start(&standard_config());
    // ARG_MAX is a quarter of the stack limit (2 MiB with 8 MiB); the ctx command line
    // itself must fit too, so 1.8 MB of arguments.
    let args = big_args(1_800_000);
    let expect: usize = args.iter().map(|a| a.len()).sum();
    let script = r#"n=0; for a in "$@"; do n=$((n+${#a})); done; echo "$# $n""#;
    let mut argv: Vec<&str> = vec!["sh", "-c", script, "sh"];
    argv.extend(args.iter().map(String::as_str));
    let out = b.exec("alice", &argv);
    assert_eq!(out.ok(), format!("{} {expect}\n", args.len()));

    // The same volume as environment (`-e K=V`).
    let mut cmd = b.ctx(["exec", "--context", "alice"]);
    for (i, a) in args.iter().enumerate() {
        cmd.arg("-e").arg(format!("BIG{i}={a}"));
    }
    cmd.args([
        "--",
        "sh",
        "-c",
        r#"n=0; for v in $(env | grep -o '^BIG[0-9]*'); do eval "x=\$$v"; n=$((n+${#x})); done; echo $n"#,
    ]);
    assert_eq!(run(&mut cmd).ok(), format!("{expect}\n"));
}

#[test]
fn argv_over_arg_max_fails_as_a_classified_resource_limit() {
    let b = Broker::start(&standard_config());
    // 3 MB: past ARG_MAX, under the 4 MiB frame limit (only the raw protocol can send it;
    // the kernel would refuse to run a ctx with such a command line).
    let args = big_args(3_000_000);
    let mut argv: Vec<&[u8]> = vec![b"true"];
    argv.extend(args.iter().map(|a| a.as_bytes()));
    let null = devnull();
    let fd = null.as_raw_fd();
    let (status, frames) = raw::exec(&b.socket(), "alice", &argv, [fd, fd, fd], FAST);
    assert_eq!(status, None);
    let (kind, stage, errno) = raw::failure_of(&frames).expect("an ExecFailed reply");
    assert_eq!(
        (kind, stage, errno),
        (FailureKind::ResourceLimit, Stage::Exec, libc::E2BIG)
    );
    // A request frame past the 4 MiB limit: refused from its header, before any decoding.
    let mut bytes = Vec::new();
    encode_vec(&Hello::new(ctx_protocol::ClientKind::Cli), &mut bytes).unwrap();
    bytes.extend_from_slice(&((MAX_FRAME + 1) as u32).to_le_bytes());
    bytes.extend_from_slice(&vec![b'x'; 1 << 20]);
    let mut s = UnixStream::connect(b.socket()).unwrap();
    let _ = s.set_write_timeout(Some(FAST));
    let _ = s.write_all(&bytes);
    let (frames, closed) = raw::read_until_close(&mut s, FAST);
    assert!(closed);
    assert_eq!(
        raw::error_of(&frames).map(|e| e.0),
        Some(ErrorKind::BadRequest)
    );
    still_serves(&b);
}

// ---------------------------------------------------------------------------------------
// Names and paths
// ---------------------------------------------------------------------------------------

#[test]
fn context_names_with_slash_nul_or_ten_kilobytes_are_unknown_contexts() {
    let b = Broker::start(&standard_config());
    // Through the CLI: / and 10 kB.
    let long = "a".repeat(10 * 1024);
    for name in ["../alice", "alice/..", "/", long.as_str()] {
        let out = run(&mut b.ctx(["exec", "--context", name, "--", "true"]));
        assert_eq!(out.code(), 125, "{name:.40}: {}", out.show());
        assert!(
            out.stderr_str().contains("no context named"),
            "{name:.40}: {}",
            out.show()
        );
    }
    // Through the raw protocol: NUL, which no command line can carry.
    for name in ["alice\0", "\0", "al\0ice"] {
        let null = devnull();
        let fd = null.as_raw_fd();
        let (status, frames) = raw::exec(&b.socket(), name, &[b"true"], [fd, fd, fd], FAST);
        assert_eq!(status, None, "{name:?} ran");
        let (kind, _) = raw::error_of(&frames).unwrap_or_else(|| panic!("{name:?}: no error"));
        assert_eq!(kind, ErrorKind::UnknownContext, "{name:?}");
    }
    // And a config cannot define such names.
    for key in ["\"a/b\"", "\"a\\u0000b\"", &format!("\"{long}\""), "\"..\""] {
        let td = TempDir::new();
        let cfg = td.file(
            "c.toml",
            format!("[contexts.{key}]\nuser = \"{ALICE}\"\n").as_bytes(),
            0o644,
        );
        let out = run(Command::new(bin("ctx-broker"))
            .arg("--check")
            .arg("--config")
            .arg(&cfg));
        assert_eq!(out.code(), 1, "{key:.40} accepted: {}", out.show());
        assert!(out.stderr_str().contains("context name"), "{}", out.show());
    }
    still_serves(&b);
}

#[test]
fn a_cwd_that_is_a_symlink_to_a_forbidden_place_fails_as_bad_cwd() {
    let alice = user(ALICE);
    let b = Broker::start(&standard_config());
    let td = TempDir::new();
    let forbidden = td.subdir("root-only", 0o700);
    let link = td.path().join("innocent");
    std::os::unix::fs::symlink(&forbidden, &link).unwrap();
    // --cwd through the link.
    let out = run(&mut b.ctx([
        "exec",
        "--context",
        "alice",
        "--cwd",
        link.to_str().unwrap(),
        "--",
        "pwd",
    ]));
    assert_eq!(out.code(), 125, "{}", out.show());
    let err = out.stderr_str();
    assert!(err.contains("cannot enter working directory"), "{err}");
    assert!(
        err.contains(&alice.name),
        "message must name the user: {err}"
    );
    // cwd = "inherit" from a caller standing in the link.
    let out = run(b.exec_cmd("alice", &["pwd"]).current_dir(&link));
    assert_eq!(out.code(), 125, "{}", out.show());
    assert!(
        out.stderr_str().contains("cannot enter working directory"),
        "{}",
        out.show()
    );
    // A link to a place alice may enter works, and shows the link's target.
    let open = td.subdir("open", 0o755);
    let ok_link = td.path().join("fine");
    std::os::unix::fs::symlink(&open, &ok_link).unwrap();
    let out = run(&mut b.ctx([
        "exec",
        "--context",
        "alice",
        "--cwd",
        ok_link.to_str().unwrap(),
        "--",
        "pwd",
        "-P",
    ]));
    assert_eq!(out.ok().trim(), open.to_str().unwrap());
}

// ---------------------------------------------------------------------------------------
// The fuzz corpus, replayed as a plain test
// ---------------------------------------------------------------------------------------

/// What fuzz/fuzz_targets/frame_decode.rs checks, for one input.
fn frame_decode(data: &[u8]) {
    macro_rules! roundtrip {
        ($ty:ty, $payload:expr) => {
            if let Ok(msg) = decode::<$ty>($payload) {
                let mut out = Vec::new();
                encode_vec(&msg, &mut out).expect("a decoded message encodes");
                let again: $ty = decode(&out[FRAME_HEADER..]).expect("re-decodes");
                assert_eq!(msg, again);
            }
        };
    }
    let mut rest = data;
    while let Ok(Some(total)) = complete_frame(rest) {
        let payload = &rest[FRAME_HEADER..total];
        roundtrip!(Hello, payload);
        roundtrip!(Request, payload);
        roundtrip!(Reply, payload);
        rest = &rest[total..];
    }
    roundtrip!(Hello, data);
    roundtrip!(Request, data);
    roundtrip!(Reply, data);
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("fuzz").join("corpus").join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    let frames = corpus("frame_decode");
    let mut decoded = 0;
    for (name, data) in &frames {
        let r = std::panic::catch_unwind(|| frame_decode(data));
        assert!(r.is_ok(), "frame_decode panicked on corpus file {name}");
        decoded += 1;
    }
    // The seeds are real openings: each decodes as a hello and a request.
    let opening = &frames[0].1;
    let total = complete_frame(opening).unwrap().unwrap();
    decode::<Hello>(&opening[FRAME_HEADER..total]).expect("seed-00 opens with a hello");
    let configs = corpus("config_parse");
    for (name, data) in &configs {
        let Ok(text) = std::str::from_utf8(data) else {
            continue;
        };
        if let Err(e) = ctx_broker_load(text) {
            assert!(
                e.contains("fuzz.toml"),
                "{name}: error without the file: {e}"
            );
        }
    }
    eprintln!(
        "replayed {decoded} frame inputs and {} config inputs",
        configs.len()
    );
}

/// `ctx-broker --check` on `text` (the tests crate does not link the broker library).
fn ctx_broker_load(text: &str) -> Result<(), String> {
    let td = TempDir::new();
    let path = td.file("fuzz.toml", text.as_bytes(), 0o644);
    let out = run(Command::new(bin("ctx-broker"))
        .arg("--check")
        .arg("--config")
        .arg(&path));
    match out.code() {
        0 => Ok(()),
        1 => Err(out.stderr_str()),
        c => panic!(
            "ctx-broker --check exited {c} on {}: {}",
            path.display(),
            out.show()
        ),
    }
}
