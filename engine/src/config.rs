//! The engine's settings: one validated [`Config`], built from defaults, an optional TOML file
//! and command-line flags (in that order of precedence, lowest first), then passed explicitly
//! to whatever needs it. Nothing here reads the environment or touches the network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every setting of the engine, with its default. See `docs/operations.md` for the reference.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the WebSocket server listens on.
    pub listen: SocketAddr,
    /// Address of the admin endpoint (`/status`, `/metrics`, `/healthz`); keep it on loopback.
    pub admin: SocketAddr,
    /// Bearer token `/status` and `/metrics` require (`/healthz` stays open); required when
    /// `admin` is beyond loopback. Set it here or in the environment (`WASMPUSH_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Directory holding the plugins, one `NAME.wasm` each.
    pub plugins_dir: PathBuf,
    /// Whether to watch `plugins_dir` for changes. Without it (e.g. on a network file system that
    /// delivers no events) plugins change only on `wasmpush reload` / SIGHUP.
    pub watch_plugins: bool,
    /// Plugin served at `/` (and at any path that names no plugin).
    pub default_plugin: String,
    /// Interval between two pushes to a connection, in milliseconds.
    pub tick_ms: u64,
    /// Worker threads running plugins; 0 means one per CPU.
    pub workers: usize,
    /// Largest params object a client may send, in bytes.
    pub max_params_bytes: usize,
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    pub max_message_bytes: usize,
    /// Connections served at once; the handshake of one more is refused with HTTP 503.
    pub max_connections: usize,
    /// Connections served at once from one client address; 0 for no limit. Over it the handshake
    /// is refused with HTTP 503.
    pub max_connections_per_ip: usize,
    /// Messages (params updates) a client may send per second, and at once; over it they are
    /// dropped (error 4006), and a client that keeps going is closed (1008).
    pub max_messages_per_sec: u32,
    /// Time a client has to complete its WebSocket handshake, in seconds.
    pub handshake_timeout_secs: u64,
    /// Time a socket may stay unwritable before the connection is closed, in seconds.
    pub write_timeout_secs: u64,
    /// Interval between two server pings, in seconds.
    pub ping_secs: u64,
    /// Time without any frame from a client (a pong included) after which it is closed, in
    /// seconds; at least `ping_secs`.
    pub idle_timeout_secs: u64,
    /// CPU time one plugin call may use before it is interrupted, in milliseconds; a batch gets
    /// this plus `plugin_call_budget_us` per connection it carries.
    pub plugin_timeout_ms: u64,
    /// Extra time a batch gets per connection it carries, in microseconds.
    pub plugin_call_budget_us: u64,
    /// Memory one plugin instance may hold, in MiB: all its linear memories and tables together.
    /// Half of it is kept for cached params: an instance (one per plugin and worker) serves at
    /// most `plugin_memory_mib / 2 / max_params_bytes` connections; one more is refused 503.
    pub plugin_memory_mib: usize,
    /// Core instances, tables and memories one plugin instance may create (each).
    pub plugin_max_instances: usize,
    /// Elements one plugin table may grow to.
    pub plugin_max_table_elements: usize,
    /// Largest payload a plugin may push, in bytes; a larger one is an error for its connection.
    pub max_payload_bytes: usize,
    /// Seconds after which a connection parked for an error (code 0, 5001–5003) is called again,
    /// and its error frame sent again if the error persists; 0 keeps it parked until new params.
    pub error_reset_secs: u64,
    /// Address of the publish API (`/v1/buckets/…`), which feeds the data plugins read.
    pub publish: SocketAddr,
    /// Bearer token the publish API requires; required when `publish` is beyond loopback.
    /// Set it here or in the environment (`WASMPUSH_PUBLISH_TOKEN`), not on the command line.
    pub publish_token: Option<String>,
    /// Directory of the durable data store (one redb file).
    pub data_dir: PathBuf,
    /// Buckets the data store may hold.
    pub max_buckets: usize,
    /// Bytes of one data key.
    pub max_key_bytes: usize,
    /// Bytes of one data value, as compact JSON.
    pub max_value_bytes: usize,
    /// Bytes of every data key and value together, in MiB.
    pub max_data_mib: usize,
    /// Changes one publish batch may carry.
    pub max_batch_keys: usize,
    /// A connection is re-run at most once per this many milliseconds for data changes; changes
    /// closer together are pushed together.
    pub data_coalesce_ms: u64,
    /// Web pages that may open connections, besides the engine's own (a browser sends its page's
    /// origin): exact origins (`https://app.example.com`), subdomain patterns
    /// (`https://*.example.com`) or `*` for any. A handshake from another origin gets 403; one
    /// without `Origin` (not a browser) passes.
    pub allowed_origins: Vec<String>,
    /// Sockets that may be in their handshake at once (accepted, request head not yet read);
    /// one more is answered 503 at once and closed.
    pub max_handshakes: usize,
    /// Sockets one client address (an IPv6 /64) may have in their handshake at once; over it,
    /// 503 at once.
    pub max_handshakes_per_ip: usize,
    /// Seconds over which an engine handed over to a new one (`wasmpush restart`) closes its
    /// connections with 1012, so their clients reconnect a few at a time; 0 closes them at once.
    pub drain_secs: u64,
    /// Token auth: the keys client tokens are checked with and the claims they must carry
    /// (`[auth]`). Which plugins require a token is set per plugin (`auth`).
    pub auth: AuthSettings,
    /// Per-plugin settings, by plugin name (`[plugins.NAME]`).
    pub plugins: BTreeMap<String, PluginSettings>,
    /// Bytes of one publish batch's body (`POST /v1/buckets/NAME`); a larger body is refused
    /// with 413 before it is read. A single `PUT` may send at most twice `max_value_bytes` plus
    /// 1 KiB (room for white space the store compacts away).
    pub max_batch_bytes: usize,
    /// Addresses of reverse proxies (IPs or CIDR blocks, such as `127.0.0.1` or `10.0.0.0/8`)
    /// whose `X-Forwarded-For` names the real client: the per-address limits count that client,
    /// not the proxy. Sockets from other addresses are counted by their own address, whatever
    /// they claim.
    pub trusted_proxies: Vec<String>,
    /// Seconds an HTTP client of the admin endpoint or the publish API has to send its request
    /// head, and again its body; a client too slow is dropped.
    pub http_timeout_secs: u64,
    /// Connections the admin endpoint and the publish API each hold at once; one more is closed
    /// at once.
    pub http_max_connections: usize,
    /// Connections one client address may hold on the admin endpoint and on the publish API.
    pub http_max_connections_per_ip: usize,
    /// Set by `start --recover-data`: a data store that cannot be read is moved aside and the
    /// engine starts with an empty one. Never read from a file.
    #[serde(skip)]
    pub recover_data: bool,
    /// Membership of a cluster of engines sharing their data through NATS JetStream
    /// (`[cluster]`); without `nats` the engine is a single node.
    pub cluster: ClusterSettings,
    /// The version history, shadow runs and canaries (`[rollouts]`).
    pub rollouts: RolloutSettings,
}

/// How builds are kept, tried and judged (`[rollouts]`): docs/rollouts.md.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSettings {
    /// Builds kept per plugin in the data directory's version history (1 to 1000).
    pub keep_versions: usize,
    /// Share of each tick interval a shard may spend on shadow calls, in percent (1 to 100).
    pub shadow_budget_pct: u32,
    /// Calls the candidate of a canary must have made before it is judged (at least 1).
    pub min_calls: u64,
    /// Points of business-error rate the candidate may have above the serving build.
    pub max_error_increase_pct: u32,
    /// Points of fault rate (traps, timeouts, memory) the candidate may have above the serving
    /// build.
    pub max_fault_increase_pct: u32,
    /// How much slower (call time p99) the candidate may be than the serving build, in percent.
    pub max_p99_increase_pct: u32,
    /// Call time p99, in microseconds, below which the candidate is never judged slow.
    pub p99_floor_us: u64,
    /// Frames per call the candidate must push at least, in percent of the serving build's.
    pub min_frames_pct: u32,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            keep_versions: 10,
            shadow_budget_pct: 25,
            min_calls: 100,
            max_error_increase_pct: 5,
            max_fault_increase_pct: 1,
            max_p99_increase_pct: 100,
            p99_floor_us: 1000,
            min_frames_pct: 50,
        }
    }
}

/// Whether `name` can name a plugin (`NAME.wasm`, `/ws/NAME`) or a node of a cluster: 1 to 64
/// ASCII letters, digits, `-` or `_`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How a node reaches the cluster's NATS servers (`[cluster]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URLs (`nats://HOST:4222`, `tls://…`); empty: no cluster.
    pub nats: Vec<String>,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A NATS token (better: `WASMPUSH_NATS_TOKEN`).
    pub token: Option<String>,
    /// NATS user name, with `password`.
    pub user: Option<String>,
    /// NATS password, with `user` (better: `WASMPUSH_NATS_PASSWORD`).
    pub password: Option<String>,
    /// An nkey seed (`SU…`) the node signs in with.
    pub nkey_seed: Option<String>,
    /// PEM file of the CA that signs the NATS servers' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// This node's name in `status --cluster` (letters, digits, `-`, `_`; at most 64); default
    /// the host name and the WebSocket port, `HOST-PORT`.
    pub node: Option<String>,
    /// Copies JetStream keeps of each bucket the cluster creates (1 to 5; 3 on a three-server
    /// NATS cluster, so that losing one server loses nothing).
    pub replicas: usize,
    /// The rate, in megabits a second, at which NATS sends this node the data it catches up on
    /// (a node joining, or resyncing); 0: as fast as it can. A limit spares the publishes NATS
    /// takes meanwhile; it is lifted once the node has caught up. Unset:
    /// [`DEFAULT_CATCH_UP_MBPS`] (see [`ClusterSettings::catch_up_limit_mbps`]).
    pub catch_up_mbps: Option<u64>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            nats: Vec::new(),
            creds_file: None,
            token: None,
            user: None,
            password: None,
            nkey_seed: None,
            tls_ca_file: None,
            node: None,
            replicas: 1,
            catch_up_mbps: None,
        }
    }
}

/// The catch-up limit when none is set, in Mbit/s. On the cluster bench (docs/cluster.md), a node
/// joining with 100,000 keys at 60 Mbit/s was ready in 3.5 s and raised the other nodes' p99 by
/// 6.7-7.2 ms (medians); without a limit it was ready sooner and raised it by 25-52 ms.
pub const DEFAULT_CATCH_UP_MBPS: u64 = 60;

impl ClusterSettings {
    /// The catch-up limit in Mbit/s (0: none) for values of at most `max_value_bytes`: the one
    /// set, or [`DEFAULT_CATCH_UP_MBPS`] raised to what sends the largest value within a second.
    pub fn catch_up_limit_mbps(&self, max_value_bytes: usize) -> u64 {
        self.catch_up_mbps.unwrap_or_else(|| DEFAULT_CATCH_UP_MBPS.max(slowest_catch_up_mbps(max_value_bytes)))
    }
}

/// The slowest catch-up, in Mbit/s, that sends a value of `max_value_bytes` within a second: a
/// slower one would make the follower take the wait for its next message for a stalled watch.
fn slowest_catch_up_mbps(max_value_bytes: usize) -> u64 {
    (max_value_bytes as u64 * 8).div_ceil(1_000_000)
}

/// The keys client tokens (JWT) are checked with, and the claims they must carry (`[auth]`).
/// Keys and claims take effect on `wasmpush reload`, so keys rotate without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Secret of HS256/384/512 tokens, at least 32 bytes; better set in the environment
    /// (`WASMPUSH_JWT_SECRET`) than in this file.
    pub hs256_secret: Option<String>,
    /// PEM files of the public keys of RS*/PS* (RSA) and ES256/ES384 (EC) tokens.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file (`{"keys":[…]}`) of RSA and EC public keys, picked by the token's `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Issuers (`iss`) a token may come from; empty: any (and `iss` is not required).
    pub issuers: Vec<String>,
    /// Audiences (`aud`) a token must name one of; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Seconds of clock difference allowed when checking `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks_file: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway_secs: 30,
        }
    }
}

impl AuthSettings {
    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some() || !self.public_keys.is_empty() || self.jwks_file.is_some()
    }
}

/// Whether a plugin's clients must present a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Tokens are neither needed nor looked at.
    #[default]
    None,
    /// A client may connect without a token; one it presents must be valid.
    Optional,
    /// A client without a valid token is refused (401).
    Required,
}

/// The settings of one plugin (`[plugins.NAME]` in the config file). A plugin without a table
/// reads no data, ticks every `tick_ms` and sends every frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Buckets the plugin may read; reading another is an error for that call.
    pub read: Vec<String>,
    /// Milliseconds between two ticks of its connections, a multiple of the engine's `tick_ms`;
    /// 0 turns ticks off (pushes come on connect, new params and data changes). Unset: `tick_ms`.
    pub tick_ms: Option<u64>,
    /// Whether a frame byte-identical to the last one sent on a connection is left unsent.
    pub skip_unchanged: bool,
    /// Whether its clients must present a token: `"none"`, `"optional"` or `"required"`.
    pub auth: AuthMode,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 9503)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9504)),
            admin_token: None,
            plugins_dir: PathBuf::from("runtime/plugins"),
            watch_plugins: true,
            default_plugin: "quote".to_owned(),
            tick_ms: 200,
            workers: 0,
            max_params_bytes: 4096,
            max_message_bytes: 64 * 1024,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_messages_per_sec: 20,
            handshake_timeout_secs: 10,
            write_timeout_secs: 10,
            ping_secs: 30,
            idle_timeout_secs: 90,
            plugin_timeout_ms: 100,
            plugin_call_budget_us: 50,
            plugin_memory_mib: 256,
            plugin_max_instances: 16,
            plugin_max_table_elements: 100_000,
            max_payload_bytes: 64 * 1024,
            error_reset_secs: 0,
            publish: SocketAddr::from(([127, 0, 0, 1], 9505)),
            publish_token: None,
            data_dir: PathBuf::from("runtime/data"),
            max_buckets: 64,
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_data_mib: 256,
            max_batch_keys: 10_000,
            data_coalesce_ms: 10,
            allowed_origins: Vec::new(),
            max_handshakes: 4096,
            max_handshakes_per_ip: 256,
            drain_secs: 10,
            auth: AuthSettings::default(),
            plugins: BTreeMap::new(),
            max_batch_bytes: 8 << 20,
            trusted_proxies: Vec::new(),
            http_timeout_secs: 10,
            http_max_connections: 256,
            http_max_connections_per_ip: 32,
            recover_data: false,
            cluster: ClusterSettings::default(),
            rollouts: RolloutSettings::default(),
        }
    }
}

/// A `trusted_proxies` entry as a network: an address is a block of one.
pub fn parse_proxy(entry: &str) -> Option<ipnet::IpNet> {
    entry.parse().ok().or_else(|| entry.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A plugin's settings (`[plugins.NAME]`) are invalid.
    #[error("invalid settings of plugin `{plugin}`: {reason}")]
    Plugin {
        /// The plugin whose table it is.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of its range.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Reads a TOML file; missing keys keep their defaults, unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text)
            .map_err(|err| ConfigError::Parse { path: path.to_owned(), message: err.to_string().trim_end().to_owned() })
    }

    /// Checks every value is in range; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), ConfigError> {
            if ok { Ok(()) } else { Err(ConfigError::Invalid { key, reason: reason.to_owned() }) }
        }
        // Every number has an upper bound too: nothing a setting feeds (a shift, a deadline
        // added to an instant, a capacity) may overflow.
        check((10..=60_000).contains(&self.tick_ms), "tick_ms", "must be between 10 and 60000")?;
        check(self.workers <= 1024, "workers", "must be at most 1024")?;
        check(!self.default_plugin.is_empty(), "default_plugin", "must not be empty")?;
        check((2..=1 << 20).contains(&self.max_params_bytes), "max_params_bytes", "must be between 2 and 1 MiB")?;
        check(
            (self.max_params_bytes..=64 << 20).contains(&self.max_message_bytes),
            "max_message_bytes",
            "must be at least max_params_bytes and at most 64 MiB",
        )?;
        check((1..=10_000_000).contains(&self.max_connections), "max_connections", "must be between 1 and 10000000")?;
        check(self.max_connections_per_ip <= 10_000_000, "max_connections_per_ip", "must be at most 10000000")?;
        check(
            (1..=100_000).contains(&self.max_messages_per_sec),
            "max_messages_per_sec",
            "must be between 1 and 100000",
        )?;
        check(
            (1..=3600).contains(&self.handshake_timeout_secs),
            "handshake_timeout_secs",
            "must be between 1 and 3600",
        )?;
        check((1..=3600).contains(&self.write_timeout_secs), "write_timeout_secs", "must be between 1 and 3600")?;
        check((1..=3600).contains(&self.ping_secs), "ping_secs", "must be between 1 and 3600")?;
        check(
            (self.ping_secs..=86_400).contains(&self.idle_timeout_secs),
            "idle_timeout_secs",
            "must be at least ping_secs and at most 86400",
        )?;
        check((1..=60_000).contains(&self.plugin_timeout_ms), "plugin_timeout_ms", "must be between 1 and 60000")?;
        check(self.plugin_call_budget_us <= 1_000_000, "plugin_call_budget_us", "must be at most 1000000")?;
        check((1..=65_536).contains(&self.plugin_memory_mib), "plugin_memory_mib", "must be between 1 and 65536")?;
        check(
            (1..=10_000).contains(&self.plugin_max_instances),
            "plugin_max_instances",
            "must be between 1 and 10000",
        )?;
        check(
            (1..=100_000_000).contains(&self.plugin_max_table_elements),
            "plugin_max_table_elements",
            "must be between 1 and 100000000",
        )?;
        check((1..=64 << 20).contains(&self.max_payload_bytes), "max_payload_bytes", "must be between 1 and 64 MiB")?;
        check(self.error_reset_secs <= 86_400 * 365, "error_reset_secs", "must be at most a year")?;
        // A listener beyond loopback must not be open to anyone who can reach it.
        let listeners = [
            ("publish", self.publish, "publish_token", &self.publish_token, "the publish API"),
            ("admin", self.admin, "admin_token", &self.admin_token, "/status and /metrics"),
        ];
        for (key, addr, token_key, token, what) in listeners {
            let env = token_key.to_uppercase();
            let reason = format!("is beyond loopback: set {token_key} (or WASMPUSH_{env}) so {what} is not open");
            check(addr.ip().is_loopback() || token.is_some(), key, &reason)?;
            check(token.as_ref().is_none_or(|t| t.len() >= 16), token_key, "must be at least 16 characters")?;
        }
        check((1..=1024).contains(&self.max_buckets), "max_buckets", "must be between 1 and 1024")?;
        check((1..=1024).contains(&self.max_key_bytes), "max_key_bytes", "must be between 1 and 1024")?;
        check((2..=16 << 20).contains(&self.max_value_bytes), "max_value_bytes", "must be between 2 and 16 MiB")?;
        check((1..=65_536).contains(&self.max_data_mib), "max_data_mib", "must be between 1 and 65536")?;
        check((1..=1_000_000).contains(&self.max_batch_keys), "max_batch_keys", "must be between 1 and 1000000")?;
        check(self.data_coalesce_ms <= 60_000, "data_coalesce_ms", "must be at most 60000")?;
        for origin in &self.allowed_origins {
            let well_formed = origin == "*"
                || ["http://", "https://"].iter().any(|scheme| {
                    origin.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                });
            if !well_formed {
                return Err(ConfigError::Invalid {
                    key: "allowed_origins",
                    reason: format!("`{origin}` is not `*` nor SCHEME://HOST[:PORT] (HOST may start with `*.`)"),
                });
            }
        }
        check((1..=1_000_000).contains(&self.max_handshakes), "max_handshakes", "must be between 1 and 1000000")?;
        check(
            (1..=self.max_handshakes).contains(&self.max_handshakes_per_ip),
            "max_handshakes_per_ip",
            "must be between 1 and max_handshakes",
        )?;
        check(self.drain_secs <= 3600, "drain_secs", "must be at most 3600")?;
        check(
            (self.max_value_bytes..=1 << 30).contains(&self.max_batch_bytes),
            "max_batch_bytes",
            "must be at least max_value_bytes and at most 1 GiB",
        )?;
        if let Some(bad) = self.trusted_proxies.iter().find(|proxy| parse_proxy(proxy).is_none()) {
            return Err(ConfigError::Invalid {
                key: "trusted_proxies",
                reason: format!("`{bad}` is not an IP address nor a CIDR block (ADDRESS/PREFIX)"),
            });
        }
        check((1..=3600).contains(&self.http_timeout_secs), "http_timeout_secs", "must be between 1 and 3600")?;
        check(
            (1..=100_000).contains(&self.http_max_connections),
            "http_max_connections",
            "must be between 1 and 100000",
        )?;
        check(
            (1..=self.http_max_connections).contains(&self.http_max_connections_per_ip),
            "http_max_connections_per_ip",
            "must be between 1 and http_max_connections",
        )?;
        let cluster = &self.cluster;
        if let Some(bad) = cluster.nats.iter().find(|url| !["nats://", "tls://"].iter().any(|s| url.starts_with(s))) {
            return Err(ConfigError::Invalid {
                key: "cluster.nats",
                reason: format!("`{bad}` is not a nats:// or tls:// URL"),
            });
        }
        check(cluster.user.is_some() == cluster.password.is_some(), "cluster.user", "user and password go together")?;
        check(
            cluster.node.as_deref().is_none_or(is_valid_name),
            "cluster.node",
            "use 1 to 64 letters, digits, `-` and `_`",
        )?;
        check((1..=5).contains(&cluster.replicas), "cluster.replicas", "must be between 1 and 5")?;
        let slowest_mbps = slowest_catch_up_mbps(self.max_value_bytes);
        check(
            cluster.catch_up_mbps.is_none_or(|mbps| mbps == 0 || (slowest_mbps..=100_000).contains(&mbps)),
            "cluster.catch_up_mbps",
            &format!("must be 0 (no limit) or between {slowest_mbps} (max_value_bytes a second) and 100000"),
        )?;
        let rollouts = &self.rollouts;
        check((1..=1000).contains(&rollouts.keep_versions), "rollouts.keep_versions", "must be between 1 and 1000")?;
        check(
            (1..=100).contains(&rollouts.shadow_budget_pct),
            "rollouts.shadow_budget_pct",
            "must be between 1 and 100",
        )?;
        check((1..=1_000_000_000).contains(&rollouts.min_calls), "rollouts.min_calls", "must be at least 1")?;
        for (key, pct) in [
            ("rollouts.max_error_increase_pct", rollouts.max_error_increase_pct),
            ("rollouts.max_fault_increase_pct", rollouts.max_fault_increase_pct),
            ("rollouts.min_frames_pct", rollouts.min_frames_pct),
        ] {
            check(pct <= 100, key, "must be between 0 and 100")?;
        }
        check(rollouts.max_p99_increase_pct <= 100_000, "rollouts.max_p99_increase_pct", "must be at most 100000")?;
        check(rollouts.p99_floor_us <= 60_000_000, "rollouts.p99_floor_us", "must be at most 60000000")?;
        let auth = &self.auth;
        check(auth.leeway_secs <= 3600, "auth.leeway_secs", "must be at most 3600")?;
        check(
            auth.hs256_secret.as_ref().is_none_or(|secret| secret.len() >= 32),
            "auth.hs256_secret",
            "must be at least 32 bytes (256 bits)",
        )?;
        for (name, plugin) in &self.plugins {
            let bad = |reason: String| ConfigError::Plugin { plugin: name.clone(), reason };
            if plugin.auth != AuthMode::None && !auth.has_keys() {
                return Err(bad(format!(
                    "auth = \"{}\" needs a key in [auth]: hs256_secret (or WASMPUSH_JWT_SECRET), public_keys or jwks_file",
                    if plugin.auth == AuthMode::Required { "required" } else { "optional" }
                )));
            }
            if let Some(tick_ms) = plugin.tick_ms.filter(|ms| *ms != 0 && *ms % self.tick_ms != 0) {
                return Err(bad(format!("tick_ms {tick_ms} is not 0 nor a multiple of tick_ms ({})", self.tick_ms)));
            }
        }
        Ok(())
    }

    /// The number of worker threads: `workers`, or the CPU count when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The settings that differ between `self` and `other` and take effect only on a restart.
    pub fn restart_only_changes(&self, other: &Config) -> Vec<&'static str> {
        // Destructured without `..`: a new setting must be sorted into live or restart-only here.
        let Config {
            listen,
            admin,
            admin_token,
            plugins_dir,
            watch_plugins,
            default_plugin,
            tick_ms: _,
            workers,
            max_params_bytes: _,
            max_message_bytes,
            max_connections,
            max_connections_per_ip,
            max_messages_per_sec,
            handshake_timeout_secs,
            write_timeout_secs,
            ping_secs,
            idle_timeout_secs,
            plugin_timeout_ms,
            plugin_call_budget_us,
            plugin_memory_mib,
            plugin_max_instances,
            plugin_max_table_elements,
            max_payload_bytes: _,
            error_reset_secs: _,
            publish,
            publish_token,
            data_dir,
            max_buckets,
            max_key_bytes,
            max_value_bytes,
            max_data_mib,
            max_batch_keys,
            data_coalesce_ms: _,
            allowed_origins,
            max_handshakes,
            max_handshakes_per_ip,
            drain_secs,
            auth: _,
            plugins: _,
            max_batch_bytes,
            trusted_proxies,
            http_timeout_secs,
            http_max_connections,
            http_max_connections_per_ip,
            recover_data: _,
            cluster,
            rollouts,
        } = self;
        [
            ("listen", *listen != other.listen),
            ("admin", *admin != other.admin),
            ("admin_token", *admin_token != other.admin_token),
            ("plugins_dir", *plugins_dir != other.plugins_dir),
            ("watch_plugins", *watch_plugins != other.watch_plugins),
            ("default_plugin", *default_plugin != other.default_plugin),
            ("workers", *workers != other.workers),
            ("max_message_bytes", *max_message_bytes != other.max_message_bytes),
            ("max_connections", *max_connections != other.max_connections),
            ("max_connections_per_ip", *max_connections_per_ip != other.max_connections_per_ip),
            ("max_messages_per_sec", *max_messages_per_sec != other.max_messages_per_sec),
            ("handshake_timeout_secs", *handshake_timeout_secs != other.handshake_timeout_secs),
            ("write_timeout_secs", *write_timeout_secs != other.write_timeout_secs),
            ("ping_secs", *ping_secs != other.ping_secs),
            ("idle_timeout_secs", *idle_timeout_secs != other.idle_timeout_secs),
            ("plugin_timeout_ms", *plugin_timeout_ms != other.plugin_timeout_ms),
            ("plugin_call_budget_us", *plugin_call_budget_us != other.plugin_call_budget_us),
            ("plugin_memory_mib", *plugin_memory_mib != other.plugin_memory_mib),
            ("plugin_max_instances", *plugin_max_instances != other.plugin_max_instances),
            ("plugin_max_table_elements", *plugin_max_table_elements != other.plugin_max_table_elements),
            ("publish", *publish != other.publish),
            ("publish_token", *publish_token != other.publish_token),
            ("data_dir", *data_dir != other.data_dir),
            ("max_buckets", *max_buckets != other.max_buckets),
            ("max_key_bytes", *max_key_bytes != other.max_key_bytes),
            ("max_value_bytes", *max_value_bytes != other.max_value_bytes),
            ("max_data_mib", *max_data_mib != other.max_data_mib),
            ("max_batch_keys", *max_batch_keys != other.max_batch_keys),
            ("allowed_origins", *allowed_origins != other.allowed_origins),
            ("max_handshakes", *max_handshakes != other.max_handshakes),
            ("max_handshakes_per_ip", *max_handshakes_per_ip != other.max_handshakes_per_ip),
            ("drain_secs", *drain_secs != other.drain_secs),
            ("max_batch_bytes", *max_batch_bytes != other.max_batch_bytes),
            ("trusted_proxies", *trusted_proxies != other.trusted_proxies),
            ("http_timeout_secs", *http_timeout_secs != other.http_timeout_secs),
            ("http_max_connections", *http_max_connections != other.http_max_connections),
            ("http_max_connections_per_ip", *http_max_connections_per_ip != other.http_max_connections_per_ip),
            ("cluster", *cluster != other.cluster),
            ("rollouts", *rollouts != other.rollouts),
        ]
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = toml::from_str::<Config>("tick_ms = 100\ntickms = 5\n").unwrap_err();
        assert!(err.to_string().contains("tickms"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let config = Config { tick_ms: 1, ..Config::default() };
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { key: "tick_ms", .. })));
    }

    #[test]
    fn the_example_file_holds_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasmpush.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn every_setting_is_in_the_example_file_and_the_operations_reference() {
        let settings = toml::Table::try_from(Config::default()).unwrap();
        let example: toml::Table = toml::from_str(include_str!("../../wasmpush.toml")).unwrap();
        let reference = include_str!("../../docs/operations.md");
        for key in settings.keys() {
            assert!(example.contains_key(key), "`{key}` is missing from wasmpush.toml");
            assert!(reference.contains(&format!("| `{key}` |")), "`{key}` is missing from docs/operations.md");
        }
    }

    #[test]
    fn settings_a_reload_cannot_change_are_named() {
        let old = Config::default();
        let new = Config { tick_ms: 100, max_params_bytes: 8192, workers: 7, ..Config::default() };
        assert_eq!(old.restart_only_changes(&new), vec!["workers"]);
        assert!(old.restart_only_changes(&Config { tick_ms: 50, ..Config::default() }).is_empty());
    }

    #[test]
    fn the_demo_config_of_just_run_is_valid_and_grants_portfolio_its_data() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo.toml");
        let config = Config::from_file(&path).unwrap();
        config.validate().unwrap();
        assert_eq!(config.plugins["portfolio"].read, ["accounts", "prices"]);
    }

    #[test]
    fn a_publish_api_beyond_loopback_needs_a_token() {
        let open = Config { publish: SocketAddr::from(([0, 0, 0, 0], 9505)), ..Config::default() };
        assert!(matches!(open.validate(), Err(ConfigError::Invalid { key: "publish", .. })));
        let short = Config { publish_token: Some("short".into()), ..open.clone() };
        assert!(matches!(short.validate(), Err(ConfigError::Invalid { key: "publish_token", .. })));
        Config { publish_token: Some("a-token-of-sixteen+".into()), ..open }.validate().unwrap();
    }

    #[test]
    fn an_admin_endpoint_beyond_loopback_needs_a_token() {
        let open = Config { admin: SocketAddr::from(([0, 0, 0, 0], 9504)), ..Config::default() };
        assert!(matches!(open.validate(), Err(ConfigError::Invalid { key: "admin", .. })));
        Config { admin_token: Some("an-admin-token-of-16".into()), ..open }.validate().unwrap();
    }

    #[test]
    fn a_plugin_tick_must_be_off_or_a_multiple_of_the_tick() {
        let plugin = |tick_ms| Config {
            plugins: [("p".to_owned(), PluginSettings { tick_ms: Some(tick_ms), ..PluginSettings::default() })].into(),
            ..Config::default()
        };
        assert!(plugin(0).validate().is_ok() && plugin(1000).validate().is_ok());
        let err = plugin(300).validate().unwrap_err().to_string();
        assert_eq!(err, "invalid settings of plugin `p`: tick_ms 300 is not 0 nor a multiple of tick_ms (200)");
    }

    #[test]
    fn a_catch_up_limit_must_send_the_largest_value_within_a_second() {
        let limited = |catch_up_mbps, max_value_bytes| {
            let cluster = ClusterSettings { catch_up_mbps, ..ClusterSettings::default() };
            Config { cluster, max_value_bytes, max_batch_bytes: 16 << 20, ..Config::default() }.validate()
        };
        limited(Some(0), 16 << 20).unwrap();
        limited(Some(1), 64 * 1024).unwrap();
        limited(Some(135), 16 << 20).unwrap();
        let err = limited(Some(134), 16 << 20).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "cluster.catch_up_mbps", .. }), "{err}");
        assert!(err.to_string().contains("between 135 "), "{err}");
        assert!(limited(Some(100_001), 64 * 1024).is_err());
        // Unset, the default limit is raised to what the largest value needs.
        limited(None, 16 << 20).unwrap();
        let unset = ClusterSettings::default();
        assert_eq!(unset.catch_up_limit_mbps(64 * 1024), DEFAULT_CATCH_UP_MBPS);
        assert_eq!(unset.catch_up_limit_mbps(16 << 20), 135);
        let none = ClusterSettings { catch_up_mbps: Some(0), ..ClusterSettings::default() };
        assert_eq!(none.catch_up_limit_mbps(16 << 20), 0);
    }

    #[test]
    fn numbers_that_would_overflow_are_refused_by_name() {
        let refused = |config: Config| match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(Config { plugin_memory_mib: usize::MAX >> 10, ..Config::default() }), "plugin_memory_mib");
        assert_eq!(refused(Config { write_timeout_secs: u64::MAX, ..Config::default() }), "write_timeout_secs");
        assert_eq!(refused(Config { idle_timeout_secs: u64::MAX, ..Config::default() }), "idle_timeout_secs");
        assert_eq!(refused(Config { error_reset_secs: u64::MAX, ..Config::default() }), "error_reset_secs");
        assert_eq!(refused(Config { max_payload_bytes: usize::MAX, ..Config::default() }), "max_payload_bytes");
        let overflowing = toml::from_str::<Config>("plugin_call_budget_us = 18446744073709551615").unwrap();
        assert!(matches!(overflowing.validate(), Err(ConfigError::Invalid { key: "plugin_call_budget_us", .. })));
    }

    #[test]
    fn a_plugin_requiring_tokens_needs_a_key_and_a_secret_must_be_long() {
        let plugins = [("p".to_owned(), PluginSettings { auth: AuthMode::Required, ..PluginSettings::default() })];
        let keyless = Config { plugins: plugins.into(), ..Config::default() };
        let err = keyless.validate().unwrap_err().to_string();
        assert!(err.contains("plugin `p`") && err.contains("needs a key in [auth]"), "{err}");
        let short = AuthSettings { hs256_secret: Some("short".into()), ..AuthSettings::default() };
        let config = Config { auth: short, ..keyless.clone() };
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { key: "auth.hs256_secret", .. })));
        let good = AuthSettings { hs256_secret: Some("x".repeat(32)), ..AuthSettings::default() };
        Config { auth: good, ..keyless }.validate().unwrap();
        let parsed: Config = toml::from_str("[plugins.p]\nauth = \"optional\"\n").unwrap();
        assert_eq!(parsed.plugins["p"].auth, AuthMode::Optional);
        assert!(toml::from_str::<Config>("[plugins.p]\nauth = \"maybe\"\n").is_err());
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }
}
