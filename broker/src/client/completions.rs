//! `ctx completions SHELL`: a completion script generated from the same clap definitions
//! the parser uses, so it never lists a flag ctx does not take.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::error::Error;

#[derive(Debug, Args)]
#[command(after_help = "Install, e.g.:\n  \
    ctx completions bash > /usr/share/bash-completion/completions/ctx\n  \
    ctx completions zsh  > /usr/local/share/zsh/site-functions/_ctx\n  \
    ctx completions fish > /usr/share/fish/vendor_completions.d/ctx.fish")]
pub struct CompletionsArgs {
    /// The shell to generate for
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: CompletionsArgs) -> Result<i32, Error> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut super::Cli::command(), "ctx", &mut out);
    super::print(&out);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_script_names_the_verbs() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut super::super::Cli::command(), "ctx", &mut out);
            let text = String::from_utf8(out).unwrap();
            for verb in ["exec", "status", "reload", "ps", "kill", "log"] {
                assert!(text.contains(verb), "{shell:?} completion lacks {verb}");
            }
        }
    }
}
