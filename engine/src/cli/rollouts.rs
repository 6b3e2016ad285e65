//! The commands that ship builds to one running engine through its admin endpoint: `deploy`
//! without `--nats` (at once, `--canary PCT`, `--shadow [SECS]`), `versions`, `rollback`,
//! `promote` and `abort` (docs/rollouts.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::Args;

use super::http::{Body, DEPLOY_TIMEOUT, request, request_with};
use super::pidfile::DEFAULT_PID_FILE;
use crate::config::{Config, is_valid_name};
use crate::rollout::KeptVersion;
use crate::rollout::thousands;
use crate::rollout_control::{EndedRollout, VersionList};
use crate::wall_clock::unix_ms;

/// Which engine: its admin endpoint, found as `status` finds it.
#[derive(Debug, Clone, Args)]
pub(super) struct AdminArgs {
    /// Pid file of the running engine.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PID_FILE)]
    pub(super) pid_file: PathBuf,
    /// Config file the engine was started with (its admin address; for `deploy --nats`, its
    /// `[cluster]` table).
    #[arg(long, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Admin address of the engine [default: from --config, else as the engine was started].
    #[arg(long, value_name = "ADDR")]
    pub(super) admin: Option<SocketAddr>,
    /// Bearer token of the admin endpoint [default: from --config or the engine's start].
    #[arg(long, value_name = "TOKEN", env = "WASMPUSH_ADMIN_TOKEN", hide_env_values = true)]
    pub(super) admin_token: Option<String>,
}

/// Where the admin endpoint is, and its token.
#[derive(Debug, Clone)]
pub(super) struct Admin {
    /// Its address.
    pub(super) addr: SocketAddr,
    /// Its bearer token, if it needs one.
    pub(super) token: Option<String>,
}

impl Admin {
    /// `POST path` with `body` (or `GET` without one); the JSON answer of a 2xx, else the
    /// engine's reason as the error.
    fn call(&self, method: &str, path: &str, body: Option<Body<'_>>) -> anyhow::Result<serde_json::Value> {
        let (status, answer) = match body {
            Some(body) => request_with(self.addr, method, path, self.token.as_deref(), body, DEPLOY_TIMEOUT),
            None => request(self.addr, method, path, self.token.as_deref(), ""),
        }
        .with_context(|| format!("the engine's admin endpoint {} does not answer", self.addr))?;
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer));
        if (200..300).contains(&status) {
            return Ok(json);
        }
        let why = json.get("error").and_then(|why| why.as_str()).map_or_else(|| json.to_string(), str::to_owned);
        anyhow::bail!("HTTP {status}: {why}")
    }
}

/// How `deploy` ships a build to one engine.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shipping {
    /// To every connection at once.
    Now,
    /// A canary.
    Canary {
        /// Share of the connections.
        percent: f64,
        /// Its window in seconds.
        secs: u64,
        /// Whether promotion waits for `promote`.
        manual: bool,
    },
    /// A shadow run.
    Shadow {
        /// Share of the connections sampled.
        sample: f64,
        /// Its window in seconds.
        secs: u64,
    },
}

/// `name`, if it can name a plugin (it goes into the request's path).
fn plugin(name: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(is_valid_name(name), "`{name}` is not a plugin name: letters, digits, `-` and `_`, at most 64");
    Ok(name)
}

/// `deploy NAME FILE` to one engine.
pub(super) fn deploy(
    admin: &Admin,
    name: &str,
    file: &std::path::Path,
    wasm: &[u8],
    how: Shipping,
) -> anyhow::Result<ExitCode> {
    let query = match how {
        Shipping::Now => "mode=now".to_owned(),
        Shipping::Canary { percent, secs, manual } => {
            format!("mode=canary&percent={percent}&secs={secs}&manual={manual}")
        }
        Shipping::Shadow { sample, secs } => format!("mode=shadow&percent={sample}&secs={secs}"),
    };
    let body = Body { content_type: "application/wasm", bytes: wasm };
    let answer = admin
        .call("POST", &format!("/plugins/{}/deploy?{query}", plugin(name)?), Some(body))
        .with_context(|| format!("cannot deploy {} as {name}", file.display()))?;
    println!("{}", answer["message"].as_str().unwrap_or("deployed"));
    Ok(ExitCode::SUCCESS)
}

/// `versions NAME`: the kept builds, newest first, the serving one marked.
pub(super) fn versions(admin: &Admin, name: &str) -> anyhow::Result<ExitCode> {
    let list: VersionList =
        serde_json::from_value(admin.call("GET", &format!("/plugins/{}/versions", plugin(name)?), None)?)
            .context("the admin endpoint sent an unexpected list")?;
    if list.versions.is_empty() {
        println!("no kept builds of {name}");
        return Ok(ExitCode::SUCCESS);
    }
    let now_ms = unix_ms(SystemTime::now());
    println!("  {:<12} {:>10} {:>12}  {:<9} ", "VERSION", "BYTES", "LOADED", "FROM");
    for KeptVersion { hash, bytes, loaded_at_ms, source } in &list.versions {
        let serving = if list.serving.as_ref() == Some(hash) { "  <- serving" } else { "" };
        let ago = format!("{} s ago", now_ms.saturating_sub(*loaded_at_ms) / 1000);
        println!("  {hash:.12} {:>10} {ago:>12}  {source:<9}{serving}", thousands(*bytes as u64));
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollback NAME [VERSION]`.
pub(super) fn rollback(admin: &Admin, name: &str, version: Option<&str>) -> anyhow::Result<ExitCode> {
    if let Some(version) = version {
        anyhow::ensure!(
            !version.is_empty() && version.bytes().all(|b| b.is_ascii_hexdigit()),
            "version `{version}`: give a build's hash or its first hex digits, as `versions {name}` lists them"
        );
    }
    let query = version.map(|version| format!("?version={version}")).unwrap_or_default();
    let kept: KeptVersion = serde_json::from_value(admin.call(
        "POST",
        &format!("/plugins/{}/rollback{query}", plugin(name)?),
        Some(Body { content_type: "application/json", bytes: b"" }),
    )?)
    .context("the admin endpoint sent an unexpected answer")?;
    println!("{name} serves build {:.12} again (kept from {})", kept.hash, kept.source);
    Ok(ExitCode::SUCCESS)
}

/// `promote NAME` or `abort NAME`: `action` is `promote` or `abort`.
pub(super) fn end(admin: &Admin, name: &str, action: &str) -> anyhow::Result<ExitCode> {
    let body = Body { content_type: "application/json", bytes: b"" };
    let ended: EndedRollout =
        serde_json::from_value(admin.call("POST", &format!("/plugins/{}/{action}", plugin(name)?), Some(body))?)
            .context("the admin endpoint sent an unexpected answer")?;
    println!("{name}: {}", ended.reason);
    Ok(ExitCode::SUCCESS)
}

/// The admin endpoint of the engine `args` name, as `status` finds it: `--admin`, else the
/// config file's, else the address the running engine was started with.
pub(super) fn admin_of(args: &AdminArgs, started: impl FnOnce() -> anyhow::Result<Config>) -> anyhow::Result<Admin> {
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => started()?,
    };
    Ok(Admin { addr: args.admin.unwrap_or(config.admin), token: args.admin_token.clone().or(config.admin_token) })
}
