//! The operator messages (`ctx reload`, `ps`, `kill`) survive encode/decode, and their
//! reply tags are the ones a no-allocation reader checks.

use ctx_protocol::frame::{decode, encode_vec};
use ctx_protocol::*;

fn encoded<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_vec(msg, &mut out).unwrap();
    out
}

#[test]
fn operator_requests_round_trip() {
    for msg in [
        Request::Reload,
        Request::Ps,
        Request::Kill {
            target: KillTarget::Id(7),
            signo: 15,
        },
        Request::Kill {
            target: KillTarget::Context("user".into()),
            signo: 9,
        },
    ] {
        let out = encoded(&msg);
        let back: Request = decode(&out[FRAME_HEADER..]).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn operator_replies_round_trip_with_their_tags() {
    let cases = [
        (
            Reply::Reloaded {
                contexts: vec!["a".into(), "b".into()],
                warnings: vec!["[broker] socket changed".into()],
            },
            reply_tag::RELOADED,
        ),
        (
            Reply::Processes(vec![ProcessInfo {
                id: 3,
                context: "user".into(),
                pid: 1234,
                caller_pid: 99,
                caller_uid: 1000,
                argv: vec!["sleep".into(), "5".into()],
                age_ms: 1500,
            }]),
            reply_tag::PROCESSES,
        ),
        (Reply::Killed { ids: vec![1, 2] }, reply_tag::KILLED),
        (
            Reply::KilledInContext {
                ids: vec![],
                others: 3,
            },
            reply_tag::KILLED_IN_CONTEXT,
        ),
    ];
    for (msg, tag) in cases {
        let out = encoded(&msg);
        assert_eq!(out[FRAME_HEADER], tag, "{msg:?}");
        let back: Reply = decode(&out[FRAME_HEADER..]).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn new_error_kinds_exit_1_and_old_ones_keep_125() {
    assert_eq!(ErrorKind::ConfigRejected.exit_code(), 1);
    assert_eq!(ErrorKind::NoSuchProcess.exit_code(), 1);
    assert_eq!(ErrorKind::Refused.exit_code(), 125);
}
