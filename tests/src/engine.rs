//! [`TestEngine`]: the real engine, in-process, on 127.0.0.1 port 0, with its own plugins
//! directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmpush::Config;

/// A running engine; stopped (gracefully) by [`TestEngine::stop`] or when dropped.
pub struct TestEngine {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its plugins directory (deleted on drop).
    plugins: tempfile::TempDir,
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
        let mut config = Config { plugins_dir: dir.path().to_owned(), ..Config::default() };
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(wasmpush::run(config, listener, async move {
            let _ = stopped.await;
        }));
        TestEngine { addr, plugins: dir, shutdown: Some(shutdown), task: Some(task) }
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
