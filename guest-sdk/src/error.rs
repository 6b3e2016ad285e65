//! The plugin error type. Like `anyhow::Error`, it converts from every standard error, so `?`
//! works on anything in a plugin function; it only keeps the message, because the message is
//! what the client is sent.

use std::fmt;

/// A business error, sent to the client as `{"code":0,"msg":"<message>","data":[]}`.
///
/// ```
/// use wasmpush_sdk::Error;
///
/// fn parse(text: &str) -> Result<u32, Error> {
///     Ok(text.parse::<u32>()?)
/// }
///
/// assert_eq!(parse("x").unwrap_err().to_string(), "invalid digit found in string");
/// assert_eq!(Error::msg("closed market").to_string(), "closed market");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What the client is told.
    message: String,
}

impl Error {
    /// An error with this message.
    ///
    /// ```
    /// let err = wasmpush_sdk::Error::msg(format!("symbol {} is not tradable", "FAIL"));
    /// assert_eq!(err.to_string(), "symbol FAIL is not tradable");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Error { message: message.to_string() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every standard error converts, so `?` works on it. (`Error` itself deliberately does not
/// implement `std::error::Error`, as with `anyhow`, or this impl would overlap `From<T> for T`.)
impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Error::msg(err)
    }
}
