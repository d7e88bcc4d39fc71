//! The broker's socket and lifecycle: take the socket systemd passed or bind one (replacing
//! a stale socket, refusing to steal a live one), accept connections, reload on SIGHUP,
//! shut down cleanly on SIGTERM/SIGINT.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;

use super::admission::{self, Refusal};
use super::kernel::landlock;
use super::peer::{IdentityError, Pinned};
use super::quiet_log::Quiet;
use super::requests::reload;
use super::{audit::Audit, dispatch, registry::Registry, systemd, Peer, Shared};
use crate::config::{self, Config};

/// How long a stopping broker waits for its egress connections' audit lines: they are
/// ended at once, so only a broker too loaded to run them takes longer.
const EGRESS_AUDIT_PATIENCE: Duration = Duration::from_secs(5);

/// Command-line overrides of the config's `[broker]` settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config: PathBuf,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("another broker is already listening on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error("{0}")]
    Activation(#[from] systemd::SystemdError),
    #[error(
        "the socket's directory {dir} is not safe: {why}; whoever can change it could put \
         another file where the broker sets the socket's mode and group, or their own socket \
         in its place: put the socket in a directory only root (or the broker's own user) \
         can change, e.g. /run/ctx"
    )]
    UnsafeSocketDir { dir: PathBuf, why: String },
    #[error("cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |err| ServerError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// Runs the broker until SIGTERM/SIGINT; returns once every routed process is gone and the
/// socket is removed.
pub async fn run(opts: Options) -> Result<(), ServerError> {
    let config = config::load(&opts.config, landlock::abi())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let socket_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| config.broker.socket.clone());
    let state_dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| config.broker.state_dir.clone());
    let audit_path = opts
        .audit_log
        .clone()
        .unwrap_or_else(|| config.broker.audit_log.clone());

    match admission::raise_nofile() {
        Ok(soft) => super::spawn::set_child_nofile_soft(soft),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }

    std::fs::create_dir_all(&state_dir).map_err(io_err("create state dir", &state_dir))?;
    let _ = std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o711));
    // A socket systemd created outlives this process (that is the point of activation):
    // it is never unlinked here.
    let (listener, socket_path, bound_here) = match systemd::activated_listener()? {
        Some(activated) => {
            if opts
                .socket
                .as_ref()
                .is_some_and(|s| *s != activated.address)
            {
                tracing::warn!(
                    "listening on {} as passed by the service manager, not on --socket",
                    activated.address.display()
                );
            }
            if activated.address.is_absolute() {
                set_owner_mode(&activated.address, &config)?;
            }
            activated
                .listener
                .set_nonblocking(true)
                .map_err(io_err("use the passed socket", &activated.address))?;
            let listener = UnixListener::from_std(activated.listener)
                .map_err(io_err("use the passed socket", &activated.address))?;
            (listener, activated.address, false)
        }
        None => (bind(&socket_path, &config)?, socket_path, true),
    };

    let mut warnings = Vec::new();
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        // Its contexts run as its own uid, which may ptrace a dumpable process, read its
        // memory and environment, and take its descriptors (pidfd_getfd: the reserved
        // ports' sockets). Not dumpable, only CAP_SYS_PTRACE may. Routed programs are
        // dumpable again after their execve; the namespace holders inherit this.
        // SAFETY: plain prctl on this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    // Recomputed by `ctx status` and at each reload (see isolation.rs).
    for w in super::isolation::uid_warnings(&config) {
        tracing::warn!("{w}");
    }
    let routing = super::plan::Routing::locate(&socket_path);
    let stand_in = routing.interposer.with_file_name("ctx-shim");
    if let Err(e) = super::spawn::set_session_leader(&stand_in) {
        tracing::warn!(
            "{}: {e}; a terminal launch's program leads its session itself, and its \
             background jobs die with it",
            stand_in.display()
        );
    }
    let chained: Vec<&str> = config
        .contexts
        .values()
        .filter(|c| c.route_children_to.is_some())
        .map(|c| c.name.as_str())
        .collect();
    let route_lib = routing.interposer.with_file_name("libctx_route.so");
    if let Some(missing) = [&routing.interposer, &route_lib]
        .into_iter()
        .find(|p| !p.exists())
        .filter(|_| !chained.is_empty())
    {
        warnings.push(format!(
            "route_children_to of {} needs the interposer at {}, which does not exist: \
             launches from those contexts will fail (set CTX_INTERPOSER or install it)",
            chained.join(", "),
            missing.display()
        ));
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Recomputed by `ctx status` and at each reload, from the socket as it is then.
    if let Some(access) = super::socket_reach::SocketAccess::on_disk(&socket_path) {
        for w in super::socket_reach::warnings(&config, &access) {
            tracing::warn!("{w}");
        }
    }

    // Before the first connection: the first launch into a context must not pay for its
    // namespaces. The holders' thread lives as long as the broker (see namespaces.rs).
    let namespaces = super::kernel::namespaces::Namespaces::start()
        .map_err(io_err("start the namespace thread for", &socket_path))?;
    for w in namespaces.sync(&config) {
        tracing::warn!("{w}");
    }

    let (ports, port_warnings) =
        super::kernel::ports::ReservedPorts::bind(&config.broker.reserved_ports);
    for w in port_warnings {
        tracing::warn!("{w}");
        warnings.push(w);
    }

    let cgroups = super::kernel::cgroups::Cgroups::detect();
    for w in cgroups.sync(&config) {
        tracing::warn!("{w}");
    }

    let audit = Audit::open(&audit_path);
    audit.set_max_size(config.broker.audit_log_max);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        config: RwLock::new(Arc::new(config)),
        socket_path: socket_path.clone(),
        state_dir: state_dir.clone(),
        routing: routing.clone(),
        sessions: Default::default(),
        audit,
        registry: Registry::default(),
        next_id: AtomicU64::new(1),
        launches: AtomicU64::new(0),
        started: Instant::now(),
        shutting_down: AtomicBool::new(false),
        shutdown_rx,
        warnings: RwLock::new(warnings),
        namespaces,
        egress: Default::default(),
        ports,
        landlock: Default::default(),
        exec_guard: Default::default(),
        cgroups,
        admissions: Default::default(),
    });

    // Every launch that can name the broker is supervised: started now, so that the
    // broker's descriptors and threads are the same before and after the first launch.
    super::requests::start_supervisor(&shared);

    // Before the first launch, like the namespaces the proxies listen in.
    let egress_warnings = shared.egress.sync(&shared, &shared.config());
    for w in egress_warnings {
        tracing::warn!("{w}");
    }

    // Normally done by main while it was the only thread; again here for an embedder.
    super::signals::protect_process();
    let mut operator_signals = super::signals::OperatorSignals::new()
        .map_err(io_err("watch SIGTERM, SIGINT and SIGHUP for", &socket_path))?;
    super::spawn::snapshot_signal_dispositions();
    let tasks = tokio_util_tracker::Tracker::default();
    tracing::info!(socket = %socket_path.display(), "ctx-broker ready");
    systemd::ready(&reload::serving(&shared.config()));

    let mut accept_errors = Quiet::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    inline_out_of_band(&stream);
                    match Pinned::take(&stream) {
                        Ok(pinned) if pinned.may_wait() => {
                            identify_aside(&shared, &tasks, stream, pinned);
                        }
                        Ok(pinned) => {
                            let found = pinned.identify(&shared.registry);
                            settle(&shared, &tasks, stream, found);
                        }
                        Err(why) => settle(&shared, &tasks, stream, Err(why)),
                    }
                }
                Err(e) => {
                    // EMFILE and friends: the connection stays queued and the listener
                    // readable; pause instead of spinning, and keep serving the others.
                    if let Some(more) = accept_errors.should_log() {
                        tracing::warn!("accept failed: {e}{more}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            request = operator_signals.next(&shared.registry) => match request {
                super::signals::Request::Reload => {
                    let shared = shared.clone();
                    // Loading may block on NSS lookups; the accept loop must not.
                    tokio::task::spawn_blocking(move || reload::reload(&shared, None));
                }
                super::signals::Request::Stop => break,
            },
        }
    }

    tracing::info!("shutting down: stopping routed processes");
    systemd::stopping();
    drop(listener);
    shared.shutting_down.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    tasks.wait().await;
    // Before the namespaces end: the proxies' connections get their audit lines.
    shared.egress.shut_down(EGRESS_AUDIT_PATIENCE).await;
    shared.namespaces.clear();
    // Processes that left their launch's group (setsid) are still in the cgroups.
    for name in shared.config().contexts.keys() {
        shared.cgroups.kill(name, libc::SIGKILL, &[]);
    }
    shared.cgroups.remove_all();
    if bound_here {
        let _ = std::fs::remove_file(&socket_path);
    }
    tracing::info!("ctx-broker stopped");
    Ok(())
}

/// Why a connection is refused before it is served.
#[derive(Debug, thiserror::Error)]
enum AdmitError {
    #[error("{0}")]
    Identity(#[from] super::peer::IdentityError),
    #[error("{0}")]
    Limit(#[from] Refusal),
}

/// Pins who connected (see `peer`), then counts the connection against its uid; a process
/// of a uid-0 context is counted too, only the operator is not.
/// Out-of-band bytes are read as ordinary ones (`SO_OOBINLINE`): otherwise an ordinary
/// `recvmsg` skips such a byte and the kernel frees it, with any descriptors it carries,
/// in that read, on the tokio worker, where closing the last reference to a peer's
/// descriptor may block (a lingering TCP socket). Inline, they arrive as any others and
/// go to the closer threads. No credentials, pidfd or security label come as control
/// messages (a listener systemd made with `PassCredentials=yes` passes `SO_PASSCRED` on
/// to every connection): they would take room from a message's descriptors, which the
/// kernel would then discard (helper-97).
fn inline_out_of_band(stream: &tokio::net::UnixStream) {
    use std::os::fd::AsRawFd;
    /// `SO_PASSPIDFD` (Linux 6.5), not in every libc.
    const SO_PASSPIDFD: libc::c_int = 76;
    for (option, value) in [
        (libc::SO_OOBINLINE, 1),
        (libc::SO_PASSCRED, 0),
        (libc::SO_PASSSEC, 0),
        (SO_PASSPIDFD, 0),
    ] {
        let value: libc::c_int = value;
        // SAFETY: a valid socket and an int-sized option value with its length (an option
        // this kernel does not know is refused, harmlessly).
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Serves an identified peer, or refuses the connection, saying why.
fn settle(
    shared: &Arc<Shared>,
    tasks: &tokio_util_tracker::Tracker,
    stream: tokio::net::UnixStream,
    found: Result<Peer, IdentityError>,
) {
    match found
        .map_err(AdmitError::from)
        .and_then(|peer| admit(shared, peer))
    {
        Ok((peer, admission)) => {
            tasks.spawn(dispatch::serve(shared.clone(), stream, peer, admission));
        }
        Err(why) => turn_away(shared, stream, &why),
    }
}

/// Refuses a connection, saying why to the peer and, metered, to the log.
fn turn_away(shared: &Arc<Shared>, stream: tokio::net::UnixStream, why: &AdmitError) {
    refuse(&stream, why);
    dispose(shared, stream);
    static REFUSALS: Mutex<Quiet> = Mutex::new(Quiet::new());
    let more = REFUSALS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .should_log();
    if let Some(more) = more {
        tracing::warn!("refused a connection: {why}{more}");
    }
}

/// How long a peer's identification may take before the connection is refused: a
/// process the broker may not wait for is in no context it can tell.
const ASIDE_PATIENCE: Duration = Duration::from_secs(5);

/// Identifies a peer on an asking thread among its lane's jobs (`Pinned::lane`), then
/// settles it: on a kernel where that reads files of /proc that wait while a process is in
/// an exec (helper-108 held the accept loop so for good, and with it everyone's
/// connections, root's too). The connection is counted against its uid as one in its
/// handshake from now on (uncounted in the operator's lane) and, as long as the job has
/// not run, by the job, so what waits there is bounded as any uid's connections are;
/// counted as for a peer outside every context, and counted again if it is not one.
fn identify_aside(
    shared: &Arc<Shared>,
    tasks: &tokio_util_tracker::Tracker,
    stream: tokio::net::UnixStream,
    pinned: Pinned,
) {
    let (lane, pid, uid, gid) = (pinned.lane(), pinned.pid(), pinned.uid(), pinned.gid());
    // Entitled if it may be (a context's process may be allowed by its context): as for a
    // peer outside every context, this admission is then the connection's.
    let entitled = shared
        .config()
        .contexts
        .values()
        .any(|c| c.allows(uid, gid, None, false) || !c.allow.contexts.is_empty());
    let counted = shared
        .admissions
        .admit(uid, lane.is_some(), entitled)
        .map(|mut admission| {
            if entitled {
                admission.entitle();
            }
            admission
        });
    let counted = match counted {
        Ok(counted) => counted,
        Err(why) => return turn_away(shared, stream, &AdmitError::Limit(why)),
    };
    let (shared, tasks_inner) = (shared.clone(), tasks.clone());
    tasks.spawn(async move {
        let asked = shared.clone();
        // Counted until the job has run or is dropped unrun: one held in an exec keeps the
        // peer's pidfd (helper-109 had 2,000 such pidfds take the broker's descriptors).
        let job = super::closer::ask(lane, move || (counted, pinned.identify(&asked.registry)));
        let (counted, found) = match tokio::time::timeout(ASIDE_PATIENCE, job).await {
            Ok(Some((counted, found))) => (Some(counted), found),
            _ => (None, Err(IdentityError::Unanswered(pid))),
        };
        let entitled_now = |peer: &Peer| {
            shared
                .config()
                .contexts
                .values()
                .any(|c| c.allows_peer(peer))
        };
        match (counted, found) {
            (Some(counted), Ok(peer))
                if counted.counts_as(peer.uid, peer.in_a_context(), entitled_now(&peer)) =>
            {
                match counted.check_closing() {
                    Ok(()) => {
                        tasks_inner.spawn(dispatch::serve(shared.clone(), stream, peer, counted))
                    }
                    Err(why) => turn_away(&shared, stream, &AdmitError::Limit(why)),
                }
            }
            (counted, found) => {
                // Counted again before this one is given back: never a moment uncounted,
                // so a uid's bound is never passed (at worst it is met one early).
                settle(&shared, &tasks_inner, stream, found);
                drop(counted);
            }
        }
    });
}

fn admit(shared: &Arc<Shared>, peer: Peer) -> Result<(Peer, admission::Admission), AdmitError> {
    let entitled = shared
        .config()
        .contexts
        .values()
        .any(|c| c.allows_peer(&peer));
    let mut admission = shared
        .admissions
        .admit(peer.uid, peer.in_a_context(), entitled)?;
    if entitled {
        admission.entitle();
    }
    admission.check_closing()?;
    Ok((peer, admission))
}

/// Closes a refused connection's socket. Descriptors the peer queued in it are released
/// with it, and closing one of those may block (see `closer`): once the peer can queue no
/// more, a socket with nothing queued is closed here at once, any other on a closer thread.
fn dispose(shared: &Arc<Shared>, stream: tokio::net::UnixStream) {
    let cred = stream.peer_cred().ok();
    let Ok(std) = stream.into_std() else {
        return;
    };
    // The peer's sends fail from now on (EPIPE), so what is queued now is all there is.
    let _ = std.shutdown(std::net::Shutdown::Read);
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(std.as_raw_fd(), libc::FIONREAD, &mut queued) };
    if rc == 0 && queued == 0 {
        // Descriptors ride on bytes: with none queued, none is in flight.
        drop(std);
        return;
    }
    // A refused peer is never the operator, but its identity may not be known (it exited).
    let charger = cred.and_then(|c| shared.admissions.charger(c.uid(), true));
    let charge = charger.as_ref().map(|c| c.charge(1));
    super::closer::close(vec![std.into()], charger.map(|c| c.uid()), charge);
}

/// Tells a refused peer why, if its socket takes the reply without waiting; it is closed
/// right after either way, so a flood costs the broker nothing it keeps.
fn refuse(stream: &tokio::net::UnixStream, why: &AdmitError) {
    let mut bytes = Vec::new();
    let hello = ctx_protocol::Reply::Hello {
        version: ctx_protocol::PROTOCOL_VERSION,
        software: concat!("ctx-broker ", env!("CARGO_PKG_VERSION")).into(),
    };
    // Room that the uid's own other connections hold, and give back as their launches
    // go on: the hook connects again a moment later instead of failing the launch.
    let kind = match why {
        AdmitError::Limit(Refusal::Waiting { .. } | Refusal::Descriptors { .. }) => {
            ctx_protocol::ErrorKind::Busy
        }
        _ => ctx_protocol::ErrorKind::Refused,
    };
    let error = ctx_protocol::Reply::Error {
        kind,
        message: format!("refused before the handshake: {why}").into(),
    };
    if ctx_protocol::frame::encode_vec(&hello, &mut bytes).is_ok()
        && ctx_protocol::frame::encode_vec(&error, &mut bytes).is_ok()
    {
        // Straight to the socket, whatever the reactor has seen of a stream registered a
        // moment ago: a hook told `Busy` connects again only if it reads the reason.
        // SAFETY: a send from our own buffer on our own socket; never blocks nor raises
        // SIGPIPE.
        unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(stream),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

fn bind(path: &Path, config: &Config) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err("create socket directory", dir))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
        verify_socket_dir(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    // Bind under a restrictive umask so no one can connect before the mode is set.
    // SAFETY: umask is process-wide but only changed here, before any other thread binds.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err("bind", path))?;
    set_owner_mode(path, config)?;
    Ok(listener)
}

/// The config decides who may connect, also on a socket systemd created (its SocketMode=
/// is only what holds until the broker starts). Applied through a descriptor of the socket
/// itself, never by its path, which a symlink put in its place in a directory someone else
/// can write would lead to another file for root to chmod and chown.
fn set_owner_mode(path: &Path, config: &Config) -> Result<(), ServerError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        verify_socket_dir(dir)?;
    }
    let node = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))?;
    let is_socket = node
        .metadata()
        .map_err(io_err("look at", path))?
        .file_type()
        .is_socket();
    if !is_socket {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    // An O_PATH descriptor takes no fchmod; its /proc link names exactly its inode.
    let by_fd = format!("/proc/self/fd/{}", node.as_raw_fd());
    std::fs::set_permissions(
        &by_fd,
        std::fs::Permissions::from_mode(config.broker.socket_mode),
    )
    .map_err(io_err("set the mode of", path))?;
    if let Some((_, gid)) = &config.broker.socket_group {
        // SAFETY: fchownat on our descriptor with an empty path and AT_EMPTY_PATH.
        let r = unsafe {
            libc::fchownat(
                node.as_raw_fd(),
                c"".as_ptr(),
                u32::MAX,
                *gid,
                libc::AT_EMPTY_PATH,
            )
        };
        if r != 0 {
            return Err(io_err("set the group of", path)(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// The broker removes, binds, chmods and chowns the socket by its path as root: every
/// directory on that path must be one no one else can change, or they could swap the
/// socket (or a directory above it) for a link to another file between those steps. Each
/// directory of the real path, from `/` down, must belong to root or the broker's own
/// user and be writable by no one else, unless it is sticky (`/tmp`: others' entries may
/// be added there, but ours not replaced, and the next directory is checked in turn).
fn verify_socket_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let unsafe_dir = |d: &Path, why: String| ServerError::UnsafeSocketDir {
        dir: d.to_path_buf(),
        why,
    };
    let real = std::fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
    // SAFETY: plain getter.
    let me = unsafe { libc::geteuid() };
    for d in real.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let meta = std::fs::symlink_metadata(d).map_err(io_err("look at", d))?;
        if !meta.is_dir() {
            return Err(unsafe_dir(d, "it is no longer a directory".into()));
        }
        if meta.uid() != 0 && meta.uid() != me {
            return Err(unsafe_dir(d, format!("it belongs to uid {}", meta.uid())));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            return Err(unsafe_dir(
                d,
                format!(
                    "its mode {:04o} lets its group or others change it",
                    meta.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// Tracks connection tasks so shutdown can wait for every routed process to be reaped.
mod tokio_util_tracker {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::sync::Notify;

    #[derive(Default, Clone)]
    pub struct Tracker {
        inner: Arc<(AtomicUsize, Notify)>,
    }

    impl Tracker {
        pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, fut: F) {
            self.inner.0.fetch_add(1, Ordering::SeqCst);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                fut.await;
                if inner.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                    inner.1.notify_waiters();
                }
            });
        }

        pub async fn wait(&self) {
            loop {
                let notified = self.inner.1.notified();
                if self.inner.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        }
    }
}
