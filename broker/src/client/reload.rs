//! `ctx reload`: the broker re-reads its config file and swaps it in whole, or keeps the
//! running one and says why (file, line, key). Exit 0 reloaded, 1 refused, 125 no broker.

use std::path::Path;

use clap::Args;
use ctx_protocol::{Reply, Request};
use serde_json::json;

use super::connection::unexpected;
use super::error::Error;

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, args: ReloadArgs) -> Result<i32, Error> {
    let (contexts, warnings) = match super::one_shot(socket, &Request::Reload)? {
        (_, Reply::Reloaded { contexts, warnings }) => (contexts, warnings),
        (socket, other) => return Err(unexpected(&socket, other)),
    };
    if args.json {
        let v = json!({ "reloaded": true, "contexts": contexts, "warnings": warnings });
        super::print(format!("{v:#}\n").as_bytes());
        return Ok(0);
    }
    for w in &warnings {
        eprintln!("ctx: warning: {w}");
    }
    super::print(
        format!(
            "reloaded: {} context(s): {}\n",
            contexts.len(),
            contexts.join(", ")
        )
        .as_bytes(),
    );
    Ok(0)
}
