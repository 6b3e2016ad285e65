//! The JavaScript client (`clients/js`, served by the engine at `/wasmpush.js`) in headless
//! Chromium against a real engine: back within two seconds of `wasmpush restart` with its
//! params (and the params set while it was away), a refused token stops it, and a token near
//! `exp` is renewed over the open connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use wasmpush::config::{AuthMode, AuthSettings};
use wasmpush_tests::{Browser, TestEngine, artifacts};

use crate::data::{portfolio, seed};
use crate::util::Daemon;

/// How long the page may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// Makes `window.runs.NAME` record a client's states and frames (with the page's clock): the
/// page script `watch(name, options, onReconnecting)`, after importing the engine's client.
const RECORDER: &str = r#"
(async () => {
  const { connect } = await import('/wasmpush.js');
  window.runs = {};
  window.watch = (name, options, onReconnecting) => {
    const run = { states: [], frames: [], errors: [], sockets: 0 };
    runs[name] = run;
    class Counted extends WebSocket {
      constructor(...args) { super(...args); run.sockets += 1; }
    }
    const client = connect(`ws://${location.host}`, { WebSocket: Counted, ...options });
    client.onState = (state, detail) => {
      run.states.push({ at: Date.now(), state, detail });
      if (state === 'reconnecting' && onReconnecting) onReconnecting(client);
    };
    client.onFrame = (frame) => run.frames.push({ at: Date.now(), frame });
    client.onError = (error) => run.errors.push(error);
    return client;
  };
  return true;
})()
"#;

/// What a run did around its first drop: the close, the wait it chose, how long until its first
/// frame after the drop, that frame, and the states from then on.
const AFTER_DROP: &str = r#"((run) => {
  const lost = run.states.find((s) => s.state === 'reconnecting');
  if (!lost) return null;
  const back = run.frames.find((f) => f.at > lost.at);
  return { code: lost.detail.code, delay: lost.detail.delayMs, gap: back ? back.at - lost.at : null,
           frame: back ? back.frame : null, states: run.states.filter((s) => s.at >= lost.at).map((s) => s.state) };
})"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_client_is_back_within_two_seconds_with_its_params() {
    let daemon = Daemon::start(&[("quote", artifacts::QUOTE)], "drain_secs = 1\n").await;
    let mut page = Browser::open(&format!("http://127.0.0.1:{}/", daemon.port)).await;
    assert_eq!(page.eval(RECORDER).await, true);
    page.eval("watch('same', { plugin: 'quote', params: { symbol: 'SAME', nonce: 1 } }); true").await;
    // Its params change while it is away: the new ones are the ones in use after the reconnect.
    let moved = "watch('moved', { plugin: 'quote', params: { symbol: 'OLD', nonce: 2 } }, \
                 (client) => client.setParams({ symbol: 'NEW', nonce: 3 })); true";
    page.eval(moved).await;
    let pushed = "runs.same.frames.length >= 2 && runs.moved.frames.length >= 2";
    page.wait_for(pushed, PATIENCE, "runs").await;
    assert_eq!(page.eval("runs.same.frames[0].frame.symbol").await, "SAME");

    daemon.restart().await;

    for (run, symbol, nonce) in [("same", "SAME", 1), ("moved", "NEW", 3)] {
        let report = format!("{AFTER_DROP}(runs.{run})");
        page.wait_for(&format!("{report}?.frame != null"), PATIENCE, &report).await;
        let report: Value = page.eval(&report).await;
        assert_eq!(report["code"], 1012, "a restart's close: {report}");
        assert_eq!(report["states"][0], "reconnecting", "{report}");
        assert!(report["states"].as_array().unwrap().contains(&json!("open")), "{report}");
        assert!(report["delay"].as_u64().unwrap() < 1000, "a restart's reconnect is spread over a second: {report}");
        assert!(report["gap"].as_u64().unwrap() <= 2000, "back within 2 s: {report}");
        assert_eq!(
            (&report["frame"]["symbol"], &report["frame"]["nonce"]),
            (&json!(symbol), &json!(nonce)),
            "{report}"
        );
    }
    let sockets = page.eval("[runs.same.sockets, runs.moved.sockets]").await;
    assert_eq!(sockets, json!([2, 2]), "one new connection each");
}

const SECRET: &str = "an-hs256-secret-for-the-js-client!!";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token for `a42`, audience `push`, expiring at `exp`, signed with `secret`.
fn token(secret: &str, exp: u64) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::default(), &json!({"sub": "a42", "aud": "push", "exp": exp}), &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_client_and_a_token_near_exp_is_renewed_on_the_open_connection() {
    let engine = TestEngine::start(&[("portfolio", artifacts::PORTFOLIO), ("quote", artifacts::QUOTE)], |config| {
        portfolio(config, |table| table.auth = AuthMode::Required);
        config.auth = AuthSettings {
            hs256_secret: Some(SECRET.into()),
            audiences: vec!["push".into()],
            leeway_secs: 0,
            ..AuthSettings::default()
        };
    })
    .await;
    seed(&engine).await;
    let mut page = Browser::open(&format!("http://{}/", engine.addr)).await;
    assert_eq!(page.eval(RECORDER).await, true);

    // Signed with another key: refused in band (4401 with the reason), never tried again.
    let forged = token("not-the-engines-secret-not-the-engines", now() + 600);
    let options = json!({ "plugin": "portfolio", "params": { "account": "a42" }, "token": forged });
    page.eval(&format!("watch('forged', {options}); true")).await;
    page.wait_for("runs.forged.states.at(-1)?.state === 'closed'", PATIENCE, "runs.forged").await;
    let closed: Value = page.eval("runs.forged.states").await;
    assert_eq!(closed.as_array().unwrap().len(), 1, "never open, closed once: {closed}");
    assert_eq!(closed[0]["detail"]["code"], 4401, "{closed}");
    assert!(closed[0]["detail"]["reason"].as_str().unwrap().contains("signature"), "{closed}");

    // Expiring in 4 s: renewed through getToken before then, over the same connection.
    let expires = now() + 4;
    let tokens = json!([token(SECRET, expires), token(SECRET, now() + 600)]);
    let renewing = format!(
        "window.tokens = {tokens}; window.asked = 0; watch('renewing', {{ plugin: 'portfolio', params: {{ account: 'a42' }}, \
         getToken: async () => {{ asked += 1; return tokens.length > 1 ? tokens.shift() : tokens[0]; }} }}); true"
    );
    page.eval(&renewing).await;
    page.wait_for("runs.renewing.frames.length >= 1", PATIENCE, "runs.renewing").await;
    let after_exp = format!("runs.renewing.frames.filter((f) => f.at > {} * 1000 + 1500).length >= 3", expires);
    page.wait_for(&after_exp, PATIENCE, "runs.renewing").await;
    let states: Vec<String> =
        serde_json::from_value(page.eval("runs.renewing.states.map((s) => s.state)").await).unwrap();
    assert_eq!(states, ["open"], "the connection stayed up past the first token's exp");
    assert_eq!(page.eval("[runs.renewing.sockets, asked, runs.renewing.errors.length]").await, json!([1, 2, 0]));
    assert_eq!(page.eval("runs.forged.sockets").await, 1, "the refused client never came back");
    let metrics = wasmpush_tests::http::get(engine.admin_addr, "/metrics").await;
    assert!(metrics.contains("wasmpush_token_refreshes_total 1\n"), "one refresh: {metrics}");
}
