//! The import rules of ARCHITECTURE.md ("Architecture Invariant: imports"), checked on the
//! source: which modules may name which crates, which may import which modules, and that the
//! module graph has no cycle. A test, so an import that breaks a rule fails `just ci` instead of
//! slipping into review.
//!
//! It reads every `.rs` file under `src/` but this one and `bin/`, skips comments and unit-test
//! modules, and collects the paths code names:
//! `crate::a::b`, `super::a`, `self::a` (with `{…}` groups) and external crates by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One source file: its module path (`plugin::host`, `shard`, `` for lib.rs) and its code
/// without comments.
struct Source {
    module: String,
    code: String,
}

/// Every source file of the crate.
fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
        .into_iter()
        // The binary is outside the library; this checker quotes the names it looks for.
        .filter(|path| !path.starts_with(root.join("bin")) && !path.ends_with("module_rules.rs"))
        .map(|path| {
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|last| last == "mod" || last == "lib") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // A file's unit tests may import anything of it (`use super::*`): they are not part of
            // the module graph.
            let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
            let code = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .map(|line| line.split(" // ").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            Source { module: parts.join("::"), code }
        })
        .collect()
}

/// Whether `code` names crate `name` (as `name::…`, `use name` or `name!`).
fn names_crate(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + name.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            && (after.starts_with("::") || after.starts_with('!') || after.starts_with(';'))
    })
}

/// The modules `source` imports, resolved against the modules that exist.
fn imports(source: &Source, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = source.module.rsplit_once("::").map_or("", |(parent, _)| parent).to_owned();
    let mut found = BTreeSet::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent), ("self::", source.module.clone())] {
        for (at, _) in source.code.match_indices(prefix) {
            if source.code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &source.code[at + prefix.len()..];
            let paths: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())].split(',').collect(),
                None => vec![rest],
            };
            for path in paths {
                let segments: Vec<&str> = path
                    .trim()
                    .split("::")
                    .map(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default())
                    .take_while(|s| s.starts_with(|c: char| c.is_ascii_lowercase()))
                    .collect();
                // The deepest module the path names; an item of `base` itself names `base`.
                let target = (0..=segments.len())
                    .rev()
                    .map(|n| join(&base, &segments[..n]))
                    .find(|candidate| modules.contains(candidate))
                    .unwrap_or_else(|| base.clone());
                if target != source.module {
                    found.insert(target);
                }
            }
        }
    }
    found
}

fn join(base: &str, segments: &[&str]) -> String {
    std::iter::once(base).filter(|b| !b.is_empty()).chain(segments.iter().copied()).collect::<Vec<_>>().join("::")
}

/// The module graph: each module and the modules it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources.iter().map(|s| s.module.clone()).collect();
    sources.iter().map(|source| (source.module.clone(), imports(source, &modules))).collect()
}

/// Whether module `module` is `area` or inside it.
fn within(module: &str, area: &str) -> bool {
    module == area || module.starts_with(&format!("{area}::"))
}

#[test]
fn only_the_plugin_module_knows_wasmtime() {
    for source in sources() {
        if !within(&source.module, "plugin") {
            for name in ["wasmtime", "wasmtime_wasi"] {
                assert!(!names_crate(&source.code, name), "`{}` names {name}", source.module);
            }
        }
    }
}

#[test]
fn only_the_cli_knows_clap_and_anyhow_and_only_the_socket_modules_know_tungstenite() {
    let socket_modules = ["accept", "connection", "outbound"];
    for source in sources() {
        if !within(&source.module, "cli") {
            assert!(!names_crate(&source.code, "clap"), "`{}` names clap", source.module);
            assert!(!names_crate(&source.code, "anyhow"), "`{}` names anyhow", source.module);
        }
        if !socket_modules.contains(&source.module.as_str()) {
            assert!(!names_crate(&source.code, "tokio_tungstenite"), "`{}` names tokio_tungstenite", source.module);
        }
    }
}

#[test]
fn config_depends_on_nothing_of_the_engine_and_the_watcher_on_no_plugin_host() {
    let graph = graph();
    assert_eq!(graph["config"], BTreeSet::new(), "config imports engine modules");
    for import in &graph["watcher"] {
        assert!(!within(import, "plugin") && import != "registry", "the watcher imports `{import}`");
    }
}

#[test]
fn the_data_store_knows_nothing_of_plugins_shards_or_http() {
    let graph = graph();
    for (module, imports) in graph.iter().filter(|(module, _)| within(module, "data")) {
        for import in imports {
            assert!(within(import, "data"), "`{module}` imports `{import}`");
        }
    }
    for source in sources() {
        if !["admin", "admin::console", "admin::rollouts", "publish", "bearer", "http_server"]
            .contains(&source.module.as_str())
        {
            assert!(!names_crate(&source.code, "axum"), "`{}` names axum", source.module);
        }
    }
}

#[test]
fn no_module_reaches_another_through_the_crate_root() {
    for (module, imports) in graph() {
        assert!(!imports.contains(""), "`{module}` imports through lib.rs's re-exports; name the module");
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|m| *m == module) {
            panic!("import cycle: {} -> {module}", path[at..].join(" -> "));
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    let modules: BTreeSet<String> = ["", "a", "a::b", "c"].into_iter().map(String::from).collect();
    let source = Source {
        module: "a::b".into(),
        code: "use super::{Thing, b};\nuse crate::c::Item;\nuse self::x;\nfn f() { crate::c::g(); }".into(),
    };
    assert_eq!(imports(&source, &modules), ["a", "c"].into_iter().map(String::from).collect());
    assert!(names_crate("use wasmtime::Engine;", "wasmtime"));
    assert!(!names_crate("use wasmtime_wasi::WasiCtx;", "wasmtime"));
    assert!(names_crate("anyhow!(\"x\")", "anyhow"));
}
