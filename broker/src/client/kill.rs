//! `ctx kill`: signals the process group of one routed launch (by the id `ctx ps` shows)
//! or of every launch in a context. Root may signal any; others only what their uid
//! launched. Exit 0 signalled, 1 nothing matched, 125 refused or no broker.

use std::path::Path;
use std::str::FromStr;

use clap::{ArgGroup, Args};
use ctx_protocol::{KillTarget, Reply, Request};
use nix::sys::signal::Signal;

use super::connection::unexpected;
use super::error::Error;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["id", "context"])))]
pub struct KillArgs {
    /// The launch id from `ctx ps`
    pub id: Option<u64>,
    /// Signal every running launch of this context instead
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Signal name (TERM, SIGKILL, hup, RTMIN+2) or number
    #[arg(long, short = 's', default_value = "TERM", value_name = "SIGNAL")]
    pub signal: String,
}

pub fn run(socket: &Path, args: KillArgs) -> Result<i32, Error> {
    let signo = parse_signal(&args.signal).map_err(Error::Usage)?;
    let target = match (args.id, args.context) {
        (Some(id), _) => KillTarget::Id(id),
        (None, Some(name)) => KillTarget::Context(name),
        (None, None) => unreachable!("clap requires an id or --context"),
    };
    let context = match &target {
        KillTarget::Context(name) => Some(name.clone()),
        KillTarget::Id(_) => None,
    };
    let (ids, others) = match super::one_shot(socket, &Request::Kill { target, signo })? {
        (_, Reply::Killed { ids }) => (ids, 0),
        (_, Reply::KilledInContext { ids, others }) => (ids, others),
        (socket, other) => return Err(unexpected(&socket, other)),
    };
    super::print(report(signo, &ids, others, context.as_deref()).as_bytes());
    Ok(0)
}

/// What was signalled: the launches' process groups (by id), and the other processes of
/// the context that its cgroup held.
fn report(signo: i32, ids: &[u64], others: u64, context: Option<&str>) -> String {
    let mut parts = Vec::new();
    if !ids.is_empty() {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        parts.push(format!(
            "{} routed process group(s) (launch {})",
            ids.len(),
            list.join(", ")
        ));
    }
    if others > 0 || parts.is_empty() {
        let whose = context.map_or(String::new(), |c| format!(" of context {c:?}"));
        let more = if ids.is_empty() { "" } else { " other" };
        parts.push(format!(
            "{others}{more} process(es){whose} found in its cgroup"
        ));
    }
    format!("sent {} to {}\n", signal_name(signo), parts.join(" and "))
}

/// `TERM`, `SIGTERM`, `term`, `15`, `RTMIN`, `RTMIN+3`, `RTMAX-1`.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    let bad = || {
        format!("--signal {text:?}: not a signal (use a name such as TERM, KILL, HUP, INT, USR1, RTMIN+1, or a number)")
    };
    let rtmax = libc::SIGRTMAX();
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=rtmax).contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "--signal {n}: signal numbers run from 1 to {rtmax}"
            ))
        };
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: i32, rest: &str| -> Result<i32, String> {
        let n = match rest.as_bytes().first() {
            None => base,
            Some(b'+') => base + rest[1..].parse::<i32>().map_err(|_| bad())?,
            Some(b'-') => base - rest[1..].parse::<i32>().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if (libc::SIGRTMIN()..=rtmax).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return realtime(libc::SIGRTMIN(), rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return realtime(rtmax, rest);
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|s| s as i32)
        .map_err(|_| bad())
}

fn signal_name(signo: i32) -> String {
    Signal::try_from(signo)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signo}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("SIGKILL"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("hup"), Ok(libc::SIGHUP));
        assert_eq!(parse_signal("sigusr1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("RTMIN"), Ok(libc::SIGRTMIN()));
        assert_eq!(parse_signal("RTMIN+2"), Ok(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("RTMAX-1"), Ok(libc::SIGRTMAX() - 1));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("99").is_err());
        assert!(parse_signal("BOGUS").unwrap_err().contains("not a signal"));
        assert!(parse_signal("RTMAX+1").is_err());
    }

    #[test]
    fn the_report_counts_what_was_signalled() {
        assert_eq!(
            report(libc::SIGTERM, &[3, 4], 0, None),
            "sent SIGTERM to 2 routed process group(s) (launch 3, 4)\n"
        );
        assert_eq!(
            report(libc::SIGKILL, &[], 5, Some("user")),
            "sent SIGKILL to 5 process(es) of context \"user\" found in its cgroup\n"
        );
        assert_eq!(
            report(libc::SIGKILL, &[7], 2, Some("user")),
            "sent SIGKILL to 1 routed process group(s) (launch 7) and 2 other process(es) of \
             context \"user\" found in its cgroup\n"
        );
    }

    #[test]
    fn names_for_messages() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(
            signal_name(libc::SIGRTMIN()),
            format!("signal {}", libc::SIGRTMIN())
        );
    }
}
