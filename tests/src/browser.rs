//! [`Browser`]: headless Chromium driven over the Chrome DevTools Protocol, for tests of the demo
//! page, the console and the JavaScript client in a real browser. Only what those tests need:
//! open a page, evaluate JavaScript in it, keep a screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::KillOnDrop;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where Chromium's standard error goes, in its profile directory.
const LOG: &str = "chromium.log";

/// How long Chromium may take to start and open the page.
const STARTUP: Duration = Duration::from_secs(30);

/// The browser binary: `$WASMPUSH_CHROMIUM`, else Debian's `chromium`.
fn chromium() -> PathBuf {
    std::env::var_os("WASMPUSH_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// A headless Chromium showing one page; killed on drop.
pub struct Browser {
    /// Chromium itself; declared first so it is killed before its profile is deleted.
    _process: KillOnDrop,
    /// The browser's profile directory (deleted on drop), holding its log.
    profile: tempfile::TempDir,
    devtools: DevTools,
    /// The DevTools session attached to the page.
    session: String,
}

impl Browser {
    /// Starts Chromium on `url`, attaches to its page and waits until the page has loaded. A
    /// URL may carry credentials (`http://user:password@host/`), which Chromium answers a
    /// `Basic` challenge with, as if typed into its prompt.
    pub async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(profile.path().join(LOG)).expect("log file");
        let mut process = KillOnDrop(
            Command::new(chromium())
                // As root, without a display, and with no network beyond loopback.
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--remote-debugging-port=0",
                    "--window-size=1400,1800",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(url)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "cannot start {} (install Debian's `chromium`; `just test` does): {err}",
                        chromium().display()
                    )
                }),
        );
        let shown = without_credentials(url);
        match attach(&mut process, profile.path(), &shown).await {
            Ok((devtools, session)) => {
                let mut browser = Browser { _process: process, profile, devtools, session };
                let href = r"location.href.replace(/\/\/[^@\/]*@/, '//')";
                let loaded = format!("{href}.startsWith({shown:?}) && document.readyState === 'complete'");
                browser.wait_for(&loaded, STARTUP, "[location.href, document.readyState]").await;
                browser
            }
            Err(problem) => {
                drop(process);
                let log = std::fs::read_to_string(profile.path().join(LOG)).unwrap_or_default();
                panic!("{problem}; chromium's log:\n{log}");
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value; panics with
    /// the page's exception if it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression).await.unwrap_or_else(|problem| panic!("{problem}; chromium's log:\n{}", self.log()))
    }

    /// Evaluates `expression` in the page; an error while the page navigates is `Err`.
    async fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.devtools.call("Runtime.evaluate", params, Some(&self.session)).await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(format!("{expression} threw: {exception}")),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `condition` until it is `true`, for up to `within` (errors while the page
    /// navigates count as not yet); panics showing the value of `show` otherwise.
    pub async fn wait_for(&mut self, condition: &str, within: Duration, show: &str) {
        let deadline = Instant::now() + within;
        while self.try_eval(condition).await != Ok(Value::Bool(true)) {
            if Instant::now() > deadline {
                panic!("`{condition}` never held; `{show}` is {}", self.eval(show).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes a PNG of the page as it shows now to `path` (its directory made if missing).
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let shot = self.devtools.call("Page.captureScreenshot", json!({ "format": "png" }), Some(&self.session)).await;
        let shot = shot.unwrap_or_else(|problem| panic!("{problem}; chromium's log:\n{}", self.log()));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap_or_default());
        std::fs::create_dir_all(path.parent().expect("a file path")).expect("artefact directory");
        std::fs::write(path, png.expect("a base64 PNG")).expect("write the screenshot");
    }

    /// What Chromium wrote to standard error so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join(LOG)).unwrap_or_default()
    }
}

/// `url` without its credentials (`http://user:password@host/` → `http://host/`), as a page shows it.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if rest.split('/').next().is_some_and(|authority| authority.contains('@')) => {
            format!("{scheme}://{}", rest.split_once('@').map_or(rest, |(_, host)| host))
        }
        _ => url.to_owned(),
    }
}

/// Connects to Chromium's DevTools socket and attaches a session to the page showing `url`.
async fn attach(process: &mut Child, profile: &Path, url: &str) -> Result<(DevTools, String), String> {
    let deadline = Instant::now() + STARTUP;
    let waiting = |process: &mut Child, what: &str| {
        if let Ok(Some(status)) = process.try_wait() {
            return Err(format!("chromium exited ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("chromium never {what}"));
        }
        Ok(())
    };
    let mut devtools = loop {
        if let Some(devtools) = DevTools::connect(profile).await {
            break devtools;
        }
        waiting(process, "opened its DevTools socket")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let targets = devtools.call("Target.getTargets", json!({}), None).await?;
        let page = targets["targetInfos"].as_array().into_iter().flatten().find(|target| {
            let shown = target["url"].as_str().map(without_credentials);
            target["type"] == "page" && shown.is_some_and(|shown| shown.starts_with(url))
        });
        if let Some(page) = page {
            let params = json!({ "targetId": page["targetId"], "flatten": true });
            let attached = devtools.call("Target.attachToTarget", params, None).await?;
            let session = attached["sessionId"].as_str().ok_or("attaching gave no session id")?.to_owned();
            return Ok((devtools, session));
        }
        waiting(process, &format!("opened {url}"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser-wide DevTools socket: numbered commands, answers matched by number.
struct DevTools {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl DevTools {
    /// Connects to the address Chromium wrote to `PROFILE/DevToolsActivePort` (port, then path),
    /// if it has written it yet.
    async fn connect(profile: &Path) -> Option<DevTools> {
        let active_port = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
        let mut lines = active_port.lines();
        let (port, path) = (lines.next()?, lines.next()?);
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}")).await.ok()?;
        Some(DevTools { socket, next_id: 0 })
    }

    /// Sends `method` with `params` (to `session`, or to the browser) and returns its result.
    async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            request["sessionId"] = session.into();
        }
        self.socket.send(Message::text(request.to_string())).await.map_err(|err| format!("{method}: {err}"))?;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = self.socket.next().await {
                match message {
                    Ok(Message::Text(text)) => {
                        let answer: Value = serde_json::from_str(&text).map_err(|err| format!("{method}: {err}"))?;
                        if answer["id"] == id {
                            return Ok(answer);
                        }
                    }
                    Ok(_) => {}
                    Err(err) => return Err(format!("{method}: {err}")),
                }
            }
            Err(format!("{method}: the DevTools socket closed"))
        })
        .await
        .map_err(|_| format!("{method}: no answer within 10 s"))??;
        match answer.get("error") {
            Some(error) => Err(format!("{method}: {error}")),
            None => Ok(answer["result"].clone()),
        }
    }
}
