//! `just new-plugin`: the generated plugin passes its own native tests, and `just deploy-plugin`
//! ships it into a running engine, which serves its frames.
//!
//! The recipes run in a scratch copy of the workspace (its manifest with `plugins/*` as the only
//! members, the lock file, the justfile and the template), so the repository is never touched;
//! builds go to `TARGET/template-test`, which later runs reuse.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wasmpush_tests::Client;

use crate::util::{self, SOON, encode, error_parts};

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_plugin_passes_its_tests_deploys_and_serves() {
    let workspace = scratch_workspace();
    let root = workspace.path().to_owned();
    let engine = util::engine().await;
    let plugins_dir = engine.plugins_dir().to_owned();
    tokio::task::spawn_blocking(move || {
        run(just(&root).args(["new-plugin", "hello-world"]));
        run(cargo(&root).args(["test", "-p", "hello-world-plugin"]));
        run(just(&root).args(["deploy-plugin", "hello-world"]).arg(&plugins_dir));
    })
    .await
    .unwrap();

    let params = encode(r#"{"name":"Ada"}"#);
    let mut client = Client::connect_retrying(&engine.url(&format!("/ws/hello-world?params={params}")), SOON).await;
    assert_eq!(client.next_text(SOON).await, r#"{"text":"Hello, Ada!","seq":1}"#);
    assert_eq!(client.next_text(SOON).await, r#"{"text":"Hello, Ada!","seq":2}"#);

    client.send_text(r#"{"name":""}"#).await;
    assert_eq!(error_parts(&client.next_error_frame(SOON).await), (0, "name must not be empty".to_owned()));
    assert_eq!(client.next_within(Duration::from_millis(600)).await, None, "parked until new params");
    client.send_text(r#"{"nme":"typo"}"#).await;
    let (code, message) = error_parts(&client.next_error_frame(SOON).await);
    assert_eq!(code, 0);
    assert!(message.contains("missing field `name`"), "{message}");

    // `repeat: false`: one push for the new params, then nothing on the ticks.
    client.send_text(r#"{"name":"Bob","repeat":false}"#).await;
    let frame = client.next_text(SOON).await;
    assert!(frame.starts_with(r#"{"text":"Hello, Bob!","seq":"#), "{frame}");
    assert_eq!(client.next_within(Duration::from_millis(600)).await, None, "no pushes on ticks without repeat");
}

/// A workspace in a temporary directory with this repository's manifest (members: `plugins/*`,
/// path dependencies made absolute), lock file, justfile and plugin template.
fn scratch_workspace() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    let mut manifest: toml::Table = toml::from_str(&manifest).unwrap();
    let workspace = manifest["workspace"].as_table_mut().unwrap();
    workspace.insert("members".into(), toml::Value::Array(vec!["plugins/*".into()]));
    workspace.remove("default-members");
    for (_, dependency) in workspace["dependencies"].as_table_mut().unwrap().iter_mut() {
        if let Some(path) = dependency.get_mut("path") {
            *path = repo.join(path.as_str().unwrap()).display().to_string().into();
        }
    }
    std::fs::write(dir.path().join("Cargo.toml"), toml::to_string(&manifest).unwrap()).unwrap();
    for file in ["Cargo.lock", "justfile", "templates/plugin/Cargo.toml", "templates/plugin/src/lib.rs"] {
        let copy = dir.path().join(file);
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(repo.join(file), copy).unwrap();
    }
    dir
}

/// `TARGET/template-test`, beside the test binary's own `TARGET/PROFILE/deps`.
fn target_dir() -> PathBuf {
    std::env::current_exe().unwrap().ancestors().nth(3).unwrap().join("template-test")
}

fn just(workspace: &Path) -> Command {
    tool("just", workspace)
}

fn cargo(workspace: &Path) -> Command {
    tool(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()), workspace)
}

/// `program` in `workspace`, building into [`target_dir`] with no flags inherited from the outer
/// build.
fn tool(program: &str, workspace: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    command
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("cannot run {command:?} (is it installed?): {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
