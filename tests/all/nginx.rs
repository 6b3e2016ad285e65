//! The shipped `deploy/nginx.conf` in front of a real engine, in a real nginx: WebSocket
//! upgrades with `?params=`, pushes, params updates and the demo page all pass through.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use wasmpush_tests::{Client, KillOnDrop, http};

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

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_nginx_config_proxies_websockets_and_the_demo_page() {
    let engine = util::engine().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let site = SITE
        .replace("server 127.0.0.1:9503;", &format!("server {};", engine.addr))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    assert!(site.contains(&engine.addr.to_string()) && site.contains(&port.to_string()), "{site}");
    let _nginx = start_nginx(dir.path(), &site);

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
