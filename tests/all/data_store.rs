//! The data store at its edges: revisions that never go back, a damaged file, a full disk
//! (regressions of #23.3, #23.5 and #23.7).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use wasmpush_tests::http::request;
use wasmpush_tests::{Client, TestEngine};

use crate::util::{BINARY, SOON, config_address, encode, plugins_dir_with_quote, start_in_foreground, write_config};

/// The revision a write answered.
fn revision(answer: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(answer).unwrap_or_else(|err| panic!("{err}: {answer}"));
    value["revision"].as_u64().unwrap_or_else(|| panic!("no revision in {answer}"))
}

/// The ETag of `GET path`.
async fn etag(addr: std::net::SocketAddr, path: &str) -> String {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await.unwrap();
    let line = response.lines().find(|line| line.to_ascii_lowercase().starts_with("etag:")).expect("an ETag");
    line[5..].trim().to_owned()
}

#[tokio::test]
async fn revisions_are_kept_and_never_go_back_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let data_dir = dir.path().to_owned();
        TestEngine::start(&[], move |config| config.data_dir = data_dir)
    };
    let engine = start().await;
    let put = async |engine: &TestEngine, key: &str, value: &str| {
        let (status, answer) =
            request(engine.publish_addr, "PUT", &format!("/v1/buckets/b/keys/{key}"), None, value).await;
        assert_eq!(status, 200, "{answer}");
        revision(&answer)
    };
    assert_eq!(put(&engine, "a", "1").await, 1);
    assert_eq!(put(&engine, "b", "2").await, 2);
    assert_eq!(put(&engine, "a", "3").await, 3);
    let (status, answer) = request(engine.publish_addr, "DELETE", "/v1/buckets/b/keys/b", None, "").await;
    assert_eq!((status, revision(&answer)), (200, 4));
    engine.stop().await.unwrap();

    let engine = start().await;
    assert_eq!(etag(engine.publish_addr, "/v1/buckets/b/keys/a").await, "\"3\"", "the revision that wrote it");
    assert_eq!(put(&engine, "c", "5").await, 5, "after the last revision, the delete's included");
}

#[tokio::test]
async fn a_damaged_data_file_is_named_and_recover_data_starts_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let (config, port, _) = write_config(dir.path(), &plugins, "");
    let pid_file = dir.path().join("wasmpush.pid");
    let publish = config_address(&config, "publish");
    {
        let _engine = start_in_foreground(&config, &pid_file);
        let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"));
        Client::connect_retrying(&url, SOON * 10).await;
        for batch in 0..8 {
            let puts: serde_json::Map<String, serde_json::Value> =
                (0..250).map(|i| (format!("k{batch}-{i}"), json!("v".repeat(200 + i)))).collect();
            let body = json!({ "put": puts }).to_string();
            assert_eq!(request(publish, "POST", "/v1/buckets/b", None, &body).await.0, 200);
        }
    }
    let file = dir.path().join("data/buckets.redb");
    damage(&file);

    let start = |extra: &[&str]| {
        let mut args = vec!["start", "--config", config.to_str().unwrap(), "--pid-file", pid_file.to_str().unwrap()];
        args.extend(extra);
        Command::new(BINARY).args(&args).output().unwrap()
    };
    let refused = start(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "a clear error, not a panic's exit code 101: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "the error names the file: {stderr}");
    assert!(stderr.contains("--recover-data"), "and the way out: {stderr}");

    let mut recovering = Command::new(BINARY)
        .args(["start", "--recover-data", "--config", config.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"));
    let mut client = Client::connect_retrying(&url, SOON * 10).await;
    assert!(client.next_text(SOON).await.contains("NONE"), "the engine serves again");
    assert_eq!(request(publish, "PUT", "/v1/buckets/b/keys/fresh", None, "1").await.0, 200);
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("buckets.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside for inspection");
    let _ = recovering.kill();
    let _ = recovering.wait();
}

/// Flips bytes in the middle of `file`, where its pages are.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64 * 1024] {
        *byte = !*byte;
    }
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_disk_write_fails_that_request_only_and_writes_resume_once_the_disk_does() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_dir_with_quote(dir.path());
    let (config, port, admin) = write_config(dir.path(), &plugins, "");
    let engine = start_in_foreground(&config, &dir.path().join("wasmpush.pid"));
    let publish = config_address(&config, "publish");
    let url = format!("ws://127.0.0.1:{port}/ws/quote?params={}", encode("{}"));
    Client::connect_retrying(&url, SOON * 10).await;
    assert_eq!(request(publish, "PUT", "/v1/buckets/b/keys/first", None, "1").await.0, 200);

    // A full disk: the data file may not grow past its size now (the engine ignores SIGXFSZ, so
    // a write past it fails with EFBIG).
    let size = std::fs::metadata(dir.path().join("data/buckets.redb")).unwrap().len();
    let limit = |fsize: &str| {
        let set =
            Command::new("prlimit").args(["--pid", &engine.id().to_string(), &format!("--fsize={fsize}")]).status();
        assert!(set.unwrap().success(), "prlimit");
    };
    limit(&format!("{size}:unlimited"));
    let value = format!("\"{}\"", "x".repeat(60_000));
    let mut failed = None;
    for n in 0..200 {
        let (status, answer) = request(publish, "PUT", &format!("/v1/buckets/b/keys/v{n}"), None, &value).await;
        if status != 200 {
            failed = Some((n, status, answer));
            break;
        }
    }
    let (n, status, answer) = failed.expect("a write past the file-size limit fails");
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("storage failed"), "{answer}");
    let (_, health) = request(([127, 0, 0, 1], admin).into(), "GET", "/healthz", None, "").await;
    eprintln!("disk full: write {n} failed; /healthz then said {}", health.trim());

    limit("unlimited:unlimited");
    let mut recovered = None;
    for _ in 0..50 {
        let (status, answer) = request(publish, "PUT", "/v1/buckets/b/keys/after", None, "2").await;
        if status == 200 {
            recovered = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered.is_some(), "writes resume once the disk takes them, without a restart");
    let (status, body) = request(publish, "GET", &format!("/v1/buckets/b/keys/v{n}"), None, "").await;
    assert_eq!(status, 404, "the failed write was not applied: {body}");
    let (status, body) = request(publish, "GET", "/v1/buckets/b/keys/first", None, "").await;
    assert_eq!((status, body.as_str()), (200, "1"), "what was acknowledged before is kept");
    let (status, health) = request(([127, 0, 0, 1], admin).into(), "GET", "/healthz", None, "").await;
    assert_eq!(status, 200, "healthy again: {health}");
}
