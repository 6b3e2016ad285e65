//! The shipped `deploy/nginx.conf` in front of a real engine, in a real nginx: WebSocket
//! upgrades with `?params=`, pushes, params updates and the demo page all pass through.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::net::IpAddr;

use wasmpush_tests::{Client, KillOnDrop, TestEngine, artifacts, http};

use crate::util::{self, SOON, encode, free_port};

/// The shipped site config.
const SITE: &str = include_str!("../../deploy/nginx.conf");

/// Starts nginx in the foreground with `site` inside `http { }`, everything it writes in `dir`.
fn start_nginx(dir: &Path, site: &str) -> KillOnDrop {
    let dir = dir.display();
    let config = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
         http {{\naccess_log off;\nclient_body_temp_path {dir}/body;\nproxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fastcgi;\nuwsgi_temp_path {dir}/uwsgi;\nscgi_temp_path {dir}/scgi;\n{site}\n}}\n"
    );
    let path = format!("{dir}/nginx.conf");
    std::fs::write(&path, config).unwrap();
    let binary = ["/usr/sbin/nginx", "nginx"].into_iter().find(|b| Path::new(b).exists()).unwrap_or("nginx");
    let child = Command::new(binary)
        .args(["-p", &dir.to_string(), "-e", &format!("{dir}/error.log"), "-c", &path])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start nginx (install Debian's `nginx`; `just test` does): {err}"));
    KillOnDrop(child)
}

/// The shipped site in front of `engine`, listening on a free port of its own; returns nginx and
/// the port.
fn shipped_site(engine: &TestEngine, dir: &Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let site = SITE
        .replace("server 127.0.0.1:9503;", &format!("server {};", engine.addr))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("/var/log/nginx/wasmpush.access.log", &format!("{}/access.log", dir.display()));
    assert!(site.contains(&engine.addr.to_string()) && site.contains(&port.to_string()), "{site}");
    (start_nginx(dir, &site), port)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_nginx_config_proxies_websockets_and_the_demo_page() {
    let engine = util::engine().await;
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, port) = shipped_site(&engine, dir.path());

    let params = encode(r#"{"symbol":"AAPL","nonce":1}"#);
    let url = format!("ws://127.0.0.1:{port}/ws/quote?params={params}");
    let mut client = Client::connect_retrying(&url, Duration::from_secs(10)).await;
    for seq in 1..=3 {
        let frame = client.next_text(SOON).await;
        assert!(frame.starts_with(&format!(r#"{{"symbol":"AAPL","seq":{seq},"#)), "{frame}");
    }
    client.send_text(r#"{"symbol":"MSFT"}"#).await;
    // A tick may have been on its way when the update left; the update's push follows at once.
    let mut frame = client.next_text(SOON).await;
    if frame.starts_with(r#"{"symbol":"AAPL","seq":4,"#) {
        frame = client.next_text(SOON).await;
    }
    assert!(frame.starts_with(r#"{"symbol":"MSFT","seq":"#), "{frame}");

    let page = http::get(([127, 0, 0, 1], port).into(), "/").await;
    assert!(page.contains("<title>wasmpush demo</title>"), "{page}");
    client.close().await;
}

/// Regression (#23.11, #23.12): behind the proxy every socket came from 127.0.0.1, so the
/// per-address limits bound the proxy itself; and the access log kept client tokens.
#[tokio::test(flavor = "multi_thread")]
async fn behind_the_shipped_nginx_the_per_address_limit_counts_the_real_client() {
    let engine = TestEngine::start(&[("quote", artifacts::QUOTE)], |config| {
        config.max_connections_per_ip = 2;
        config.trusted_proxies = vec!["127.0.0.1".to_owned()];
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, port) = shipped_site(&engine, dir.path());
    let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}&token=secret-in-the-url", encode("{}"));
    let from = |last: u8| Client::try_connect_from(IpAddr::from([127, 0, 0, last]), &url);
    let mut first = None;
    for attempt in 0..100 {
        match from(2).await {
            Ok(client) => {
                first = Some(client);
                break;
            }
            Err(_) if attempt < 99 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => panic!("nginx never proxied: {err}"),
        }
    }
    let mut held = vec![first.unwrap(), from(2).await.expect("a client's second connection")];
    match from(2).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("a client's third connection must be refused, got {:?}", other.map(|_| ())),
    }
    held.push(from(3).await.expect("another client behind the same proxy is not limited by the first"));
    held.push(from(4).await.expect("nor a third one"));
    for client in &mut held {
        assert!(client.next_text(SOON).await.contains("NONE"));
    }
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert!(log.contains("GET /ws/quote"), "{log}");
    assert!(!log.contains("secret-in-the-url"), "the access log keeps no token: {log}");
}
