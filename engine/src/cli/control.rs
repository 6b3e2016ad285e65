//! The commands that act on a running engine through its pid file and admin endpoint: `stop`,
//! `reload` and `status`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::Signal;

use super::http::request;
use super::pidfile::{self, running};
use crate::admin::{ClusterStatus, Status};
use crate::rollout::{RolloutKind, thousands};
use crate::rollout_control::RolloutStatus;

/// The LSB exit code of `status` for "not running".
const NOT_RUNNING: u8 = 3;

/// Asks the engine named in `pid_file` to rescan its plugins and re-read its config (SIGHUP).
pub(super) fn reload(pid_file: &Path) -> anyhow::Result<ExitCode> {
    let engine = running(pid_file)?.with_context(|| format!("wasmpush is not running{}", stale_note(pid_file)))?;
    engine.signal(Signal::SIGHUP).context("cannot signal the engine")?;
    println!("reload requested (pid {})", engine.pid);
    Ok(ExitCode::SUCCESS)
}

/// What `status` shows.
#[derive(Debug, Clone, Copy)]
pub(super) struct StatusView {
    /// The JSON document as it is.
    pub(super) json: bool,
    /// Every node of the engine's cluster (`/cluster`) rather than the engine alone.
    pub(super) cluster: bool,
}

/// Prints the engine's status, or its cluster's; exit code 0 when it runs, 3 when not.
pub(super) fn status(
    pid_file: &Path,
    admin: SocketAddr,
    token: Option<&str>,
    view: StatusView,
) -> anyhow::Result<ExitCode> {
    let Some(pid) = running(pid_file)?.map(|engine| engine.pid) else {
        println!("wasmpush is not running{}", stale_note(pid_file));
        return Ok(ExitCode::from(NOT_RUNNING));
    };
    let path = if view.cluster { "/cluster" } else { "/status" };
    let body = admin_get(admin, path, token)
        .with_context(|| format!("wasmpush runs (pid {pid}) but its admin endpoint {admin} does not answer"))?;
    if view.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    if view.cluster {
        let cluster: ClusterStatus =
            serde_json::from_str(&body).context("the admin endpoint sent an unexpected list")?;
        print_cluster(&cluster);
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status = serde_json::from_str(&body).context("the admin endpoint sent an unexpected status")?;
    println!("wasmpush is running (pid {pid})");
    if let Some(why) = &status.degraded {
        println!("  DEGRADED:       {why}");
    }
    println!("  listen:         {}", status.listen);
    println!("  uptime:         {} s", status.uptime_secs);
    println!("  connections:    {}", status.connections);
    println!("  pushes/s:       {} ({} in all)", status.pushes_per_sec, status.pushes);
    println!("  plugin errors:  {}, faults: {}", status.plugin_errors, status.plugin_faults);
    if let Some(connected) = status.nats_connected {
        let link = if connected { "up" } else { "DOWN" };
        let lag = status.data_lag.unwrap_or(0);
        println!("  cluster:        NATS {link}, data revision {}, {lag} behind the stream", status.data_revision);
    }
    if let Some(conflict) = &status.name_conflict {
        println!("  NAME CONFLICT:  {conflict}");
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    for plugin in &status.plugins {
        let loaded_ago = now_ms.saturating_sub(plugin.loaded_at_ms) / 1000;
        let (name, version, bytes) = (&plugin.name, &plugin.version, plugin.bytes);
        println!("  plugin {name}: version {version:.12}, {bytes} bytes, loaded {loaded_ago} s ago");
        if let Some(rollout) = &plugin.rollout {
            print_rollout(rollout, now_ms);
        }
        if let Some(last) = plugin.last_rollouts.first() {
            let ago = now_ms.saturating_sub(last.ended_at_ms) / 1000;
            println!("    last rollout (build {:.12}, {ago} s ago): {}", last.status.candidate, last.reason);
        }
    }
    if let Some(error) = &status.last_reload_error {
        println!("  last reload error: {error}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a rollout in progress: what it is, and its live comparison.
fn print_rollout(rollout: &RolloutStatus, now_ms: u64) {
    let what = match rollout.kind {
        RolloutKind::Canary { percent, manual } => format!("{}canary {percent} %", if manual { "manual " } else { "" }),
        RolloutKind::Shadow { sample } => format!("shadow run, {sample} % sample"),
    };
    let left = match rollout.awaiting_promote {
        true => "window over: waiting for `wasmpush promote` or `abort`".to_owned(),
        false => format!("{} s left", rollout.ends_at_ms.saturating_sub(now_ms) / 1000),
    };
    println!("    rollout: {what} of build {:.12}, {left}", rollout.candidate);
    for (role, calls) in [("serving  ", &rollout.serving_calls), ("candidate", &rollout.candidate_calls)] {
        println!(
            "      {role} {:>9} calls, errors {:.1} %, traps {:.1} %, timeouts {:.1} %, p50 {:.0} µs, p99 {:.0} µs",
            thousands(calls.calls),
            calls.pct(calls.errors),
            calls.pct(calls.traps),
            calls.pct(calls.timeouts),
            calls.p50_us,
            calls.p99_us
        );
    }
    if let Some(shadow) = &rollout.shadow {
        let (compared, different, shed) =
            (thousands(shadow.compared), thousands(shadow.different), thousands(shadow.shed));
        println!("      compared {compared}: {different} different, {shed} shed");
        for sample in &shadow.samples {
            println!("      e.g. params {:?}: {} | {}", sample.params_keys, sample.serving, sample.candidate);
        }
    }
}

/// Prints every node of a cluster, one a line.
fn print_cluster(cluster: &ClusterStatus) {
    let live = cluster.nodes.iter().filter(|node| !node.gone).count();
    let link = if cluster.nats_connected { "up" } else { "DOWN" };
    println!("cluster: {} nodes, {live} live; this node's NATS link: {link}", cluster.nodes.len());
    println!(
        "  {:<24} {:<10} {:<21} {:>7} {:>8} {:>9} {:>6}  {:<6} PLUGINS",
        "NODE", "STATE", "LISTEN", "CONNS", "PUSHES/S", "REVISION", "LAG", "NATS"
    );
    for node in &cluster.nodes {
        let state = if node.gone { format!("GONE {}s", node.age_ms / 1000) } else { "live".to_owned() };
        let Ok(status) = serde_json::from_value::<Status>(node.announcement.status.clone()) else {
            println!("  {:<24} {state:<10} (an announcement this version cannot read)", node.node);
            continue;
        };
        let plugins: Vec<String> =
            status.plugins.iter().map(|plugin| format!("{}@{:.12}", plugin.name, plugin.version)).collect();
        let nats = match status.nats_connected {
            Some(true) => "up",
            _ => "DOWN",
        };
        println!(
            "  {:<24} {state:<10} {:<21} {:>7} {:>8} {:>9} {:>6}  {nats:<6} {}",
            node.node,
            status.listen,
            status.connections,
            status.pushes_per_sec,
            status.data_revision,
            status.data_lag.unwrap_or(0),
            plugins.join(" ")
        );
        if let Some(why) = &status.degraded {
            println!("      DEGRADED: {why}");
        }
        if let Some(conflict) = &status.name_conflict {
            println!("      NAME CONFLICT: {conflict}");
        }
        if let Some(error) = &status.last_reload_error {
            println!("      last reload error: {error}");
        }
        for plugin in &status.plugins {
            if let Some(rollout) = &plugin.rollout {
                let calls = &rollout.candidate_calls;
                println!(
                    "      rollout of {}: build {:.12}, candidate {} calls, errors {:.1} %, traps {:.1} %",
                    plugin.name,
                    rollout.candidate,
                    thousands(calls.calls),
                    calls.pct(calls.errors),
                    calls.pct(calls.traps)
                );
            }
        }
        for (bucket, count) in &status.invalid_values {
            println!("      {count} invalid values written to bucket {bucket} (not applied)");
        }
    }
}

/// `GET path` from the admin endpoint (with `token`, if it needs one); the body of a 200 response.
fn admin_get(admin: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    let (status, body) = request(admin, "GET", path, token, "")?;
    anyhow::ensure!(status == 200, "HTTP {status}: {}", body.trim());
    Ok(body)
}

/// Stops the engine named in `pid_file`; SIGKILL only for that process, only after `timeout`,
/// and only if it is still the process the pid file named.
pub(super) fn stop(pid_file: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let Some(engine) = running(pid_file)? else {
        println!("wasmpush is not running{}", stale_note(pid_file));
        return Ok(ExitCode::SUCCESS);
    };
    let pid = engine.pid;
    engine.signal(Signal::SIGTERM).context("cannot signal the engine")?;
    let deadline = Instant::now() + timeout;
    while engine.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if engine.is_alive() {
        eprintln!("wasmpush: pid {pid} did not exit within {timeout:?}; sending SIGKILL");
        engine.signal(Signal::SIGKILL).context("cannot kill the engine")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not by path alone: a new engine may have written its own file there meanwhile.
        pidfile::remove_stale(pid_file);
    }
    println!("stopped (pid {pid})");
    Ok(ExitCode::SUCCESS)
}

/// What to add to "not running" when a pid file is there all the same: no engine holds it, so
/// whatever pid it names is left alone.
fn stale_note(pid_file: &Path) -> String {
    if pid_file.exists() {
        format!(" (stale pid file {}: no engine holds it; nothing was signalled)", pid_file.display())
    } else {
        String::new()
    }
}
