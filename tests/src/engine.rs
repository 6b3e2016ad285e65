//! [`TestEngine`]: the real engine, in-process, on 127.0.0.1 port 0, with its own plugins
//! directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wasmpush::Config;

/// A running engine; stopped (gracefully) by [`TestEngine::stop`] or when dropped.
pub struct TestEngine {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// Where its publish API listens.
    pub publish_addr: SocketAddr,
    /// Its plugins directory (deleted on drop).
    plugins: tempfile::TempDir,
    /// Its data directory unless the test named one (deleted on drop).
    _data: tempfile::TempDir,
    /// Asks the engine to rescan its plugins directory (what SIGHUP does).
    reloads: mpsc::Sender<wasmpush::Reload>,
    /// Resolves the engine's shutdown future.
    shutdown: Option<oneshot::Sender<()>>,
    /// The engine's task.
    task: Option<JoinHandle<Result<(), wasmpush::ServerError>>>,
}

impl TestEngine {
    /// Starts an engine serving `plugins` (name, wasm path) with `configure` applied to the
    /// defaults.
    pub async fn start(plugins: &[(&str, &str)], configure: impl FnOnce(&mut Config)) -> TestEngine {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, path) in plugins {
            std::fs::copy(path, dir.path().join(format!("{name}.wasm"))).expect("copy plugin");
        }
        // A generous plugin deadline: on a loaded CI machine a descheduled shard thread must not
        // turn into a plugin timeout. Tests of timeouts set their own.
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            plugins_dir: dir.path().to_owned(),
            data_dir: data.path().to_owned(),
            plugin_timeout_ms: 2000,
            // Every test client comes from 127.0.0.1, a thousand at once in some tests: one
            // address here stands for many clients. Tests of the handshake caps set their own.
            max_handshakes_per_ip: 4096,
            ..Config::default()
        };
        configure(&mut config);
        let websocket = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = websocket.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let publish = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let publish_addr = publish.local_addr().unwrap();
        let listeners = wasmpush::Listeners { websocket, admin: Some(admin), publish: Some(publish) };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let (reloads, reload_requests) = mpsc::channel(1);
        let stopped = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(wasmpush::run(config, listeners, stopped, reload_requests));
        let engine = TestEngine {
            addr,
            admin_addr,
            publish_addr,
            plugins: dir,
            _data: data,
            reloads,
            shutdown: Some(shutdown),
            task: Some(task),
        };
        engine.wait_until_serving().await;
        engine
    }

    /// Waits until the engine answers handshakes: its initial plugin scan is done then.
    async fn wait_until_serving(&self) {
        // Any answer, even a refusal, comes from the accept loop, which starts after the scan.
        let probe = tokio_tungstenite::connect_async(self.url("/ws/readiness-probe"));
        match tokio::time::timeout(std::time::Duration::from_secs(30), probe).await {
            Ok(Ok(_)) | Ok(Err(tokio_tungstenite::tungstenite::Error::Http(_))) => {}
            other => panic!("the engine did not start serving: {other:?}"),
        }
    }

    /// `ws://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The plugins directory.
    pub fn plugins_dir(&self) -> &Path {
        self.plugins.path()
    }

    /// Where plugin `name` is deployed.
    pub fn plugin_path(&self, name: &str) -> PathBuf {
        self.plugins.path().join(format!("{name}.wasm"))
    }

    /// `GET /status` from the admin endpoint, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let body = crate::http::get(self.admin_addr, "/status").await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {body}"))
    }

    /// `GET /healthz` from the admin endpoint: its status and body.
    pub async fn healthz(&self) -> (u16, String) {
        crate::http::request(self.admin_addr, "GET", "/healthz", None, "").await
    }

    /// Asks the engine to rescan its plugins directory, as SIGHUP does.
    pub async fn reload(&self) {
        self.reloads.send(wasmpush::Reload::default()).await.expect("engine running");
    }

    /// Asks the engine to rescan its plugins and take over the live settings of `config`.
    pub async fn reload_with(&self, config: Config) {
        self.reloads.send(wasmpush::Reload { config: Some(config) }).await.expect("engine running");
    }

    /// Deploys `wasm` as plugin `name` the way `just deploy-plugin` does: write `NAME.wasm.tmp`,
    /// then rename it into place (one atomic replace).
    pub fn deploy(&self, name: &str, wasm: &str) {
        let tmp = self.plugins.path().join(format!("{name}.wasm.tmp"));
        std::fs::copy(wasm, &tmp).expect("write NAME.wasm.tmp");
        std::fs::rename(&tmp, self.plugin_path(name)).expect("rename into place");
    }

    /// Shuts the engine down and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), wasmpush::ServerError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.take().unwrap().await.expect("engine task panicked")
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
