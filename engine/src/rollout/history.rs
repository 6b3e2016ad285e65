//! [`VersionHistory`]: every build the engine loads, kept in the data directory by plugin and
//! content hash (`versions/NAME/HASH.wasm`, with `HASH.json` saying when it was loaded and from
//! where), the newest `keep_versions` per plugin. Each build is its own pair of files, written
//! to a temporary name and renamed: two engines of a restart may write at once, a crash leaves
//! no half file, and no shared index can be torn.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::wall_clock::unix_ms;

/// One kept build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptVersion {
    /// SHA-256 of the build, in hex: its version id.
    pub hash: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// When the engine last loaded it, in milliseconds since the Unix epoch.
    pub loaded_at_ms: u64,
    /// Where it came from: `file`, `cluster`, `deploy`, `canary`, `shadow` or `rollback`.
    pub source: String,
}

/// The builds kept per plugin.
#[derive(Debug, Clone)]
pub struct VersionHistory {
    /// `DATA_DIR/versions`.
    dir: PathBuf,
    /// Builds kept per plugin.
    keep: usize,
}

impl VersionHistory {
    /// The history under `data_dir`, keeping `keep` builds per plugin.
    pub fn new(data_dir: &Path, keep: usize) -> Self {
        VersionHistory { dir: data_dir.join("versions"), keep }
    }

    /// Keeps build `hash` of `plugin` (its `wasm` bytes), loaded now from `source`; then removes
    /// the oldest builds past the limit, never one of `protect` (those serving).
    pub fn keep(&self, plugin: &str, hash: &str, wasm: &[u8], source: &str, protect: &[&str]) -> std::io::Result<()> {
        let dir = self.dir.join(plugin);
        std::fs::create_dir_all(&dir)?;
        let build = dir.join(format!("{hash}.wasm"));
        if !build.is_file() {
            write_atomically(&build, wasm)?;
        }
        self.touch(plugin, hash, wasm.len(), source, protect)
    }

    /// Records that kept build `hash` of `plugin` (`bytes` long) was loaded again now, from
    /// `source`; then removes the oldest builds past the limit, never one of `protect`.
    pub fn touch(&self, plugin: &str, hash: &str, bytes: usize, source: &str, protect: &[&str]) -> std::io::Result<()> {
        let dir = self.dir.join(plugin);
        let kept = KeptVersion {
            hash: hash.to_owned(),
            bytes,
            loaded_at_ms: unix_ms(SystemTime::now()),
            source: source.to_owned(),
        };
        write_atomically(&dir.join(format!("{hash}.json")), &serde_json::to_vec(&kept)?)?;
        for old in self.list(plugin)?.iter().skip(self.keep).filter(|old| !protect.contains(&old.hash.as_str())) {
            for ext in ["wasm", "json"] {
                match std::fs::remove_file(dir.join(format!("{}.{ext}", old.hash))) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The kept builds of `plugin`, newest first; none if it has no history. A record that
    /// cannot be read (written by hand, cut short) is skipped.
    pub fn list(&self, plugin: &str) -> std::io::Result<Vec<KeptVersion>> {
        let entries = match std::fs::read_dir(self.dir.join(plugin)) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut kept = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let record = std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<KeptVersion>(&bytes).ok());
            match record {
                Some(version) if path.with_extension("wasm").is_file() && is_hash(&version.hash) => kept.push(version),
                _ => tracing::warn!(path = %path.display(), "skipping an unreadable version record"),
            }
        }
        kept.sort_by(|a, b| b.loaded_at_ms.cmp(&a.loaded_at_ms).then_with(|| a.hash.cmp(&b.hash)));
        Ok(kept)
    }

    /// The bytes of kept build `hash` of `plugin`.
    pub fn read(&self, plugin: &str, hash: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(plugin).join(format!("{hash}.wasm")))
    }
}

/// Whether `text` is a SHA-256 in lowercase hex (a record's hash names files: nothing else may).
fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::content_hash;

    #[test]
    fn the_newest_builds_are_kept_and_the_serving_one_always() {
        let data = std::env::temp_dir().join(format!("wasmpush-history-{}", std::process::id()));
        let history = VersionHistory::new(&data, 2);
        let builds: Vec<Vec<u8>> = (0..4u8).map(|n| vec![n; 10]).collect();
        let hashes: Vec<String> = builds.iter().map(|build| content_hash(build)).collect();
        for (build, hash) in builds.iter().zip(&hashes) {
            history.keep("quote", hash, build, "file", &[&hashes[0]]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let kept: Vec<String> = history.list("quote").unwrap().into_iter().map(|v| v.hash).collect();
        assert_eq!(kept, [hashes[3].clone(), hashes[2].clone(), hashes[0].clone()], "newest two, and the serving one");
        assert_eq!(history.read("quote", &hashes[2]).unwrap(), builds[2]);
        std::fs::write(data.join("versions/quote/bogus.json"), b"{not json").unwrap();
        assert_eq!(history.list("quote").unwrap().len(), 3, "an unreadable record is skipped");
        assert!(history.list("other").unwrap().is_empty());
        std::fs::remove_dir_all(&data).unwrap();
    }
}
