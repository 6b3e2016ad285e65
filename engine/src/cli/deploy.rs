//! `wasmpush deploy NAME FILE`: ships a plugin build. Without `--nats`, to the running engine
//! through its admin endpoint (`rollouts`): at once, as a canary (`--canary PCT`) or as a shadow
//! run (`--shadow`). With `--nats URL`, to every node of a cluster: the build goes into the cluster's Object Store, named by its hash, and plugin NAME's pointer moves
//! to it by compare-and-swap (`cluster::plugins`); every node fetches, validates and hot-swaps
//! it. With `--wait SECS` the command returns once every live node (at least one) serves the
//! build, and fails naming each node that could not load it, or saying that no node runs. A
//! deploy, and the wait, ask JetStream again while it does not answer (a NATS cluster electing its
//! leaders).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::io::Read as _;

use anyhow::Context as _;
use clap::Args;

use super::rollouts::{Admin, AdminArgs, Shipping, deploy};
use super::secrets::NatsSecrets;
use crate::admin::{ReloadErrorStatus, Status};
use crate::cluster::{ANNOUNCE_PERIOD, Cluster, ClusterError, ClusterNode, DeployError, Deployed};
use crate::config::Config;
use crate::plugin::content_hash;
use crate::registry::MAX_PLUGIN_BYTES;
use crate::rollout::RolloutKind;

/// How long a deploy to a cluster asks again while JetStream does not answer (a NATS cluster
/// restarted whole answers nothing until it has elected its leaders, seconds later).
const PATIENCE: Duration = Duration::from_secs(30);

/// What to deploy, and where.
#[derive(Debug, Args)]
pub(super) struct DeployArgs {
    /// The plugin's name: clients reach it at `/ws/NAME`.
    name: String,
    /// The build: a WebAssembly component (`just build-plugin NAME` makes one).
    file: PathBuf,
    /// NATS servers of a cluster to deploy to, comma-separated (or `[cluster] nats` of --config).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    nats: Vec<String>,
    /// With --nats: seconds to wait until every live node, at least one, serves the build (0:
    /// return once it is deployed).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait: u64,
    /// A canary: the build serves PCT % of the plugin's connections, is judged against the
    /// serving build, rolled back if worse, promoted at the end of --for.
    #[arg(long, value_name = "PCT", conflicts_with = "shadow")]
    canary: Option<f64>,
    /// The canary's window in seconds.
    #[arg(long = "for", value_name = "SECS", default_value_t = 60, requires = "canary")]
    window: u64,
    /// A canary that waits for `wasmpush promote` at the end of its window.
    #[arg(long, requires = "canary")]
    manual: bool,
    /// A shadow run for SECS seconds: the build runs beside the serving one on --sample % of the
    /// connections, its frames compared, never sent.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "60")]
    shadow: Option<u64>,
    /// The shadow run's sample, in percent of the connections.
    #[arg(long, value_name = "PCT", default_value_t = 100.0, requires = "shadow")]
    sample: f64,
    /// Which engine (without --nats), or the config whose `[cluster]` to use (with it).
    #[command(flatten)]
    engine: AdminArgs,
    /// With --nats: the NATS token or password of the cluster.
    #[command(flatten)]
    nats_secrets: NatsSecrets,
}

/// Deploys the build; exit code 0 once it is deployed (and, with `--wait`, served everywhere).
/// Without a cluster, the engine is found by `admin_of`.
pub(super) fn run(
    args: DeployArgs,
    admin_of: impl FnOnce(&AdminArgs) -> anyhow::Result<Admin>,
) -> anyhow::Result<ExitCode> {
    let config = match &args.engine.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let mut settings = config.cluster;
    if !args.nats.is_empty() {
        settings.nats = args.nats.clone();
    }
    args.nats_secrets.apply_to(&mut settings);
    // One byte over the limit is enough to refuse it: a huge file is not read whole.
    let mut wasm = Vec::new();
    std::fs::File::open(&args.file)
        .and_then(|file| file.take(MAX_PLUGIN_BYTES + 1).read_to_end(&mut wasm))
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let shipping = match (args.canary, args.shadow) {
        (Some(percent), _) => Shipping::Canary { percent, secs: args.window, manual: args.manual },
        (None, Some(secs)) => Shipping::Shadow { sample: args.sample, secs },
        (None, None) => Shipping::Now,
    };
    if settings.nats.is_empty() {
        anyhow::ensure!(
            wasm.len() as u64 <= MAX_PLUGIN_BYTES,
            "{} is over the limit of {MAX_PLUGIN_BYTES} bytes",
            args.file.display()
        );
        return deploy(&admin_of(&args.engine)?, &args.name, &args.file, &wasm, shipping);
    }
    let rollout = match shipping {
        Shipping::Now => None,
        Shipping::Canary { manual: true, .. } => {
            anyhow::bail!("a cluster's canary is promoted by the cluster's judge: --manual is for one engine")
        }
        Shipping::Canary { percent, secs, manual } => Some((RolloutKind::Canary { percent, manual }, secs)),
        Shipping::Shadow { sample, secs } => Some((RolloutKind::Shadow { sample }, secs)),
    };
    if let Some((kind, secs)) = rollout {
        kind.check(Duration::from_secs(secs)).map_err(anyhow::Error::msg)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let cluster = Cluster::connect_once(&settings, config.max_value_bytes).await?;
        let build = content_hash(&wasm);
        if let Some((kind, secs)) = rollout {
            let Deployed { pointer, revision } = patiently(
                &cluster,
                &args.name,
                || cluster.deploy_rollout(&args.name, &wasm, kind, Duration::from_secs(secs)),
                |now| now.pointer.rollout.as_ref().is_some_and(|rollout| rollout.candidate == build),
            )
            .await?;
            let candidate = pointer.rollout.map(|rollout| rollout.candidate).unwrap_or_default();
            println!(
                "started a cluster {} of {} for {secs} s: build {candidate:.12}, pointer revision {revision}",
                if matches!(kind, RolloutKind::Shadow { .. }) { "shadow run" } else { "canary" },
                args.name
            );
            return Ok(ExitCode::SUCCESS);
        }
        let deployed = |now: &Deployed| now.pointer.build == build && now.pointer.rollout.is_none();
        let Deployed { pointer, revision } =
            patiently(&cluster, &args.name, || cluster.deploy(&args.name, &wasm), deployed).await?;
        println!(
            "deployed {}: build {} ({} bytes), pointer revision {revision}",
            args.name, pointer.build, pointer.bytes
        );
        if args.wait == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        wait_for_nodes(&cluster, &args.name, &pointer.build, Duration::from_secs(args.wait)).await
    })
}

/// Runs `attempt` (one try of a deploy of plugin `plugin`), again while it fails for want of
/// JetStream's answer, for up to [`PATIENCE`]. A try whose pointer move was taken although its
/// answer was lost is told by the pointer, which `landed` says shows this deploy: it is not made
/// twice.
async fn patiently<Attempt>(
    cluster: &Cluster,
    plugin: &str,
    mut attempt: impl FnMut() -> Attempt,
    landed: impl Fn(&Deployed) -> bool,
) -> Result<Deployed, DeployError>
where
    Attempt: Future<Output = Result<Deployed, DeployError>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        let err = match attempt().await {
            Err(DeployError::Cluster(err)) => err,
            done => return done,
        };
        if let Ok(Some(now)) = cluster.pointer(plugin).await
            && landed(&now)
        {
            return Ok(now);
        }
        if Instant::now() >= deadline {
            return Err(err.into());
        }
        eprintln!("{err}: asking again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until every live node, and at least one, serves `build` of `plugin`; fails when a node
/// reports that it could not load that build, when another deploy points the plugin at another
/// build meanwhile (the nodes follow that one), or at `timeout` (saying so when no node runs at
/// all, or JetStream did not answer: the build stays deployed). A JetStream request that fails
/// meanwhile (a NATS cluster electing its leaders after a restart) is asked again.
async fn wait_for_nodes(cluster: &Cluster, plugin: &str, build: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    // A node announces itself every ANNOUNCE_PERIOD: a fresh list needs that long after a load.
    let mut every = tokio::time::interval(ANNOUNCE_PERIOD / 10);
    loop {
        every.tick().await;
        let waiting = match look(cluster, plugin, build).await {
            Ok(Seen::Served(nodes)) => {
                println!("served by all {nodes} live nodes");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Seen::Replaced { build, revision }) => anyhow::bail!(
                "another deploy pointed `{plugin}` at build {build:.12} (pointer revision {revision}) before every node \
                 served this one: the nodes follow that build"
            ),
            Ok(Seen::Failed(failed)) => {
                anyhow::bail!("nodes could not load the build (they serve their old one):\n{}", failed.join("\n"))
            }
            Ok(Seen::Waiting(waiting)) => Ok(waiting),
            Err(err) => Err(err),
        };
        // With no node yet, one may be starting: it serves the pointer's build from its first scan.
        if Instant::now() >= deadline {
            match waiting {
                Ok(waiting) if waiting.is_empty() => anyhow::bail!(
                    "after {timeout:?}, no node of the cluster runs: the build is deployed, and nodes serve it when \
                     they start"
                ),
                Ok(waiting) => anyhow::bail!("after {timeout:?}, not served yet by: {}", waiting.join(", ")),
                Err(err) => anyhow::bail!(
                    "after {timeout:?}, {err}: the build is deployed; `wasmpush status --cluster` tells which nodes \
                     serve it"
                ),
            }
        }
    }
}

/// What a waiting deploy sees of the cluster.
enum Seen {
    /// Every live node, this many (at least one), serves the build.
    Served(usize),
    /// These live nodes do not serve it yet (none: no node runs).
    Waiting(Vec<String>),
    /// Another deploy pointed the plugin at `build`, at pointer revision `revision`.
    Replaced { build: String, revision: u64 },
    /// These nodes (`node: reason`) could not load it.
    Failed(Vec<String>),
}

/// What the cluster's pointer and list of nodes say of `build` of `plugin` now.
async fn look(cluster: &Cluster, plugin: &str, build: &str) -> Result<Seen, ClusterError> {
    if let Some(now) = cluster.pointer(plugin).await?
        && now.pointer.build != build
    {
        return Ok(Seen::Replaced { build: now.pointer.build, revision: now.revision });
    }
    let nodes: Vec<ClusterNode> = cluster.nodes().await?.into_iter().filter(|node| !node.gone).collect();
    let reports: Vec<Report> = nodes.iter().map(|node| report(node, plugin, build)).collect();
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|report| {
            let error = report.failure.as_ref().filter(|error| !error.retried)?;
            Some(format!("  {}: {}", report.node, error.reason))
        })
        .collect();
    if !failed.is_empty() {
        return Ok(Seen::Failed(failed));
    }
    let waiting: Vec<String> = reports
        .iter()
        .filter(|report| !report.serves)
        .map(|report| match &report.failure {
            Some(error) => format!("{} ({}, tried again)", report.node, error.reason),
            None => report.node.to_owned(),
        })
        .collect();
    Ok(if waiting.is_empty() && !nodes.is_empty() { Seen::Served(nodes.len()) } else { Seen::Waiting(waiting) })
}

/// What a node reports of a build of a plugin.
struct Report<'a> {
    /// The node's name.
    node: &'a str,
    /// Whether it serves the build as the plugin (the same build may serve under other names).
    serves: bool,
    /// Its failure to load the build as the plugin, if it reports one: for good, or for now (a
    /// fetch that failed, tried again).
    failure: Option<ReloadErrorStatus>,
}

/// What `node` reports of `build` of `plugin`, read once from the status it announced (one this
/// version cannot read serves nothing and reports nothing). A failure is told by the build, not
/// by the time: the node's clock and this machine's need not agree, and an older failure of
/// another build is not this one's. (A node that failed this very build before is taken at its
/// word until it tries again.)
fn report<'a>(node: &'a ClusterNode, plugin: &str, build: &str) -> Report<'a> {
    let status = serde_json::from_value::<Status>(node.announcement.status.clone()).ok();
    let serves =
        status.iter().flat_map(|status| &status.plugins).any(|served| served.name == plugin && served.version == build);
    let failure = status
        .and_then(|status| status.last_reload_error)
        .filter(|error| error.plugin == plugin && error.build.as_deref() == Some(build));
    Report { node: &node.node, serves, failure }
}
