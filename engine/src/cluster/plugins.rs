//! Plugin builds shared by a cluster. `wasmpush deploy NAME FILE --nats URL` stores the build in
//! the JetStream Object Store [`BUILDS`], named by its SHA-256 (so immutable: one name, one
//! content), then moves plugin NAME's pointer in the KV bucket [`POINTERS`] with a
//! compare-and-swap from the revision it read: of two racing deploys, one wins and the other is
//! told so, never both.
//!
//! Every node follows the pointers: it fetches the build a pointer names, checks its hash, and
//! loads it into its registry — the same validation and hot swap as a local deploy, so a build
//! that fails on a node is reported by that node (`last_reload_error`) while its old build serves
//! on. Only a build that loaded is written into the plugins directory (`NAME.wasm.tmp`, then a
//! rename), so a restarted node serves what it served, never a build it refused. A node that
//! starts fetches the current builds before it loads its plugins, so it serves them from its
//! first connection. A fetch that receives nothing for [`FETCH_STALL`] fails, and the pointer is
//! tried again, less and less often, while the others are followed. A deploy stores a build again
//! when the store lacks any of its chunks, so deploying the same file mends a build that cannot
//! be fetched.
//!
//! A build is removed from the store once no pointer names it and no live node serves it (every
//! node reports the new one); a build no pointer ever named (a deploy that lost its race) after
//! [`ORPHAN_AGE`]. What to remove is decided here ([`removable`]); the judge's round (`tend`)
//! removes it, and puts back a build a deploy named meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{kv, object_store};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{Cluster, ClusterError, found_or_created, jetstream_error};
use crate::config::is_valid_name;
use crate::plugin::content_hash;
use crate::registry::{MAX_PLUGIN_BYTES, PluginRegistry};
use crate::rollout::{Outcome, RolloutKind};
use crate::rollout_control::Rollouts;
use crate::wall_clock::now_ms;

/// The Object Store holding plugin builds, named by their SHA-256.
const BUILDS: &str = "wasmpush-builds";

/// The KV bucket of pointers: plugin name → [`Pointer`].
const POINTERS: &str = "wasmpush-plugins";

/// How long a build no pointer names is kept (a deploy between storing it and moving the
/// pointer must not lose it), on the NATS server's clock.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// How long a node waits before it fetches a build that failed again: doubled after each try
/// that fails, up to [`INSTALL_RETRY_MAX`], since a try may stall the follower for
/// [`FETCH_STALL`].
const INSTALL_RETRY: Duration = Duration::from_secs(5);

/// The longest wait between two tries of a build that cannot be fetched.
const INSTALL_RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a build's fetch may receive nothing before it fails: an object whose chunks are gone
/// (removed while it was read, or written so by another program) would be waited for for ever.
const FETCH_STALL: Duration = Duration::from_secs(2);

/// How long a node waits for NATS at start before it serves the builds it has.
pub const START_SYNC_TIME: Duration = Duration::from_secs(10);

/// What a plugin's pointer holds: the build it serves, and the cluster's rollout of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    /// The build's SHA-256 in hex: its name in [`BUILDS`] and its version id on every node.
    pub build: String,
    /// The build's size in bytes.
    pub bytes: u64,
    /// The build it replaced, if any.
    #[serde(default)]
    pub previous: Option<String>,
    /// The canary or shadow run in progress across the cluster, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ClusterRollout>,
    /// How the last one ended, as the cluster's judge decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<EndedClusterRollout>,
}

/// A canary or shadow run across the cluster, as the plugin's pointer holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRollout {
    /// Canary or shadow, and its share.
    #[serde(flatten)]
    pub kind: RolloutKind,
    /// The candidate build's SHA-256: its name in the builds' store.
    pub candidate: String,
    /// The candidate's size in bytes.
    pub bytes: u64,
    /// When it started, in ms since the Unix epoch.
    pub started_at_ms: u64,
    /// Its window in seconds.
    pub window_secs: u64,
}

/// How the cluster's judge ended a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedClusterRollout {
    /// The candidate it was about.
    pub candidate: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, summed over the nodes.
    pub reason: String,
}

/// Plugin `name`'s entry in `pointers`, unless it has none or it was deleted.
async fn pointer_entry(pointers: &kv::Store, name: &str) -> Result<Option<kv::Entry>, ClusterError> {
    let entry = pointers.entry(name).await.map_err(jetstream_error)?;
    Ok(entry.filter(|entry| entry.operation == kv::Operation::Put))
}

/// "a canary of `NAME` (build …) is in progress in the cluster": why another deploy waits.
pub(super) fn busy(name: &str, rollout: &ClusterRollout) -> String {
    let kind = if matches!(rollout.kind, RolloutKind::Shadow { .. }) { "shadow run" } else { "canary" };
    let age = now_ms().saturating_sub(rollout.started_at_ms) / 1000;
    format!(
        "a {kind} of `{name}` (build {:.12}) is in progress in the cluster since {age} s: it ends by the cluster's judge",
        rollout.candidate
    )
}

/// What a deploy did.
#[derive(Debug)]
pub struct Deployed {
    /// The pointer now.
    pub pointer: Pointer,
    /// The pointer's revision in [`POINTERS`].
    pub revision: u64,
}

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The name or the file is no plugin.
    #[error("{0}")]
    Invalid(String),
    /// Another deploy moved the pointer between this one's read and its write.
    #[error("another deploy of `{plugin}` won the race (the pointer moved meanwhile); nothing changed: deploy again")]
    Lost {
        /// The plugin.
        plugin: String,
    },
    /// NATS failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl Cluster {
    /// Stores `wasm` as a build of plugin `name` and points the plugin at it, by
    /// compare-and-swap. The file must be a WebAssembly component of at most
    /// [`MAX_PLUGIN_BYTES`]; every node validates it fully when it loads it.
    pub async fn deploy(&self, name: &str, wasm: &[u8]) -> Result<Deployed, DeployError> {
        self.move_pointer(name, wasm, |current, build| {
            if let Some(rollout) = current.and_then(|current| current.rollout.as_ref()) {
                return Err(DeployError::Invalid(busy(name, rollout)));
            }
            let previous = current.map(|current| current.build.clone());
            Ok(Pointer { build: build.to_owned(), bytes: wasm.len() as u64, previous, rollout: None, ended: None })
        })
        .await
    }

    /// Plugin `name`'s pointer now, with its revision, if it has one.
    pub async fn pointer(&self, name: &str) -> Result<Option<Deployed>, ClusterError> {
        let entry = pointer_entry(&self.pointers().await?, name).await?;
        Ok(entry.and_then(|entry| {
            let pointer = serde_json::from_slice(&entry.value).ok()?;
            Some(Deployed { pointer, revision: entry.revision })
        }))
    }

    /// Stores `wasm` as a build of plugin `name` and moves the plugin's pointer by
    /// compare-and-swap to what `next` makes of the current pointer (if any) and the build's
    /// hash. The file must be a WebAssembly component of at most [`MAX_PLUGIN_BYTES`]; every
    /// node validates it fully when it loads it.
    pub(super) async fn move_pointer(
        &self,
        name: &str,
        wasm: &[u8],
        next: impl FnOnce(Option<&Pointer>, &str) -> Result<Pointer, DeployError>,
    ) -> Result<Deployed, DeployError> {
        if !is_valid_name(name) {
            return Err(DeployError::Invalid(format!(
                "`{name}` is not a plugin name: use 1 to 64 letters, digits, `-` and `_`"
            )));
        }
        check_component(wasm).map_err(DeployError::Invalid)?;
        let pointers = self.pointers().await?;
        let current = pointer_entry(&pointers, name).await?;
        let read = current.as_ref().and_then(|entry| serde_json::from_slice::<Pointer>(&entry.value).ok());
        let build = content_hash(wasm);
        let pointer = next(read.as_ref(), &build)?;
        let builds = self.builds().await?;
        self.store_build(&builds, &build, wasm).await?;
        let value = serde_json::to_vec(&pointer).expect("a pointer serializes").into();
        let lost = || DeployError::Lost { plugin: name.to_owned() };
        let revision = match current {
            Some(entry) => pointers.update(name, value, entry.revision).await.map_err(|err| match err.kind() {
                kv::UpdateErrorKind::WrongLastRevision => lost(),
                _ => jetstream_error(err).into(),
            })?,
            None => pointers.create(name, value).await.map_err(|err| match err.kind() {
                kv::CreateErrorKind::AlreadyExists => lost(),
                _ => jetstream_error(err).into(),
            })?,
        };
        // The build may have been removed as unused between the upload and the pointer's move
        // (an old build deployed again): now that the pointer names it, it is kept for good.
        self.store_build(&builds, &build, wasm).await?;
        Ok(Deployed { pointer, revision })
    }

    /// Fetches and loads every plugin's current build, into `dir` too: once, at start, before
    /// the node loads its plugins (it then serves the cluster's builds from its first
    /// connection). Returns the plugins whose build it took.
    pub async fn fetch_builds(
        &self,
        dir: &Path,
        registry: &Arc<PluginRegistry>,
        rollouts: &Arc<Rollouts>,
    ) -> Result<Vec<String>, ClusterError> {
        let mut written = Vec::new();
        for entry in self.pointer_entries(&self.pointers().await?).await? {
            if self.install(dir, &entry, registry, rollouts).await == Some(true) {
                written.push(entry.key);
            }
        }
        Ok(written)
    }

    /// Follows every plugin's pointer for as long as the engine runs: each build it moves to is
    /// fetched, loaded and kept in `dir`. A build that could not be fetched is tried again after
    /// [`INSTALL_RETRY`], then less often, and keeps no other plugin from being followed
    /// meanwhile.
    pub async fn follow_builds(self, dir: PathBuf, registry: Arc<PluginRegistry>, rollouts: Arc<Rollouts>) {
        loop {
            match self.follow_builds_once(&dir, &registry, &rollouts).await {
                Ok(()) => tokio::time::sleep(super::follow::RETRY).await,
                Err(err) => {
                    tracing::debug!(cause = %err, "following the cluster's plugin builds failed; following again");
                    tokio::time::sleep(INSTALL_RETRY).await;
                }
            }
        }
    }

    async fn follow_builds_once(
        &self,
        dir: &Path,
        registry: &Arc<PluginRegistry>,
        rollouts: &Arc<Rollouts>,
    ) -> Result<(), ClusterError> {
        let mut pointers = self.pointers().await?.watch_with_history(">").await.map_err(jetstream_error)?;
        // The pointers whose build could not be fetched, by plugin: tried again after `wait`,
        // doubled after each round with a failure, while the other plugins' pointers are followed
        // meanwhile.
        let mut unfetched = BTreeMap::new();
        let (mut wait, mut next_try) = (INSTALL_RETRY, tokio::time::Instant::now());
        loop {
            tokio::select! {
                entry = pointers.next() => {
                    let Some(entry) = entry else { return Ok(()) };
                    let entry = entry.map_err(jetstream_error)?;
                    unfetched.remove(&entry.key);
                    if self.install(dir, &entry, registry, rollouts).await.is_none() {
                        if unfetched.is_empty() {
                            (wait, next_try) = (INSTALL_RETRY, tokio::time::Instant::now() + INSTALL_RETRY);
                        }
                        unfetched.insert(entry.key.clone(), entry);
                    }
                }
                _ = tokio::time::sleep_until(next_try), if !unfetched.is_empty() => {
                    for (name, entry) in std::mem::take(&mut unfetched) {
                        if self.install(dir, &entry, registry, rollouts).await.is_none() {
                            unfetched.insert(name, entry);
                        }
                    }
                    wait = (wait * 2).min(INSTALL_RETRY_MAX);
                    next_try = tokio::time::Instant::now() + wait;
                }
            }
        }
    }

    /// Takes what `entry` points at: ends this node's part of a cluster rollout the pointer no
    /// longer holds (before the serving build, so a promoted candidate keeps its instances),
    /// takes the serving build, then follows the rollout the pointer holds. Whether it took a
    /// build; `None` if it could not fetch one (tried again later).
    async fn install(
        &self,
        dir: &Path,
        entry: &kv::Entry,
        registry: &Arc<PluginRegistry>,
        rollouts: &Arc<Rollouts>,
    ) -> Option<bool> {
        let name = entry.key.clone();
        if entry.operation != kv::Operation::Put || !is_valid_name(&name) {
            return Some(false);
        }
        let pointer: Pointer = match serde_json::from_slice(&entry.value) {
            Ok(pointer) => pointer,
            Err(err) => {
                let reason = format!("its pointer in the cluster is not valid: {err}");
                tracing::error!(plugin = name, %reason, "cannot take the cluster's build; the build served before serves on");
                registry.fail(&name, None, format!("the cluster's build: {reason}"));
                return Some(false);
            }
        };
        if pointer.rollout.is_none() {
            self.leave_rollout(&name, &pointer, rollouts).await;
        }
        let took = self.install_serving(dir, &name, &pointer, registry).await?;
        if let Some(rollout) = &pointer.rollout {
            self.join_rollout(&name, rollout, rollouts).await?;
        }
        Some(took)
    }

    /// Takes the build `pointer` names as plugin `name`, unless the file in `dir` is that build
    /// already: fetches it, loads it, and once it loaded writes it into `dir`. Whether it took
    /// it; `None` if it could not fetch it (kept for `status` as a failure for now: it is tried
    /// again). A failure is logged and kept for `status` as the plugin's failed load: the build
    /// served before serves on.
    async fn install_serving(
        &self,
        dir: &Path,
        name: &str,
        pointer: &Pointer,
        registry: &Arc<PluginRegistry>,
    ) -> Option<bool> {
        let path = dir.join(format!("{name}.wasm"));
        if registry.get(name).is_some_and(|served| served.hash == pointer.build)
            || tokio::fs::read(&path).await.is_ok_and(|held| content_hash(&held) == pointer.build)
        {
            return Some(false);
        }
        let wasm = match self.fetch(&pointer.build).await {
            Ok(wasm) => wasm,
            Err(reason) => {
                tracing::error!(plugin = name, %reason, "cannot take the cluster's build; the build served before serves on");
                registry.fail_for_now(name, &pointer.build, format!("the cluster's build: {reason}"));
                return None;
            }
        };
        let (loader, plugin) = (registry.clone(), name.to_owned());
        let loaded =
            tokio::task::spawn_blocking(move || loader.load_build(&plugin, &wasm, "cluster").map(|_| wasm)).await;
        let wasm = match loaded {
            Ok(Ok(wasm)) => wasm,
            Ok(Err(err)) => {
                tracing::error!(plugin = name, build = &pointer.build[..12], cause = %err, "the cluster's build does not load here; the build served before serves on");
                return Some(false);
            }
            Err(_) => return Some(false),
        };
        tracing::info!(plugin = name, build = &pointer.build[..12], "serving the cluster's build");
        let staged = dir.join(format!("{name}.wasm.tmp"));
        let kept = async {
            tokio::fs::write(&staged, &wasm).await?;
            tokio::fs::rename(&staged, &path).await
        };
        if let Err(err) = kept.await {
            tracing::warn!(plugin = name, cause = %err, file = %path.display(), "cannot keep the cluster's build in the plugins directory: a restart would serve the one there");
        }
        Some(true)
    }

    /// Build `build` from the store, checked against its hash.
    pub(super) async fn fetch(&self, build: &str) -> Result<Vec<u8>, String> {
        read_build(&self.builds().await.map_err(|err| err.to_string())?, build).await
    }

    /// Every plugin's pointer entry, as `pointers` holds it now.
    pub(super) async fn pointer_entries(&self, pointers: &kv::Store) -> Result<Vec<kv::Entry>, ClusterError> {
        let names: Vec<String> =
            pointers.keys().await.map_err(jetstream_error)?.try_collect().await.map_err(jetstream_error)?;
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            entries.extend(pointers.entry(name.as_str()).await.map_err(jetstream_error)?);
        }
        Ok(entries)
    }

    /// Every build the store holds.
    pub(super) async fn stored_builds(&self) -> Result<Vec<StoredBuild>, ClusterError> {
        let listed = self.builds().await?.list().await.map_err(jetstream_error)?;
        listed
            .map_ok(|info| StoredBuild { name: info.name, modified: info.modified })
            .try_collect()
            .await
            .map_err(jetstream_error)
    }

    /// The pointers' KV bucket, created if missing.
    pub(super) async fn pointers(&self) -> Result<kv::Store, ClusterError> {
        self.kv_bucket(kv::Config { bucket: POINTERS.to_owned(), history: 5, ..Default::default() }).await
    }

    /// The name of the stream behind the builds' Object Store.
    pub(super) fn builds_stream() -> String {
        format!("OBJ_{BUILDS}")
    }

    /// The builds' Object Store, created if JetStream says it is missing.
    pub(super) async fn builds(&self) -> Result<object_store::ObjectStore, ClusterError> {
        found_or_created(self.jetstream.get_object_store(BUILDS).await, || async {
            let config =
                object_store::Config { bucket: BUILDS.to_owned(), num_replicas: self.replicas, ..Default::default() };
            self.jetstream.create_object_store(config).await.map_err(jetstream_error)
        })
        .await
    }

    /// Puts `wasm` into `builds` as `build` unless the store holds it whole. A deleted object
    /// still answers `info`, marked deleted; one whose chunks are gone (purged by another
    /// program, or lost with a server's disk) would stall every fetch: both are put again, which
    /// replaces them.
    pub(super) async fn store_build(
        &self,
        builds: &object_store::ObjectStore,
        build: &str,
        wasm: &[u8],
    ) -> Result<(), ClusterError> {
        if let Ok(info) = builds.info(build).await
            && !info.deleted
            && self.chunks_stored(&info.nuid).await? == info.chunks
        {
            return Ok(());
        }
        builds.put(build, &mut &wasm[..]).await.map_err(jetstream_error)?;
        Ok(())
    }

    /// How many chunks of the object stored as `nuid` the builds' stream holds.
    async fn chunks_stored(&self, nuid: &str) -> Result<usize, ClusterError> {
        let stream = self.jetstream.get_stream_no_info(Self::builds_stream()).await.map_err(jetstream_error)?;
        let mut subjects = stream.info_with_subjects(format!("$O.{BUILDS}.C.{nuid}")).await.map_err(jetstream_error)?;
        Ok(subjects.try_next().await.map_err(jetstream_error)?.map_or(0, |(_, count)| count))
    }
}

/// Build `build` from `builds`, checked against its hash; failed once nothing came for
/// [`FETCH_STALL`].
pub(super) async fn read_build(builds: &object_store::ObjectStore, build: &str) -> Result<Vec<u8>, String> {
    let object = builds.get(build).await.map_err(|err| format!("build {build} cannot be read: {err}"))?;
    let mut object = object.take(MAX_PLUGIN_BYTES + 1);
    let (mut wasm, mut chunk) = (Vec::new(), vec![0; 128 << 10]);
    loop {
        let read = tokio::time::timeout(FETCH_STALL, object.read(&mut chunk)).await.map_err(|_| {
            format!("build {build} stopped coming for {FETCH_STALL:?}: removed while it was read, or never whole")
        })?;
        match read.map_err(|err| err.to_string())? {
            0 => break,
            read => wasm.extend_from_slice(&chunk[..read]),
        }
    }
    if content_hash(&wasm) != build {
        return Err(format!("build {build} does not match its hash"));
    }
    Ok(wasm)
}

/// A build the Object Store holds.
#[derive(Debug, Clone)]
pub(super) struct StoredBuild {
    /// Its SHA-256 in hex.
    pub name: String,
    /// When it was stored, on the NATS server's clock.
    pub modified: Option<time::OffsetDateTime>,
}

/// The pointers `entries` hold (one that is not, written by another program, names nothing).
fn pointers_in(entries: &[kv::Entry]) -> impl Iterator<Item = Pointer> + '_ {
    entries.iter().filter_map(|entry| serde_json::from_slice::<Pointer>(&entry.value).ok())
}

/// The builds the pointers `entries` hold name: each one's serving build and its rollout's
/// candidate.
pub(super) fn named_builds(entries: &[kv::Entry]) -> BTreeSet<String> {
    pointers_in(entries)
        .flat_map(|pointer| [Some(pointer.build), pointer.rollout.map(|rollout| rollout.candidate)])
        .flatten()
        .collect()
}

/// Which of the `stored` builds to remove: those no pointer of `entries` names and none of
/// `served` (the builds live nodes serve); a pointer's previous build at once, any other after
/// [`ORPHAN_AGE`] at `now` (the NATS server's clock).
pub(super) fn removable(
    entries: &[kv::Entry],
    served: &BTreeSet<String>,
    stored: &[StoredBuild],
    now: time::OffsetDateTime,
) -> Vec<String> {
    let named = named_builds(entries);
    let replaced: BTreeSet<String> = pointers_in(entries).filter_map(|pointer| pointer.previous).collect();
    let old = |build: &StoredBuild| build.modified.is_some_and(|modified| now - modified > ORPHAN_AGE);
    stored
        .iter()
        .filter(|build| !named.contains(&build.name) && !served.contains(&build.name))
        .filter(|build| replaced.contains(&build.name) || old(build))
        .map(|build| build.name.clone())
        .collect()
}

/// Checks `wasm` looks like a WebAssembly component of at most [`MAX_PLUGIN_BYTES`]: its
/// magic number and component layer (a core module or another file is refused before it
/// reaches any node).
fn check_component(wasm: &[u8]) -> Result<(), String> {
    const COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    if wasm.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(format!("the file is larger than a plugin may be ({MAX_PLUGIN_BYTES} bytes)"));
    }
    if !wasm.starts_with(&COMPONENT) {
        return Err(
            "the file is not a WebAssembly component (build the plugin for wasm32-wasip2, e.g. `just build-plugin NAME`)"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_webassembly_components_are_deployed() {
        let component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0x01];
        assert_eq!(check_component(&component), Ok(()));
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        assert!(check_component(&module).unwrap_err().contains("not a WebAssembly component"));
        assert!(check_component(b"#!/bin/sh").is_err());
        assert!(check_component(&[]).is_err());
    }

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// Plugin `name`'s pointer entry holding `pointer`.
    fn pointer_entry(name: &str, pointer: &Pointer) -> kv::Entry {
        kv::Entry {
            bucket: POINTERS.to_owned(),
            key: name.to_owned(),
            value: serde_json::to_vec(pointer).unwrap().into(),
            revision: 1,
            delta: 0,
            created: now(),
            operation: kv::Operation::Put,
            seen_current: true,
        }
    }

    /// Build `name`, stored `age` before [`now`] (never, if `None`).
    fn stored(name: &str, age: Option<Duration>) -> StoredBuild {
        StoredBuild { name: name.to_owned(), modified: age.map(|age| now() - age) }
    }

    #[test]
    fn a_replaced_build_goes_once_no_node_serves_it_and_an_orphan_after_an_hour() {
        let rollout = ClusterRollout {
            kind: RolloutKind::Canary { percent: 10.0, manual: false },
            candidate: "candidate".to_owned(),
            bytes: 1,
            started_at_ms: 0,
            window_secs: 60,
        };
        let pointer = |build: &str, previous: &str| Pointer {
            build: build.to_owned(),
            bytes: 1,
            previous: Some(previous.to_owned()),
            rollout: None,
            ended: None,
        };
        // Written by another program: it names nothing.
        let mut broken = pointer_entry("broken", &pointer("orphan", "orphan"));
        broken.value = b"not a pointer".to_vec().into();
        let entries = [
            pointer_entry("quote", &Pointer { rollout: Some(rollout), ..pointer("serving", "replaced") }),
            pointer_entry("other", &pointer("other-serving", "still-served")),
            broken,
        ];
        let minute = Duration::from_secs(60);
        let stored = [
            stored("serving", Some(2 * ORPHAN_AGE)),
            stored("candidate", Some(2 * ORPHAN_AGE)),
            stored("replaced", Some(minute)),
            stored("still-served", Some(2 * ORPHAN_AGE)),
            stored("lost-a-race", Some(ORPHAN_AGE - minute)),
            stored("orphan", Some(ORPHAN_AGE + minute)),
            stored("served-orphan", Some(ORPHAN_AGE + minute)),
            stored("undated", None),
            stored("other-serving", Some(2 * ORPHAN_AGE)),
        ];
        let served = ["still-served", "served-orphan"].map(str::to_owned).into();
        assert_eq!(removable(&entries, &served, &stored, now()), ["replaced", "orphan"]);
        // An hour later the build that lost its race is an orphan too.
        let later = now() + ORPHAN_AGE;
        assert_eq!(removable(&entries, &served, &stored, later), ["replaced", "lost-a-race", "orphan"]);
        // Once no node serves it any more, the build replaced before goes too.
        assert_eq!(
            removable(&entries, &BTreeSet::new(), &stored, now()),
            ["replaced", "still-served", "orphan", "served-orphan"]
        );
    }
}
