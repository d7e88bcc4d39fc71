//! Length-prefixed frames: a little-endian `u32` payload length, then a postcard payload.
//!
//! Encoding into a caller-provided slice allocates nothing, which is what the interposer's
//! hook path needs; the `Vec` helpers are for the broker and the CLI.

use serde::{Deserialize, Serialize};

/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;

/// Largest payload either side accepts. Large enough for an `execve` at `ARG_MAX` with a
/// full environment (the kernel caps argv+envp at a quarter of an 8 MiB stack, 2 MiB).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame does not fit the {0}-byte buffer")]
    BufferTooSmall(usize),
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    #[error("frame has {0} trailing bytes after the message")]
    Trailing(usize),
}

/// Encodes `msg` as one frame at the start of `out`; returns the frame's total length.
pub fn encode_into<T: Serialize + ?Sized>(msg: &T, out: &mut [u8]) -> Result<usize, FrameError> {
    if out.len() < FRAME_HEADER {
        return Err(FrameError::BufferTooSmall(out.len()));
    }
    let cap = out.len();
    let (head, body) = out.split_at_mut(FRAME_HEADER);
    let used = postcard::to_slice(msg, body)
        .map_err(|e| match e {
            postcard::Error::SerializeBufferFull => FrameError::BufferTooSmall(cap),
            other => FrameError::Malformed(other),
        })?
        .len();
    if used > MAX_FRAME {
        return Err(FrameError::TooLarge(used));
    }
    head.copy_from_slice(&(used as u32).to_le_bytes());
    Ok(FRAME_HEADER + used)
}

/// Appends `msg` as one frame to `out`.
pub fn encode_vec<T: Serialize + ?Sized>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    let mut out2 = std::mem::take(out);
    out2 = postcard::to_extend(msg, out2).map_err(FrameError::Malformed)?;
    *out = out2;
    let used = out.len() - start - FRAME_HEADER;
    if used > MAX_FRAME {
        out.truncate(start);
        return Err(FrameError::TooLarge(used));
    }
    out[start..start + FRAME_HEADER].copy_from_slice(&(used as u32).to_le_bytes());
    Ok(())
}

/// Reads a frame header; returns the payload length, refusing anything over [`MAX_FRAME`].
pub fn payload_len(header: [u8; FRAME_HEADER]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// If `buf` starts with a whole frame, returns `(payload range end, total frame length)`
/// as the payload slice's bounds: `Ok(Some(total))` where the payload is
/// `buf[FRAME_HEADER..total]`. `Ok(None)` means more bytes are needed.
pub fn complete_frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let len = payload_len([buf[0], buf[1], buf[2], buf[3]])?;
    if buf.len() < FRAME_HEADER + len {
        return Ok(None);
    }
    Ok(Some(FRAME_HEADER + len))
}

/// Decodes one payload (without its header). Borrowing types (`Cow` with
/// `#[serde(borrow)]`) point into `payload`, so decoding them allocates nothing.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// [`decode`] of a [`Reply`](crate::Reply), compiled once here: the interposer's library,
/// its shim and ctx-hookpath all read replies, and a generic `decode` would be compiled into
/// each of them again.
pub fn decode_reply(payload: &[u8]) -> Result<crate::Reply<'_>, FrameError> {
    decode(payload)
}
