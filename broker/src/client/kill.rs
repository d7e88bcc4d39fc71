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
    let ids = match super::one_shot(socket, &Request::Kill { target, signo })? {
        (_, Reply::Killed { ids }) => ids,
        (socket, other) => return Err(unexpected(&socket, other)),
    };
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    super::print(
        format!(
            "sent {} to {} routed process group(s): {}\n",
            signal_name(signo),
            ids.len(),
            list.join(", ")
        )
        .as_bytes(),
    );
    Ok(0)
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
    fn names_for_messages() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(
            signal_name(libc::SIGRTMIN()),
            format!("signal {}", libc::SIGRTMIN())
        );
    }
}
