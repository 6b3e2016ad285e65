//! Builds the example plugins and the test plugins for `wasm32-wasip2` from source, and writes
//! their paths as constants (`OUT_DIR/plugins.rs`, included by `wasmpush_tests::artifacts`).
//!
//! The nested cargo gets its own target directory: sharing the outer build's would wait forever
//! on its lock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Plugins built as they are: (package, constant).
const PLUGINS: &[(&str, &str)] = &[
    ("quote-plugin", "QUOTE"),
    ("clock-plugin", "CLOCK"),
    ("portfolio-plugin", "PORTFOLIO"),
    ("wrong-contract-plugin", "WRONG_CONTRACT"),
    ("start-trap-plugin", "START_TRAP"),
    ("hostile-plugin", "HOSTILE"),
    ("portfolio-inline-plugin", "PORTFOLIO_INLINE"),
];

/// Builds of the `versioned` test plugin: (version baked in, constant).
const VERSIONED: &[(&str, &str)] =
    &[("1", "VERSIONED_V1"), ("2", "VERSIONED_V2"), ("trap", "VERSIONED_TRAP"), ("slow", "VERSIONED_SLOW")];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_owned();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    // OUT_DIR is TARGET/PROFILE/build/PKG-HASH/out: keep the wasm builds beside, shared by profiles.
    let wasm_target = out_dir.ancestors().nth(4).unwrap().join("wasm-plugins");
    for dir in ["plugins", "guest-sdk", "tests/plugins"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    let mut constants = String::new();
    let packages: Vec<&str> = PLUGINS.iter().map(|(package, _)| *package).collect();
    build(&workspace, &wasm_target, &packages, None);
    for (package, constant) in PLUGINS {
        let path = copy_artifact(&wasm_target, package, &out_dir, package);
        constants += &format!("/// `{package}`, built for wasm32-wasip2.\npub const {constant}: &str = {path:?};\n");
    }
    for (version, constant) in VERSIONED {
        build(&workspace, &wasm_target, &["versioned-plugin"], Some(version));
        let path = copy_artifact(&wasm_target, "versioned-plugin", &out_dir, &format!("versioned-v{version}"));
        constants +=
            &format!("/// `versioned-plugin` pushing version {version}.\npub const {constant}: &str = {path:?};\n");
    }
    std::fs::write(out_dir.join("plugins.rs"), constants).unwrap();
}

/// Runs `cargo build` for the wasm target, optionally baking in a test plugin version.
fn build(workspace: &Path, target_dir: &Path, packages: &[&str], version: Option<&str>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--target-dir"])
        .arg(target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    for package in packages {
        command.args(["-p", package]);
    }
    match version {
        Some(version) => command.env("WASMPUSH_TEST_PLUGIN_VERSION", version),
        None => command.env_remove("WASMPUSH_TEST_PLUGIN_VERSION"),
    };
    let status = command.status().expect("cannot run cargo to build the plugins");
    assert!(
        status.success(),
        "building plugins {packages:?} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
}

/// Copies a built plugin out of the shared target directory (a later build may overwrite it).
fn copy_artifact(target_dir: &Path, package: &str, out_dir: &Path, name: &str) -> PathBuf {
    let built = target_dir.join("wasm32-wasip2/plugin").join(format!("{}.wasm", package.replace('-', "_")));
    let copy = out_dir.join(format!("{name}.wasm"));
    std::fs::copy(&built, &copy).unwrap_or_else(|err| panic!("cannot copy {}: {err}", built.display()));
    copy
}
