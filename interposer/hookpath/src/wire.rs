//! The launch request, encoded straight from the caller's C arrays.
//!
//! [`ExecRef`] mirrors `ctx_protocol::ExecRequest` field for field but borrows everything
//! (argv and envp are walked in place as byte strings), so encoding a launch into an `mmap`
//! buffer allocates nothing. A test pins the bytes to postcard's encoding of the owned
//! request; if the protocol's `ExecRequest` changes, that test fails first.

use std::ffi::c_char;

use ctx_protocol::{frame, Captured, ClientKind, FdSlot, FrameError, Grouping, Hello, TtyInfo};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

/// A byte string serialized as bytes (what `serde_bytes::ByteBuf` does), not as a sequence.
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// A list of byte strings: either a NULL-terminated C array or a Rust slice.
#[derive(Clone, Copy)]
pub enum StrList<'a> {
    C(*const *const c_char),
    Slice(&'a [&'a [u8]]),
}

impl StrList<'_> {
    pub fn len(&self) -> usize {
        match self {
            // SAFETY: the constructor's contract: null or a NULL-terminated array.
            StrList::C(p) => unsafe { super::sys::vec_len(*p) },
            StrList::Slice(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the strings' lengths, to size an encoding buffer.
    pub fn total_bytes(&self) -> usize {
        let mut n = 0;
        self.each(|s| n += s.len());
        n
    }

    pub fn each(&self, mut f: impl FnMut(&[u8])) {
        match self {
            StrList::C(p) => {
                let n = self.len();
                for i in 0..n {
                    // SAFETY: i < len, so the slot holds a valid C string.
                    f(unsafe { super::sys::cstr(*p.add(i)) });
                }
            }
            StrList::Slice(s) => s.iter().for_each(|b| f(b)),
        }
    }
}

impl Serialize for StrList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        let mut err = None;
        self.each(|b| {
            if err.is_none() {
                if let Err(e) = seq.serialize_element(&Bytes(b)) {
                    err = Some(e);
                }
            }
        });
        match err {
            Some(e) => Err(e),
            None => seq.end(),
        }
    }
}

/// A borrowed `ExecRequest`. Field order is the wire order.
pub struct ExecRef<'a> {
    pub context: &'a str,
    pub argv: StrList<'a>,
    pub program: Option<&'a [u8]>,
    pub search_path: Option<&'a [u8]>,
    pub env: StrList<'a>,
    pub cwd: &'a [u8],
    pub fds: &'a [FdSlot],
    pub tty: Option<&'a TtyInfo>,
    pub grouping: Grouping,
    pub inherited: Option<&'a Captured>,
}

impl Serialize for ExecRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ExecRequest", 12)?;
        st.serialize_field("context", self.context)?;
        st.serialize_field("argv", &self.argv)?;
        st.serialize_field("program", &self.program.map(Bytes))?;
        st.serialize_field("search_path", &self.search_path.map(Bytes))?;
        st.serialize_field("env", &self.env)?;
        st.serialize_field("set_env", &StrList::Slice(&[]))?;
        st.serialize_field("cwd", &Bytes(self.cwd))?;
        st.serialize_field("cwd_override", &None::<Bytes>)?;
        st.serialize_field("fds", self.fds)?;
        st.serialize_field("tty", &self.tty)?;
        st.serialize_field("timeout_ms", &None::<u64>)?;
        st.serialize_field("grouping", &self.grouping)?;
        st.serialize_field("inherited", &self.inherited)?;
        st.end()
    }
}

/// Where this process stands in its session, as the program it execs would: the
/// [`Grouping`] a launch asked for by this process carries. Plain syscalls.
#[inline]
pub fn own_grouping() -> Grouping {
    // SAFETY: plain getters on this process.
    let (me, sid, pgid) = unsafe { (libc::getpid(), libc::getsid(0), libc::getpgid(0)) };
    if sid == me {
        Grouping::SessionLeader
    } else if pgid == me {
        Grouping::GroupLeader
    } else {
        Grouping::Member
    }
}

/// `Request::Exec(..)`: variant 0 of `Request`.
struct ExecRequestFrame<'a, 'b>(&'b ExecRef<'a>);

impl Serialize for ExecRequestFrame<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Request", 0, "Exec", self.0)
    }
}

impl ExecRef<'_> {
    /// An upper bound on the two frames' size: postcard's varints never exceed 10 bytes.
    pub fn encoded_bound(&self) -> usize {
        let strings = self.argv.total_bytes()
            + self.env.total_bytes()
            + self.program.map_or(0, |p| p.len())
            + self.search_path.map_or(0, |p| p.len())
            + self.cwd.len()
            + self.context.len();
        let counts = self.argv.len() + self.env.len() + 8;
        // Inherited: 16 limits of three varints, the CPU mask, a few scalars.
        let inherited =
            ctx_protocol::inherit::MAX_RLIMITS * 30 + ctx_protocol::inherit::MAX_AFFINITY + 64;
        strings + counts * 10 + self.fds.len() * 12 + inherited + 512
    }
}

/// Writes the client `Hello` frame and the `Request::Exec` frame into `out`; returns the
/// bytes used.
pub fn encode_launch(req: &ExecRef<'_>, out: &mut [u8]) -> Result<usize, FrameError> {
    let n = frame::encode_into(&Hello::new(ClientKind::Interposer), out)?;
    let rest = out.get_mut(n..).ok_or(FrameError::BufferTooSmall(0))?;
    let m = frame::encode_into(&ExecRequestFrame(req), rest)?;
    Ok(n + m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctx_protocol::{ExecRequest, FdSource, Request, Rlimit, TermModes, WinSize};
    use serde_bytes::ByteBuf;
    use std::ffi::CString;

    fn owned(
        argv: &[&[u8]],
        program: Option<&[u8]>,
        search: Option<&[u8]>,
        env: &[&[u8]],
        fds: &[FdSlot],
        tty: Option<TtyInfo>,
        inherited: Option<&Captured>,
    ) -> Vec<u8> {
        let req = Request::Exec(ExecRequest {
            context: "user".into(),
            argv: argv.iter().map(|a| ByteBuf::from(a.to_vec())).collect(),
            program: program.map(|p| ByteBuf::from(p.to_vec())),
            search_path: search.map(|p| ByteBuf::from(p.to_vec())),
            env: env.iter().map(|a| ByteBuf::from(a.to_vec())).collect(),
            set_env: vec![],
            cwd: ByteBuf::from(b"/tmp/\xffdir".to_vec()),
            cwd_override: None,
            fds: fds.to_vec(),
            tty,
            timeout_ms: None,
            grouping: Grouping::SessionLeader,
            inherited: inherited.map(Captured::to_inherited),
        });
        let mut v = Vec::new();
        frame::encode_vec(&Hello::new(ClientKind::Interposer), &mut v).unwrap();
        frame::encode_vec(&req, &mut v).unwrap();
        v
    }

    fn c_array(items: &[&[u8]]) -> (Vec<CString>, Vec<*const c_char>) {
        let strs: Vec<CString> = items.iter().map(|s| CString::new(*s).unwrap()).collect();
        let mut ptrs: Vec<*const c_char> = strs.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        (strs, ptrs)
    }

    fn check(
        argv: &[&[u8]],
        program: Option<&[u8]>,
        search: Option<&[u8]>,
        env: &[&[u8]],
        fds: &[FdSlot],
        tty: Option<TtyInfo>,
        inherited: Option<&Captured>,
    ) {
        let expected = owned(argv, program, search, env, fds, tty.clone(), inherited);
        let (_a, argv_c) = c_array(argv);
        let (_e, env_c) = c_array(env);
        let r = ExecRef {
            context: "user",
            argv: StrList::C(argv_c.as_ptr()),
            program,
            search_path: search,
            env: StrList::C(env_c.as_ptr()),
            cwd: b"/tmp/\xffdir",
            fds,
            tty: tty.as_ref(),
            grouping: Grouping::SessionLeader,
            inherited,
        };
        let mut buf = vec![0u8; r.encoded_bound()];
        let n = encode_launch(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], &expected[..]);
        // The slice form encodes identically.
        let r2 = ExecRef {
            argv: StrList::Slice(argv),
            env: StrList::Slice(env),
            ..r
        };
        let n2 = encode_launch(&r2, &mut buf).unwrap();
        assert_eq!(&buf[..n2], &expected[..]);
    }

    #[test]
    fn matches_owned_encoding() {
        let fds = [
            FdSlot {
                target: 0,
                source: FdSource::Pty,
            },
            FdSlot {
                target: 1,
                source: FdSource::Passed,
            },
            FdSlot {
                target: 1000,
                source: FdSource::Passed,
            },
        ];
        let tty = TtyInfo {
            size: WinSize {
                rows: 50,
                cols: 200,
                xpixel: 0,
                ypixel: 0,
            },
            termios: Some(TermModes {
                iflag: 1,
                oflag: 2,
                cflag: 300,
                lflag: 70000,
                cc: [3; 32],
            }),
        };
        // What this process would pass on, and a hand-made one with every field set and
        // the widest values.
        let mut here = Captured::read();
        here.cwd_fd = true;
        let mut wide = Captured::empty();
        wide.umask = 0o777;
        let limits: Vec<Rlimit> = (0..16)
            .map(|resource| Rlimit {
                resource,
                soft: u64::MAX,
                hard: u64::MAX,
            })
            .collect();
        wide.set_rlimits(&limits);
        wide.nice = Some(-20);
        wide.set_affinity(Some(&[0xff; 128]));
        wide.ioprio = Some(u16::MAX);
        wide.oom_score_adj = Some(-1000);
        wide.blocked = u64::MAX;
        wide.ignored = u64::MAX;
        check(
            &[b"ls", b"-l", b"\xff\xfe non-utf8", b""],
            Some(b"/bin/ls"),
            None,
            &[b"A=1", b"B=\x80\x81"],
            &fds,
            Some(tty),
            Some(&here),
        );
        check(&[b"x"], None, Some(b"/usr/bin:/bin"), &[], &[], None, None);
        check(&[], None, None, &[], &fds[1..], None, Some(&wide));
        let long = vec![b'a'; 300];
        let many: Vec<&[u8]> = (0..200).map(|_| &long[..]).collect();
        check(&many, None, None, &many, &[], None, Some(&wide));
    }

    #[test]
    fn bound_is_enough_and_small_buffers_fail_cleanly() {
        let r = ExecRef {
            context: "user",
            argv: StrList::Slice(&[b"true"]),
            program: None,
            search_path: None,
            env: StrList::Slice(&[]),
            cwd: b"/",
            fds: &[],
            tty: None,
            grouping: Grouping::Member,
            inherited: None,
        };
        let mut small = [0u8; 8];
        assert!(encode_launch(&r, &mut small).is_err());
    }
}
