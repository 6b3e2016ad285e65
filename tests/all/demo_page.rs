//! The demo page at `GET /`, in headless Chromium: it connects, shows pushed frames, and edited
//! params change them.

use std::time::Duration;

use wasmpush_tests::Browser;

use crate::util;

/// How long the page may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// The newest frame the page shows.
const NEWEST: &str = "(document.querySelector('#frames li')?.textContent ?? '')";

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_page_shows_frames_and_follows_edited_params() {
    let engine = util::engine().await;
    let mut page = Browser::open(&format!("http://{}/", engine.addr)).await;
    assert_eq!(page.eval("document.title").await, "wasmpush demo");

    // It connects to `quote` with its sample params at once and lists the pushes.
    page.wait_for("document.querySelectorAll('#frames li').length >= 3", PATIENCE, NEWEST).await;
    assert_eq!(page.eval("document.querySelector('#state').textContent").await, "connected");
    let newest = page.eval(NEWEST).await;
    let frame: serde_json::Value = serde_json::from_str(newest.as_str().unwrap()).unwrap();
    assert_eq!((&frame["symbol"], &frame["nonce"]), (&"AAPL".into(), &1.into()), "{frame}");

    // Edited params, sent on the open socket, change the frames.
    page.eval(r#"document.querySelector('#params').value = '{"symbol":"MSFT","nonce":2}'"#).await;
    page.eval("document.querySelector('#send').click()").await;
    page.wait_for(&format!("{NEWEST}.includes('\"symbol\":\"MSFT\"')"), PATIENCE, NEWEST).await;
    let frame: serde_json::Value = serde_json::from_str(page.eval(NEWEST).await.as_str().unwrap()).unwrap();
    assert_eq!(frame["nonce"], 2, "{frame}");

    // A plugin error shows as an error line; the connection stays open.
    page.eval(r#"document.querySelector('#params').value = '{"symbol":"FAIL"}'"#).await;
    page.eval("document.querySelector('#send').click()").await;
    page.wait_for("document.querySelector('#frames li')?.className === 'error'", PATIENCE, NEWEST).await;
    assert!(page.eval(NEWEST).await.as_str().unwrap().starts_with(r#"{"code":0,"#));
    assert_eq!(page.eval("document.querySelector('#state').textContent").await, "connected");

    // Another plugin: pick it and connect.
    page.eval("document.querySelector('#plugin').value = 'clock'").await;
    page.eval(r#"document.querySelector('#params').value = '{"offset_minutes":60}'"#).await;
    page.eval("document.querySelector('#connect').click()").await;
    page.wait_for(&format!("{NEWEST}.includes('\"local_ms\":')"), PATIENCE, NEWEST).await;

    // The page's own query picks plugin and params, as docs/plugin-guide.md links it.
    page.eval(r#"location.href = '/?plugin=quote&params=' + encodeURIComponent('{"symbol":"DEMO"}')"#).await;
    page.wait_for(&format!("{NEWEST}.startsWith('{{\"symbol\":\"DEMO\",\"seq\":2,')"), PATIENCE, NEWEST).await;
}
