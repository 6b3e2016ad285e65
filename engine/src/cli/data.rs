//! `wasmpush data put|get|del|ls`: the publish API from the command line, for operators and
//! scripts. It speaks HTTP to the running engine's publish address, so what it writes is durable
//! and pushed like any other publish.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::http::request;
use crate::config::Config;
use crate::data::{check_bucket, check_key};

/// Where the publish API is and how to authenticate.
#[derive(Debug, Args)]
pub(super) struct DataArgs {
    /// What to do.
    #[command(subcommand)]
    command: DataCommand,
    /// Config file of the engine (for its publish address and token).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Publish address of the engine [default: from --config, else 127.0.0.1:9505].
    #[arg(long, value_name = "ADDR", global = true)]
    publish: Option<SocketAddr>,
    /// Bearer token of the publish API [default: from --config].
    #[arg(long, value_name = "TOKEN", env = "WASMPUSH_PUBLISH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

/// The data commands.
#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Sets KEY of BUCKET to a JSON value (`-` reads it from standard input).
    Put {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value, as JSON text, or `-` for standard input.
        value: String,
    },
    /// Prints the JSON value of KEY in BUCKET.
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Deletes KEY of BUCKET.
    Del {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Lists the keys of BUCKET, one a line, in order.
    Ls {
        /// The bucket.
        bucket: String,
        /// Start after this key.
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// List at most this many keys (all when not given).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// Runs a data command against the publish API.
pub(super) fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let addr = args.publish.unwrap_or(config.publish);
    let token = args.token.or(config.publish_token);
    let call = |method: &str, path: &str, body: &str| -> anyhow::Result<String> {
        let (status, answer) = request(addr, method, path, token.as_deref(), body)
            .with_context(|| format!("the publish API at {addr} does not answer"))?;
        if status == 200 {
            return Ok(answer);
        }
        let reason = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|value| value["error"].as_str().map(str::to_owned))
            .unwrap_or(answer);
        anyhow::bail!("{status}: {reason}")
    };
    // Checked here, before they go into a request line: a name with a space or a line break
    // would make another request of it.
    let max_key = config.max_key_bytes;
    let names = |bucket: &str, key: Option<&str>| -> anyhow::Result<()> {
        check_bucket(bucket).map_err(anyhow::Error::msg)?;
        key.map_or(Ok(()), |key| check_key(key, max_key)).map_err(anyhow::Error::msg)
    };
    match &args.command {
        DataCommand::Put { bucket, key, .. } | DataCommand::Get { bucket, key } | DataCommand::Del { bucket, key } => {
            names(bucket, Some(key))?;
        }
        DataCommand::Ls { bucket, after, .. } => names(bucket, after.as_deref())?,
    }
    match args.command {
        DataCommand::Put { bucket, key, value } => {
            let value = match value.as_str() {
                "-" => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("cannot read the value from standard input")?;
                    text
                }
                _ => value,
            };
            println!("{}", call("PUT", &key_path(&bucket, &key), &value)?);
        }
        DataCommand::Get { bucket, key } => println!("{}", call("GET", &key_path(&bucket, &key), "")?),
        DataCommand::Del { bucket, key } => println!("{}", call("DELETE", &key_path(&bucket, &key), "")?),
        DataCommand::Ls { bucket, mut after, limit } => {
            let mut left = limit.unwrap_or(usize::MAX);
            while left > 0 {
                let page = left.min(1000);
                let from = after.as_deref().map(|key| format!("&after={key}")).unwrap_or_default();
                let answer = call("GET", &format!("/v1/buckets/{bucket}?limit={page}{from}"), "")?;
                let listing: serde_json::Value = serde_json::from_str(&answer).context("the listing is not JSON")?;
                for key in listing["keys"].as_array().into_iter().flatten().filter_map(|key| key.as_str()) {
                    println!("{key}");
                    left -= 1;
                }
                match listing["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The API path of one key, whose names are checked: they hold no character a path must escape
/// (docs/data.md).
fn key_path(bucket: &str, key: &str) -> String {
    format!("/v1/buckets/{bucket}/keys/{key}")
}
