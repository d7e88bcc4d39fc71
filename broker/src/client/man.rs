//! `ctx man [VERB]`: the ctx(1) manual page, or ctx-VERB(1), in roff, generated from the
//! clap definitions (`ctx man | man -l -` reads it; `scripts/install.sh` installs them).

use std::path::PathBuf;

use clap::{Args, Command, CommandFactory};

use super::error::Error;

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The page of one verb (ctx-VERB(1)) instead of ctx(1)
    #[arg(value_name = "VERB", conflicts_with = "out_dir")]
    pub verb: Option<String>,
    /// Write ctx.1 and every ctx-VERB.1 into this directory instead
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub fn run(args: ManArgs) -> Result<i32, Error> {
    let Some(dir) = args.out_dir else {
        super::print(&page(args.verb.as_deref())?);
        return Ok(0);
    };
    let names = std::iter::once(None).chain(verbs().into_iter().map(Some));
    for verb in names {
        let file = match &verb {
            None => dir.join("ctx.1"),
            Some(v) => dir.join(format!("ctx-{v}.1")),
        };
        std::fs::write(&file, page(verb.as_deref())?)
            .map_err(|e| Error::io(format!("cannot write {}", file.display()), e))?;
    }
    Ok(0)
}

/// The names of the verbs that have a page of their own.
pub fn verbs() -> Vec<String> {
    super::Cli::command()
        .get_subcommands()
        .filter(|c| !matches!(c.get_name(), "help" | "man" | "completions"))
        .map(|c| c.get_name().to_string())
        .collect()
}

pub fn page(verb: Option<&str>) -> Result<Vec<u8>, Error> {
    let root = super::Cli::command();
    let cmd: Command = match verb {
        None => root,
        Some(name) => {
            let sub = root.find_subcommand(name).cloned().ok_or_else(|| {
                Error::Usage(format!("no verb {name:?} (one of: {})", verbs().join(", ")))
            })?;
            // A verb's page is titled as man(1) files it: ctx-exec(1).
            sub.name(format!("ctx-{name}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| Error::io("rendering the manual page", e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_render() {
        let top = String::from_utf8(page(None).unwrap()).unwrap();
        assert!(top.contains(".TH ctx 1"), "{}", &top[..200.min(top.len())]);
        assert!(top.contains("reload"));
        let exec = String::from_utf8(page(Some("exec")).unwrap()).unwrap();
        assert!(exec.contains(".TH ctx-exec 1"));
        assert!(exec.contains("\\-\\-context"));
        assert!(page(Some("nope")).is_err());
        assert!(verbs().contains(&"kill".to_string()));
        assert!(!verbs().contains(&"help".to_string()));
    }
}
