//! The operator console at `/console`, in headless Chromium against the real engine run as a
//! daemon (its event list is the process's log): live figures that move with a load, the
//! plugins, the data, a failing deploy in the events, a screenshot kept as an artefact; and
//! beyond loopback, 401 without the admin token, live with it.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use wasmpush_tests::http::request;
use wasmpush_tests::{Browser, Client, artifacts};

use crate::util::{Daemon, config_address, encode};

/// How long the page may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// The console's state, for messages.
const STATE: &str = "JSON.stringify({updates: wasmpushConsole.updates, point: wasmpushConsole.latest?.point, \
                     plugins: wasmpushConsole.latest?.plugins?.map(p => [p.name, p.connections, p.calls.calls])})";

/// `clients` clients of `quote` reading their frames until `stop` turns true.
fn load(port: u16, clients: usize, stop: &watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|n| {
            let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode(&format!(r#"{{"symbol":"S{n}"}}"#)));
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(&url).await;
                while !*stop.borrow() {
                    tokio::select! {
                        _ = client.next_within(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
                client.close().await;
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_figures_plugins_data_and_a_failing_deploy() {
    let daemon = Daemon::start(&[("quote", artifacts::QUOTE), ("clock", artifacts::CLOCK)], "").await;
    let mut page = Browser::open(&format!("http://127.0.0.1:{}/console", daemon.admin)).await;
    assert_eq!(page.eval("document.title").await, "wasmpush console");
    page.wait_for("wasmpushConsole.updates >= 2", PATIENCE, STATE).await;
    assert_eq!(page.eval("document.querySelector('#link').textContent").await, "live");
    let listed = "[...document.querySelectorAll('#plugins tbody tr')].map(r => r.dataset.plugin).sort().join()";
    assert_eq!(page.eval(listed).await, "clock,quote");
    assert_eq!(page.eval("document.querySelector('#connections').textContent").await, "0");

    // A load: the figures move, on the tiles, in the history and on the plugin's row.
    let (stop, stopping) = watch::channel(false);
    let clients = load(daemon.port, 40, &stopping);
    let loaded = "wasmpushConsole.latest.point.connections === 40 && wasmpushConsole.latest.point.pushes > 100 \
                  && wasmpushConsole.latest.point.calls > 100 && wasmpushConsole.latest.point.p99_us > 0";
    page.wait_for(loaded, PATIENCE, STATE).await;
    page.wait_for("document.querySelector('#connections').textContent === '40'", PATIENCE, STATE).await;
    let quote = "wasmpushConsole.latest.plugins.find(p => p.name === 'quote')";
    let row: Value = page.eval(quote).await;
    assert_eq!(row["connections"], 40, "{row}");
    assert!(row["calls"]["calls"].as_u64().unwrap() >= 100 && row["version"].as_str().unwrap().len() == 64, "{row}");
    assert!(row["calls"]["p50_us"].as_f64().unwrap() > 0.0, "{row}");
    let cells = "[...document.querySelector('#plugins tr[data-plugin=quote]').cells].map(c => c.textContent)";
    let cells: Vec<String> = serde_json::from_value(page.eval(cells).await).unwrap();
    assert_eq!((cells[0].as_str(), cells[3].as_str()), ("quote", "40"), "{cells:?}");
    let pushes_charted = "wasmpushConsole.points.filter(p => p.pushes > 0).length >= 2";
    page.wait_for(pushes_charted, PATIENCE, "wasmpushConsole.points.length").await;
    assert_eq!(page.eval("document.querySelectorAll('#charts .uplot').length").await, 4);
    // A click on a plugin's row charts its own figures (kept by the page since it opened).
    page.eval("document.querySelector('#plugins tr[data-plugin=quote]').click()").await;
    let charted = "!document.querySelector('#plugin-chart').hidden \
                   && document.querySelectorAll('#plugin-chart .uplot').length === 1 \
                   && wasmpushConsole.pluginPoints.get('quote').filter((p) => p.calls > 0 && p.p99 > 0).length >= 2";
    page.wait_for(charted, PATIENCE, "wasmpushConsole.pluginPoints.get('quote')").await;
    assert_eq!(page.eval("document.querySelector('#plugin-chart-name').textContent").await, "quote");
    assert_eq!(page.eval("document.querySelector('#plugins tr.chosen').dataset.plugin").await, "quote");

    // Data: a bucket's keys and updates, the publish API's writes and refusals.
    let publish = config_address(&daemon.config, "publish");
    for n in 0..20 {
        let body = json!({"put": {"AAPL": {"price": 100 + n}, "MSFT": {"price": 400}}}).to_string();
        let (status, _) = request(publish, "POST", "/v1/buckets/prices", None, &body).await;
        assert_eq!(status, 200);
    }
    let (status, _) = request(publish, "PUT", "/v1/buckets/prices/keys/bad", None, "not json").await;
    assert_eq!(status, 400);
    let bucket = "wasmpushConsole.latest.buckets.find(b => b.name === 'prices')";
    page.wait_for(&format!("{bucket}?.keys === 2"), PATIENCE, "wasmpushConsole.latest.buckets").await;
    let text = "document.querySelector('#buckets tbody').textContent";
    assert!(page.eval(text).await.as_str().unwrap().starts_with("prices2"), "{}", page.eval(text).await);

    // A failing deploy: refused, and the console's events say which plugin and why.
    let not_wasm = daemon.dir.path().join("broken.wasm");
    std::fs::write(&not_wasm, b"this is not a wasm component").unwrap();
    let (deployed, said) = daemon.cli(&["deploy", "quote", not_wasm.to_str().unwrap()]).await;
    assert!(!deployed, "{said}");
    let refused = "[...document.querySelectorAll('#events li.WARN')].map(li => li.textContent)\
                   .find(t => t.includes('deploy refused') && t.includes('plugin=quote'))";
    page.wait_for(&format!("!!{refused}"), PATIENCE, "document.querySelector('#events').textContent").await;
    let line = page.eval(refused).await;
    assert!(line.as_str().unwrap().contains("not a valid"), "the loader's reason: {line}");
    // The serving build is unchanged and still pushing.
    page.wait_for("wasmpushConsole.latest.point.pushes > 100", PATIENCE, STATE).await;

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts/console.png");
    page.screenshot(&screenshot).await;
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a screenshot of the page");

    stop.send(true).unwrap();
    for client in clients {
        client.await.unwrap();
    }
    page.wait_for("wasmpushConsole.latest.point.connections === 0", PATIENCE, STATE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_console_needs_the_admin_token() {
    const TOKEN: &str = "console-token-for-tests-0123456789";
    let admin = crate::util::free_port();
    let extra = format!("admin = \"0.0.0.0:{admin}\"\nadmin_token = \"{TOKEN}\"\n");
    let daemon = Daemon::start(&[("quote", artifacts::QUOTE)], &extra).await;
    let admin = config_address(&daemon.config, "admin");
    let local = format!("127.0.0.1:{}", admin.port()).parse().unwrap();

    // Without the token: 401 for the page and its stream, with a challenge a browser answers (a
    // prompt for the token as the password). Another token: 403.
    for path in ["/console", "/console/stream"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n");
        let (status, answer) = wasmpush_tests::http::exchange(local, &raw).await;
        assert_eq!(status, 401, "{path}: {answer}");
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: {local}\r\nAuthorization: Basic b3BlcmF0b3I6d3Jvbmc=\r\n\
             Connection: close\r\n\r\n"
        );
        let (status, answer) = wasmpush_tests::http::exchange(local, &raw).await;
        assert_eq!(status, 403, "{path} with `operator:wrong`: {answer}");
    }
    let raw = format!("GET /console HTTP/1.1\r\nHost: {local}\r\nConnection: close\r\n\r\n");
    let answer = wasmpush_tests::http::response(local, &raw).await;
    assert!(answer.contains("www-authenticate: Basic realm=\"wasmpush\""), "{answer}");

    // With it (typed into the browser's prompt: here in the URL), the page and its stream are live.
    let mut page = Browser::open(&format!("http://operator:{TOKEN}@{local}/console")).await;
    page.wait_for("wasmpushConsole.updates >= 2", PATIENCE, STATE).await;
    assert_eq!(page.eval("document.querySelector('#link').textContent").await, "live");
    drop(daemon);
}
