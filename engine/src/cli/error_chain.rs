//! How the CLI shows an error: its chain of causes on one line, each cause once.

/// An error and its causes on one line, leaving out a cause its parent's message already quotes.
pub(super) fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_its_parent_already_quotes_is_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoted = anyhow::Error::new(io()).context(format!("cannot read x.toml: {}", io()));
        assert_eq!(describe(&quoted), "cannot read x.toml: no such file");
        let unquoted = anyhow::Error::new(io()).context("cannot start");
        assert_eq!(describe(&unquoted), "cannot start: no such file");
    }
}
