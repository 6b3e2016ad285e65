//! Which bucket names and keys are valid. The rules are NATS JetStream KV's, so that every bucket
//! and key this engine accepts can be mirrored into a JetStream KV bucket unchanged when nodes
//! share their data, and so that a key is always one segment of a URL path.

/// Longest bucket name, in bytes.
const MAX_BUCKET_NAME: usize = 64;

/// Checks a bucket name: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn check_bucket(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_BUCKET_NAME {
        return Err(format!("bucket name must be 1 to {MAX_BUCKET_NAME} bytes, not {}", name.len()));
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        Some(c) => {
            Err(format!("bucket name `{}` has {c:?}: use ASCII letters, digits, `-` and `_`", name.escape_debug()))
        }
        None => Ok(()),
    }
}

/// Checks a key: 1 to `max_bytes` ASCII letters, digits, `-`, `_`, `=` or `.`, not starting or
/// ending with `.`.
pub fn check_key(key: &str, max_bytes: usize) -> Result<(), String> {
    if key.is_empty() || key.len() > max_bytes {
        return Err(format!("key must be 1 to {max_bytes} bytes, not {}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.'))) {
        return Err(format!(
            "key `{}` has {c:?}: use ASCII letters, digits, `-`, `_`, `=` and `.`",
            key.escape_debug()
        ));
    }
    if key.starts_with('.') || key.ends_with('.') {
        return Err(format!("key `{key}` must not start or end with `.`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_short_and_plain() {
        assert!(check_bucket("prices").is_ok());
        assert!(check_bucket("a-b_C9").is_ok());
        assert!(check_bucket("").is_err());
        assert!(check_bucket(&"a".repeat(65)).is_err());
        assert!(check_bucket("with.dot").unwrap_err().contains("'.'"));
        assert!(check_bucket("é").is_err());
    }

    #[test]
    fn keys_follow_jetstream_kv_rules() {
        assert!(check_key("AAPL", 256).is_ok());
        assert!(check_key("a42", 256).is_ok());
        assert!(check_key("user.42=x", 256).is_ok());
        assert!(check_key(".hidden", 256).is_err());
        assert!(check_key("end.", 256).is_err());
        assert!(check_key("a/b", 256).unwrap_err().contains("'/'"));
        assert!(check_key("sp ace", 256).is_err());
        assert!(check_key("", 256).is_err());
        assert!(check_key(&"k".repeat(257), 256).unwrap_err().contains("257"));
    }
}
