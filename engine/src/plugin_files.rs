//! What counts as a plugin file: `NAME.wasm` in the plugins directory, NAME 1 to 64 ASCII
//! letters, digits, `-` or `_`. Shared by the watcher and the registry; knows nothing of how a
//! file is loaded. Temporary and editor files (`NAME.wasm.tmp`, `.NAME.wasm.swp`) are not plugin
//! files, so an atomic deploy (write `NAME.wasm.tmp`, rename) is seen once, as its rename.

use std::path::Path;

use crate::config::is_valid_name;

/// The plugin name of `NAME.wasm`, if NAME is valid.
pub fn plugin_name(path: &Path) -> Option<String> {
    if path.extension()? != "wasm" {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    is_valid_name(name).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_come_from_wasm_file_names() {
        assert_eq!(plugin_name(Path::new("/p/quote.wasm")).as_deref(), Some("quote"));
        assert_eq!(plugin_name(Path::new("/p/my-plugin_2.wasm")).as_deref(), Some("my-plugin_2"));
        assert_eq!(plugin_name(Path::new("/p/quote.wasm.tmp")), None);
        assert_eq!(plugin_name(Path::new("/p/.quote.wasm.swp")), None);
        assert_eq!(plugin_name(Path::new("/p/bad name.wasm")), None);
    }
}
