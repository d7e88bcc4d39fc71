//! Egress by name: a context with `isolation.network = { allow = [..] }` runs in its own
//! network namespace with loopback only (the one `namespaces` keeps for it), and the broker
//! serves a proxy on a loopback port *inside* that namespace. The proxy speaks HTTP
//! (`CONNECT` and absolute-URI requests) and SOCKS5 on the same port (told apart by the
//! first byte), connects from the host's namespace only to names the rule allows, and
//! writes one audit line per attempt (metered per uid, see `State::record`).
//!
//! - [`rule`]: what a rule allows, and which resolved addresses a name may not lead to;
//! - [`listener`]: the listening socket made inside the namespace, the accept loop, the
//!   per-context cap and the handshake deadline;
//! - [`http`] and [`socks`]: the two handshakes, each reading what the client asks for;
//! - [`dial`]: resolution by the broker, the address checks, the connect, the counted relay.
//!
//! Attribution: each launch's environment names the proxy as
//! `http://launch:ID@127.0.0.1:PORT`; clients send that back (`Proxy-Authorization`, or
//! SOCKS5 user/password), and the audit line names the launch when ID is a launch of the
//! same context. Any process of the context can read another's environment, so this only
//! attributes; it never authorizes. The rule is the context's, whatever the credentials.

pub mod dial;
pub mod http;
pub mod listener;
pub mod rule;
pub mod socks;

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::kernel::namespaces::Holder;
use super::{audit, Shared};
use crate::audit_event::AuditEvent;
use crate::config::{Config, Context};
use rule::Rule;

// ---------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------

/// How long a client has to say where it wants to go (the whole handshake, however it
/// dribbles it).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one context may hold open through its proxy at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Each of a connection's four socket buffers (receive and send, at both ends) is set, so
/// the kernel's autotuning (up to `tcp_rmem`'s maximum, tens of MiB, per socket) never
/// decides what a context makes the broker hold: every connection gets the floor, and a
/// share of the context's pool on top: half of what is left, three parts to each buffer
/// at the destination's end and one to each at the client's. The kernel counts twice what
/// is set (its bookkeeping), so a context at its cap holds at most
/// 2 x (512 x 4 x 64 KiB + 64 MiB) = 384 MiB in socket buffers. The destination's end is
/// where a window must cover a real round trip (12 MiB: 120 MB/s over a 100 ms path), and
/// where a receive window the relay drains in bursts holds a pacing sender back: here a
/// download through the proxy went from 73-84% of a direct one to 89-96% when that buffer
/// grew from 4 to 12-16 MiB. The client's end is loopback in the context's namespace.
pub const BUFFER_FLOOR: usize = 64 * 1024;
pub const BUFFER_MAX_DESTINATION: usize = 12 << 20;
pub const BUFFER_MAX_CLIENT: usize = 4 << 20;
const BUFFER_POOL: usize = 64 << 20;
/// The pool's unit: the semaphore counts KiB.
const BUFFER_UNIT: usize = 1024;
/// Resolving a name, and then connecting to what it resolved to.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Launch ids remembered per context for attribution (a launch older than that many of
/// its context's later ones is logged without its id).
const RECENT_LAUNCHES: usize = 4096;
/// The variables a launch of an egress context gets (each also in lower case).
const PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"];
/// git asks libcurl to send proxy credentials only after a 407 challenge, which this
/// proxy never sends; "basic" makes it send them up front, so its attempts are attributed.
const GIT_AUTH: &str = "GIT_HTTP_PROXY_AUTHMETHOD";
/// Names clients reach directly: the namespace's own loopback.
const NO_PROXY: &str = "localhost,127.0.0.1,::1";

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/// Every egress context's proxy.
#[derive(Default)]
pub struct Egress {
    proxies: Mutex<Proxies>,
    /// Why a context's proxy is not serving, by context.
    failures: Mutex<HashMap<String, String>>,
    /// The states of listeners replaced (a namespace re-created) or dropped (one that
    /// could not be made again) while connections they accepted may still relay: those
    /// are the context's too, and follow its rule.
    detached: Mutex<Vec<Weak<State>>>,
    /// Set when the broker stops: every connection ends, and writes its line.
    stopping: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Proxies {
    by_context: HashMap<String, Proxy>,
    /// Each egress context's rule and uid in the configuration last synced: the only place
    /// a proxy takes them from. A launch carries the context as it was when the launch was
    /// authorized, which a reload may have changed since; were its copy used, a launch
    /// queued across a reload would put the old rule back in force for the whole context.
    /// Held under the same lock as the proxies, so a proxy made while a reload syncs gets
    /// either the rule the reload then sets on it, or the new one.
    rules: HashMap<String, (Arc<Rule>, u32)>,
}

/// Why there is no proxy to give a launch.
#[derive(Debug, thiserror::Error)]
enum EnsureError {
    /// The configuration in force gives the context no egress (whatever the launch's own,
    /// older, copy of it said).
    #[error("context {0}: no egress in the configuration in force")]
    NoEgress(String),
    #[error("{0}")]
    NotInForce(String),
}

/// One context's listener, tied to the namespace it was made in.
struct Proxy {
    holder: Weak<Holder>,
    port: u16,
    state: Arc<State>,
    accept: tokio::task::AbortHandle,
}

/// What a context's connections share; the rule and uid follow reloads.
pub struct State {
    pub context: String,
    uid: AtomicU32,
    /// The rule in force; `None` once the context has no egress any more. Connections
    /// watch it: a reload that no longer allows one ends it.
    rule: tokio::sync::watch::Sender<Option<Arc<Rule>>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// What the context's connections may set their socket buffers to beyond the floor.
    buffers: Arc<tokio::sync::Semaphore>,
    /// This context's share of the name lookups all contexts may run at once.
    pub lookups: Arc<tokio::sync::Semaphore>,
    /// The connections it opened lately, by destination.
    pub dials: dial::DialBudget,
    launches: Mutex<VecDeque<u64>>,
    shared: Weak<Shared>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// One egress attempt, for its audit line.
pub struct Attempt {
    pub launch: Option<u64>,
    /// `connect`, `http` or `socks5`.
    pub via: &'static str,
    /// The host as the client sent it.
    pub host: Vec<u8>,
    pub port: u16,
    pub allowed: bool,
    /// Why it was denied.
    pub reason: Option<String>,
    /// Why an allowed attempt did not connect.
    pub error: Option<String>,
    pub address: Option<std::net::SocketAddr>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub started: Instant,
}

// ---------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------

impl Egress {
    /// Makes the proxies match `config`: a listener in each egress context's namespace
    /// (kept when the namespace is the same, its rule replaced), none for the others.
    /// Runs inside the tokio runtime (the accept loops are spawned on it). Only this sets
    /// a proxy's rule.
    pub fn sync(&self, shared: &Arc<Shared>, config: &Config) -> Vec<String> {
        let rules: HashMap<String, (Arc<Rule>, u32)> = config
            .contexts
            .values()
            .filter_map(|c| {
                let rule = c.isolation.network.egress()?;
                Some((c.name.clone(), (rule.clone(), c.user.uid)))
            })
            .collect();
        {
            let mut proxies = self.lock();
            // Connections already open follow the new rule, also where no listener can be
            // made now.
            proxies.by_context.retain(|name, p| match rules.get(name) {
                Some((rule, uid)) => {
                    p.state.update(rule, *uid);
                    true
                }
                None => {
                    p.state.retire();
                    false
                }
            });
            self.detached_lock().retain(|w| {
                let Some(state) = w.upgrade() else {
                    return false;
                };
                match rules.get(&state.context) {
                    Some((rule, uid)) => state.update(rule, *uid),
                    None => state.retire(),
                }
                true
            });
            proxies.rules = rules.clone();
        }
        self.failures_lock()
            .retain(|name, _| rules.contains_key(name));
        let mut warnings = Vec::new();
        for ctx in config.contexts.values() {
            if !rules.contains_key(&ctx.name) {
                continue;
            }
            // Without its namespace the context is not isolated at all; `namespaces`
            // warned about that already.
            let Some(holder) = shared.namespaces.for_context(ctx) else {
                continue;
            };
            if let Err(EnsureError::NotInForce(w)) = self.ensure(shared, &ctx.name, &holder) {
                warnings.push(w);
            }
        }
        warnings.extend(shared.admissions.set_egress_contexts(rules.len()));
        warnings
    }

    /// The proxy variables for launch `id` into `context`, which enters `holder`'s
    /// namespace; empty when the configuration in force gives the context no egress, or
    /// its proxy cannot serve (the launch then has no network at all).
    pub fn launch_env(
        &self,
        shared: &Arc<Shared>,
        context: &str,
        holder: &Arc<Holder>,
        id: u64,
    ) -> Vec<CString> {
        let (port, state) = match self.ensure(shared, context, holder) {
            Ok(p) => p,
            Err(EnsureError::NoEgress(_)) => return Vec::new(),
            Err(EnsureError::NotInForce(w)) => {
                tracing::warn!("{w}");
                return Vec::new();
            }
        };
        state.remember(id);
        let http = format!("http://launch:{id}@127.0.0.1:{port}");
        let socks = format!("socks5h://launch:{id}@127.0.0.1:{port}");
        let mut env = Vec::new();
        for name in PROXY_VARS {
            let value = match name {
                "ALL_PROXY" => socks.as_str(),
                "NO_PROXY" => NO_PROXY,
                _ => http.as_str(),
            };
            for n in [name.to_string(), name.to_ascii_lowercase()] {
                env.extend(CString::new(format!("{n}={value}")));
            }
        }
        env.extend(CString::new(format!("{GIT_AUTH}=basic")));
        env
    }

    /// The warnings `ctx status` shows for proxies that could not listen.
    pub fn warnings(&self) -> Vec<String> {
        let failures = self.failures_lock();
        let mut names: Vec<&String> = failures.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| not_in_force(name, &failures[name]))
            .collect()
    }

    /// The port the context's proxy listens on, when it serves.
    pub fn port(&self, context: &str) -> Option<u16> {
        self.lock()
            .by_context
            .get(context)
            .filter(|p| p.holder.strong_count() > 0 && !p.accept.is_finished())
            .map(|p| p.port)
    }

    /// Whether `entry` (`NAME=VALUE`) is one of the variables a launch's proxy sets.
    pub fn is_proxy_var(entry: &[u8]) -> bool {
        PROXY_VARS.iter().chain([&GIT_AUTH]).any(|v| {
            let n = v.len();
            entry.len() > n && entry[n] == b'=' && entry[..n].eq_ignore_ascii_case(v.as_bytes())
        })
    }

    /// `ctx status`: the rule and the proxy's address when it serves; else the option as
    /// not in force, with why.
    pub fn describe(&self, ctx: &Context) -> (Vec<String>, Vec<(String, String)>) {
        let Some(rule) = ctx.isolation.network.egress() else {
            return (Vec::new(), Vec::new());
        };
        let (allow, deny) = rule.describe();
        let port = self
            .lock()
            .by_context
            .get(&ctx.name)
            .filter(|p| p.holder.strong_count() > 0 && !p.accept.is_finished())
            .map(|p| p.port);
        let Some(port) = port else {
            let why = self
                .failures_lock()
                .get(&ctx.name)
                .cloned()
                .unwrap_or_else(|| "its proxy is not serving; the next launch starts it".into());
            return (Vec::new(), vec![("egress proxy".into(), why)]);
        };
        let mut items = vec![format!(
            "network egress by name (loopback only, proxy 127.0.0.1:{port})"
        )];
        let list = |l: Vec<String>| {
            if l.is_empty() {
                "nothing".into()
            } else {
                l.join(", ")
            }
        };
        items.push(format!("egress allow ({})", list(allow)));
        if !deny.is_empty() {
            items.push(format!("egress deny ({})", list(deny)));
        }
        (items, Vec::new())
    }

    /// The context's proxy on `holder`'s namespace, made if it is missing or was made in
    /// another (an ended) namespace, with the rule and uid of the configuration in force.
    /// A proxy kept keeps its rule: only [`Egress::sync`] changes that.
    fn ensure(
        &self,
        shared: &Arc<Shared>,
        context: &str,
        holder: &Arc<Holder>,
    ) -> Result<(u16, Arc<State>), EnsureError> {
        let mut proxies = self.lock();
        let Some((rule, uid)) = proxies.rules.get(context).cloned() else {
            return Err(EnsureError::NoEgress(context.to_string()));
        };
        if let Some(p) = proxies.by_context.get(context) {
            let same = std::ptr::eq(p.holder.as_ptr(), Arc::as_ptr(holder));
            if same && !p.accept.is_finished() {
                return Ok((p.port, p.state.clone()));
            }
        }
        let made = listener::listen_in(holder).and_then(|l| {
            let port = l.local_addr()?.port();
            Ok((tokio::net::TcpListener::from_std(l)?, port))
        });
        let (listener, port) = match made {
            Ok(x) => x,
            Err(e) => {
                if let Some(old) = proxies.by_context.remove(context) {
                    self.detach(&old);
                }
                let why = format!("cannot listen inside the context's network namespace: {e}");
                let warning = not_in_force(context, &why);
                self.failures_lock().insert(context.to_string(), why);
                return Err(EnsureError::NotInForce(warning));
            }
        };
        let state = Arc::new(State {
            context: context.to_string(),
            uid: AtomicU32::new(uid),
            rule: tokio::sync::watch::Sender::new(Some(rule)),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            buffers: Arc::new(tokio::sync::Semaphore::new(BUFFER_POOL / BUFFER_UNIT)),
            lookups: Arc::new(tokio::sync::Semaphore::new(dial::LOOKUPS_PER_CONTEXT)),
            dials: dial::DialBudget::default(),
            launches: Mutex::new(VecDeque::new()),
            shared: Arc::downgrade(shared),
            stopping: self.stopping.subscribe(),
        });
        let accept = tokio::spawn(listener::accept_loop(listener, state.clone())).abort_handle();
        let replaced = proxies.by_context.insert(
            context.to_string(),
            Proxy {
                holder: Arc::downgrade(holder),
                port,
                state: state.clone(),
                accept,
            },
        );
        if let Some(old) = replaced {
            self.detach(&old);
        }
        self.failures_lock().remove(context);
        Ok((port, state))
    }

    /// The broker is stopping: no proxy accepts any more, and every connection still open
    /// is ended (reset, as a reload ends one) and audited with why, before the broker
    /// exits; otherwise a tunnel whose destination never closes would leave no record of
    /// what it carried. Waits at most `patience` for their lines.
    pub async fn shut_down(&self, patience: Duration) {
        self.stopping.send_replace(true);
        let states: Vec<Arc<State>> = {
            let mut proxies = self.lock();
            proxies.rules.clear();
            let mut states: Vec<Arc<State>> = proxies
                .by_context
                .drain()
                .map(|(_, p)| p.state.clone())
                .collect();
            states.extend(self.detached_lock().drain(..).filter_map(|w| w.upgrade()));
            states
        };
        let all = async {
            for state in states {
                // Each connection holds one of its context's slots until its line is
                // written.
                let _ = state.slots.acquire_many(MAX_CONNECTIONS as u32).await;
            }
        };
        if tokio::time::timeout(patience, all).await.is_err() {
            tracing::warn!(
                "egress: some connections were not audited within {}s of the broker \
                 stopping",
                patience.as_secs()
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Proxies> {
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn detach(&self, old: &Proxy) {
        let mut detached = self.detached_lock();
        detached.retain(|w| w.strong_count() > 0);
        detached.push(Arc::downgrade(&old.state));
    }

    fn detached_lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<State>>> {
        self.detached.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failures_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Proxy {
    /// Stops accepting; connections already relaying finish on their own.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl State {
    /// The size of a new connection's socket buffers, and the share of the pool it holds
    /// until the connection ends: half of what is left, so the first connections get the
    /// most and every one gets at least the floor.
    pub fn buffer_share(&self) -> (Buffers, Option<tokio::sync::OwnedSemaphorePermit>) {
        let floor = Buffers {
            destination: BUFFER_FLOOR,
            client: BUFFER_FLOOR,
        };
        let (destination, client) = buffer_extra(self.buffers.available_permits());
        let Ok(units) = u32::try_from(2 * (destination + client)) else {
            return (floor, None);
        };
        match self.buffers.clone().try_acquire_many_owned(units) {
            Ok(permit) => (
                Buffers {
                    destination: BUFFER_FLOOR + destination * BUFFER_UNIT,
                    client: BUFFER_FLOOR + client * BUFFER_UNIT,
                },
                Some(permit),
            ),
            // Taken meanwhile by another connection: the floor is always there.
            Err(_) => (floor, None),
        }
    }

    /// The rule in force, to be read through [`current`], and told of every change.
    pub fn rules(&self) -> tokio::sync::watch::Receiver<Option<Arc<Rule>>> {
        self.rule.subscribe()
    }

    /// Wakes the connections only when the rule differs: a reload sets every context's
    /// rule again, changed or not.
    fn update(&self, rule: &Arc<Rule>, uid: u32) {
        self.rule.send_if_modified(|now| {
            if now.as_deref() == Some(&**rule) {
                return false;
            }
            *now = Some(rule.clone());
            true
        });
        self.uid.store(uid, Ordering::Relaxed);
    }

    /// The context has no egress any more: its connections end.
    fn retire(&self) {
        self.rule.send_replace(None);
    }

    /// Resolves once the broker is stopping.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.clone();
        // A gone sender is a broker gone as well.
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Counts a new connection's descriptors against the broker's (see
    /// [`Admissions::admit_egress`](crate::daemon::admission::Admissions::admit_egress)).
    pub fn admit_descriptors(
        &self,
    ) -> Result<Option<crate::daemon::admission::EgressFds>, crate::daemon::admission::EgressRefusal>
    {
        match self.shared.upgrade() {
            Some(shared) => shared.admissions.admit_egress(&self.context).map(Some),
            // The broker is shutting down: nothing is left to count against.
            None => Ok(None),
        }
    }

    fn remember(&self, id: u64) {
        let mut l = self.launches.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() >= RECENT_LAUNCHES {
            l.pop_front();
        }
        l.push_back(id);
    }

    /// The launch a client's credentials name, if it is one of this context's.
    pub fn launch(&self, user: &[u8], password: &[u8]) -> Option<u64> {
        if user != b"launch" {
            return None;
        }
        let id: u64 = std::str::from_utf8(password).ok()?.parse().ok()?;
        let l = self.launches.lock().unwrap_or_else(|e| e.into_inner());
        l.contains(&id).then_some(id)
    }

    /// Writes `attempt`'s audit line. A denial, and an allowed attempt that failed before
    /// carrying anything (a name that does not resolve, a closed port), is metered like
    /// any refusal of the context's uid; the other allowed attempts on the uid's meter of
    /// allowed egress, which past its share sums them per context (see
    /// [`audit::Audit::record_egress`]): a context's process can open them as fast as the
    /// proxy accepts.
    pub fn record(&self, attempt: &Attempt) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let event = AuditEvent::Egress {
            context: self.context.clone(),
            launch: attempt.launch,
            via: attempt.via.into(),
            name: audit::lossless(&attempt.host, audit::NAME_KEEP).into(),
            port: attempt.port,
            allowed: attempt.allowed,
            reason: attempt.reason.clone(),
            error: attempt.error.clone(),
            address: attempt.address.map(|a| a.to_string()),
            bytes_up: attempt.bytes_up,
            bytes_down: attempt.bytes_down,
            duration_ms: attempt.started.elapsed().as_millis() as u64,
        };
        let uid = self.uid.load(Ordering::Relaxed);
        let carried = attempt.bytes_up > 0 || attempt.bytes_down > 0;
        if attempt.allowed && (carried || attempt.error.is_none()) {
            shared.audit.record_egress(uid, event);
        } else {
            // A process of the context: never the operator, whatever its uid.
            shared.audit.record_refusal(Some(uid), event);
        }
    }
}

/// What each of a connection's socket buffers is set to: both at the destination's end,
/// both at the client's.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub destination: usize,
    pub client: usize,
}

// ---------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------

/// What one buffer at the destination's end and one at the client's get beyond the floor,
/// in pool units, when `free` units are left: two of each take half of `free` at most.
fn buffer_extra(free: usize) -> (usize, usize) {
    (
        (free * 3 / 16).min((BUFFER_MAX_DESTINATION - BUFFER_FLOOR) / BUFFER_UNIT),
        (free / 16).min((BUFFER_MAX_CLIENT - BUFFER_FLOOR) / BUFFER_UNIT),
    )
}

/// The rule `rules` holds now, marked as seen; one that allows nothing once the context
/// has no egress any more.
pub fn current(rules: &mut tokio::sync::watch::Receiver<Option<Arc<Rule>>>) -> Arc<Rule> {
    rules.borrow_and_update().clone().unwrap_or_default()
}

fn not_in_force(context: &str, why: &str) -> String {
    format!(
        "contexts.{context}.isolation: egress proxy NOT in force: {why}; its launches have no \
         network"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_share_the_buffer_pool_and_never_go_below_the_floor() {
        let mut free = BUFFER_POOL / BUFFER_UNIT;
        let mut set = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let (destination, client) = buffer_extra(free);
            free -= 2 * (destination + client);
            set.push((
                BUFFER_FLOOR + destination * BUFFER_UNIT,
                BUFFER_FLOOR + client * BUFFER_UNIT,
            ));
        }
        assert_eq!(set[0], (BUFFER_MAX_DESTINATION, BUFFER_MAX_CLIENT));
        assert!(set.windows(2).all(|w| w[0].0 >= w[1].0 && w[0].1 >= w[1].1));
        assert!(set
            .iter()
            .all(|&(d, c)| d >= BUFFER_FLOOR && c >= BUFFER_FLOOR && d <= BUFFER_MAX_DESTINATION));
        let total: usize = set.iter().map(|(d, c)| 2 * (d + c)).sum();
        assert!(total <= MAX_CONNECTIONS * 4 * BUFFER_FLOOR + BUFFER_POOL);
        // A context's second download still gets half of the first one's.
        assert!(set[1].0 >= BUFFER_MAX_DESTINATION / 2, "{:?}", &set[..2]);
    }

    #[test]
    fn proxy_vars_are_recognised_in_either_case() {
        assert!(Egress::is_proxy_var(b"HTTP_PROXY=x"));
        assert!(Egress::is_proxy_var(b"https_proxy="));
        assert!(Egress::is_proxy_var(b"no_proxy=a"));
        assert!(Egress::is_proxy_var(b"GIT_HTTP_PROXY_AUTHMETHOD=anyauth"));
        assert!(!Egress::is_proxy_var(b"HTTP_PROXY_X=1"));
        assert!(!Egress::is_proxy_var(b"PATH=/bin"));
    }
}
