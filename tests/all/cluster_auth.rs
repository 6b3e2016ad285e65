//! A node signs in to NATS with each credential `[cluster]` takes — a token, a user and password
//! over TLS checked against a CA, an nkey, a credentials file — and so does `wasmpush deploy`,
//! its secrets given by environment. A node whose credentials NATS stops taking says so in
//! `/healthz`, refuses writes, and comes back once they are taken again; one that does not trust
//! the server's certificate says that.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use wasmpush::config::ClusterSettings;
use wasmpush_tests::http::request;
use wasmpush_tests::{NatsServer, TestEngine, artifacts};

use crate::util::BINARY;

/// A node of the cluster on `url` (no plugin: these tests are about its link), signing in with
/// `credentials` applied to its `[cluster]` table.
async fn node_on(url: String, credentials: impl FnOnce(&mut ClusterSettings)) -> TestEngine {
    TestEngine::start(&[], move |config| {
        config.cluster.nats = vec![url];
        credentials(&mut config.cluster);
    })
    .await
}

/// Waits until `node`'s `/healthz` answers `status` with a body containing `says`.
async fn until_healthz(node: &TestEngine, status: u16, says: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (now, body) = node.healthz().await;
        if now == status && body.contains(says) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "/healthz never said {status} {says:?}: {now} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes key `key` through `node`'s publish API: the answer's status and body.
async fn write(node: &TestEngine, key: &str) -> (u16, String) {
    let path = format!("/v1/buckets/accounts/keys/{key}");
    request(node.publish_addr, "PUT", &path, None, &json!({ "public": true }).to_string()).await
}

/// Waits until `node` has caught up with NATS, then has it write a key through JetStream.
async fn signed_in_and_writes(node: &TestEngine, key: &str) {
    until_healthz(node, 200, "ok").await;
    let (status, body) = write(node, key).await;
    assert_eq!(status, 200, "{body}");
}

/// A NATS config taking only `token`.
fn token_config(token: &str) -> String {
    format!("authorization {{ token: \"{token}\" }}\n")
}

/// `wasmpush deploy versioned V1 --nats URL` with `env` added to its environment.
fn deploy(url: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BINARY)
        .args(["deploy", "versioned", artifacts::VERSIONED_V1, "--nats", url])
        .env_remove("WASMPUSH_NATS_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_by_nats_says_why_and_is_let_in_again_and_deploy_takes_its_token_from_the_environment() {
    let (first, second) = ("first-token-0123456789", "second-token-0123456789");
    let nats = NatsServer::start_with(&token_config(first));
    let node = node_on(nats.url(), |cluster| cluster.token = Some(first.to_owned())).await;
    signed_in_and_writes(&node, "a1").await;

    // The server's token rotated: it disconnects the node and refuses it, and the node says why.
    nats.reconfigure(&token_config(second));
    until_healthz(&node, 503, "authorization violation").await;
    let (status, body) = write(&node, "a2").await;
    assert_eq!(status, 503, "a write while NATS refuses the node: {body}");
    // Given its token back, the node signs in again by itself.
    nats.reconfigure(&token_config(first));
    signed_in_and_writes(&node, "a3").await;

    let refused = deploy(&nats.url(), &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("authorization violation"), "{refused:?}");
    let taken = deploy(&nats.url(), &[("WASMPUSH_NATS_TOKEN", first)]);
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sign_in_with_a_password_over_tls_an_nkey_and_a_credentials_file() {
    let files = tempfile::tempdir().unwrap();

    // A user and password, over TLS with a certificate the node checks against its CA.
    let (ca, cert, key) = certificates(files.path());
    let config = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ user: \"node\", password: \"pass-0123456789\" }}\n",
        cert.display(),
        key.display()
    );
    let tls = NatsServer::start_with(&config);
    let url = tls.url().replace("nats://", "tls://");
    // Beside it, a node given another CA: it says what the TLS handshake found.
    let other = files.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (other_ca, _, _) = certificates(&other);
    let (node, misled) =
        tokio::join!(node_on(url.clone(), password_over_tls(ca)), node_on(url, password_over_tls(other_ca)));
    signed_in_and_writes(&node, "tls").await;
    until_healthz(&misled, 503, "invalid peer certificate").await;
    drop((node, misled));

    // An nkey.
    let user = nkeys::KeyPair::new_user();
    let nkey =
        NatsServer::start_with(&format!("authorization {{ users: [ {{ nkey: \"{}\" }} ] }}\n", user.public_key()));
    let node = node_on(nkey.url(), |cluster| cluster.nkey_seed = Some(user.seed().unwrap())).await;
    signed_in_and_writes(&node, "nkey").await;
    drop(node);

    // A credentials file: a user's JWT, signed by an account the server's operator signed.
    let (config, creds) = operator_config_and_user_creds();
    let creds_file = files.path().join("node.creds");
    std::fs::write(&creds_file, creds).unwrap();
    let operated = NatsServer::start_with(&config);
    let node = node_on(operated.url(), |cluster| cluster.creds_file = Some(creds_file)).await;
    signed_in_and_writes(&node, "creds").await;
}

/// Signs in as user `node` with its password, checking the server's certificate against `ca`.
fn password_over_tls(ca: std::path::PathBuf) -> impl FnOnce(&mut ClusterSettings) {
    move |cluster| {
        cluster.user = Some("node".to_owned());
        cluster.password = Some("pass-0123456789".to_owned());
        cluster.tls_ca_file = Some(ca);
    }
}

/// A CA, and a certificate it signed for 127.0.0.1 with its key, as PEM files in `dir`.
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|name| dir.join(name));
    for (path, pem) in paths.iter().zip([ca.pem(), cert.pem(), key.serialize_pem()]) {
        std::fs::write(path, pem).unwrap();
    }
    let [ca, cert, key] = paths;
    (ca, cert, key)
}

/// A NATS config in operator mode (an operator, its system account and one account with
/// JetStream, held in memory) and the credentials file of a user of that account.
fn operator_config_and_user_creds() -> (String, String) {
    let (operator, system, account, user) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_user(),
    );
    let operator_jwt = signed_jwt(&operator, &operator, "operator", json!({ "type": "operator", "version": 2 }));
    let system_jwt = signed_jwt(&operator, &system, "SYS", json!({ "type": "account", "version": 2 }));
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1,
        "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt =
        signed_jwt(&operator, &account, "wasmpush", json!({ "type": "account", "version": 2, "limits": unlimited }));
    let user_claims =
        json!({ "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 });
    let user_jwt = signed_jwt(&account, &user, "node", user_claims);
    let (system, account_key) = (system.public_key(), account.public_key());
    let config = format!(
        "operator: \"{operator_jwt}\"\nsystem_account: {system}\nresolver: MEMORY\n\
         resolver_preload: {{ {system}: \"{system_jwt}\", {account_key}: \"{account_jwt}\" }}\n"
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    (config, creds)
}

/// A NATS JWT (v2) of `subject`'s public key named `name` with the `nats` claims `nats`, signed
/// by `issuer`.
fn signed_jwt(issuer: &nkeys::KeyPair, subject: &nkeys::KeyPair, name: &str, nats: serde_json::Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({
        "jti": format!("{}{now}", subject.public_key()),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject.public_key(),
        "name": name,
        "nats": nats,
    });
    let header = URL_SAFE_NO_PAD.encode(json!({ "typ": "JWT", "alg": "ed25519-nkey" }).to_string());
    let body = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(body.as_bytes()).unwrap());
    format!("{body}.{signature}")
}
