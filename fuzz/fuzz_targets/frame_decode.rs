//! Frame decoding as the broker and its clients do it on bytes a peer controls: split the
//! stream into length-prefixed frames, decode each as a `Hello`, a `Request` and a `Reply`.
//! Nothing may panic or allocate without bound; whatever decodes must re-encode to a
//! frame that decodes to the same message.
#![no_main]

use ctx_protocol::frame::{complete_frame, decode, encode_vec, FRAME_HEADER};
use ctx_protocol::{Hello, Reply, Request};
use libfuzzer_sys::fuzz_target;

/// Decodes `$payload` as `$ty`; whatever decodes re-encodes and decodes to itself.
macro_rules! roundtrip {
    ($ty:ty, $payload:expr) => {
        if let Ok(msg) = decode::<$ty>($payload) {
            let mut out = Vec::new();
            encode_vec(&msg, &mut out).expect("a decoded message encodes");
            let again: $ty = decode(&out[FRAME_HEADER..]).expect("an encoded message decodes");
            assert_eq!(msg, again);
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Stops at a partial frame (the reader would wait for more) or one over the cap (it
    // would refuse the connection).
    while let Ok(Some(total)) = complete_frame(rest) {
        let payload = &rest[FRAME_HEADER..total];
        roundtrip!(Hello, payload);
        roundtrip!(Request, payload);
        roundtrip!(Reply, payload);
        rest = &rest[total..];
    }
    // The whole input as one payload too (the framing above rarely lines up by chance).
    roundtrip!(Hello, data);
    roundtrip!(Request, data);
    roundtrip!(Reply, data);
});
