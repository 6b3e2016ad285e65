//! What `restart` and `status` need to act on the engine as it was started, without the operator
//! repeating it: the flags of its `start` and the directory it ran in, kept beside its pid file
//! (`PIDFILE.start`, JSON). The publish token is not kept: it travels by environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the engine was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Launch {
    /// The directory it ran in: its relative paths (config, plugins, data) are relative to it.
    pub(super) dir: PathBuf,
    /// The setting flags of its `start` (`--config FILE`, `--listen ADDR`, …).
    pub(super) args: Vec<String>,
}

/// Where the launch of the engine with pid file `pid_file` is kept.
fn path(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".start");
    PathBuf::from(name)
}

/// Keeps this process's start flags beside `pid_file`.
pub(super) fn save(pid_file: &Path, flags: &[OsString]) -> std::io::Result<()> {
    let args = flags.iter().map(|flag| flag.to_string_lossy().into_owned()).collect();
    let launch = Launch { dir: std::env::current_dir()?, args };
    let text = serde_json::to_string(&launch).map_err(std::io::Error::other)?;
    let file = path(pid_file);
    let temporary = PathBuf::from(format!("{}.tmp", file.display()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &file)
}

/// How the engine with pid file `pid_file` was last started, if that was kept (and readable).
pub(super) fn load(pid_file: &Path) -> Option<Launch> {
    serde_json::from_str(&std::fs::read_to_string(path(pid_file)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_is_kept_beside_its_pid_file_and_read_back() {
        let dir = std::env::temp_dir().join(format!("wasmpush-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("wasmpush.pid");
        assert_eq!(load(&pid_file), None);
        save(&pid_file, &["--listen".into(), "127.0.0.1:9719".into()]).unwrap();
        let launch = load(&pid_file).unwrap();
        assert_eq!(launch.args, ["--listen", "127.0.0.1:9719"]);
        assert_eq!(launch.dir, std::env::current_dir().unwrap());
        assert!(dir.join("wasmpush.pid.start").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
