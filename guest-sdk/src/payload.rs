//! How a plugin's result becomes the text of a frame.

use crate::Error;

/// A value a plugin function can return as its payload.
///
/// Every `serde::Serialize` type is one (written as compact JSON); [`Raw`] is one whose text is
/// sent as is.
///
/// ```
/// use wasmpush_sdk::Payload;
///
/// #[derive(serde::Serialize)]
/// struct Quote { symbol: &'static str, price: f64 }
///
/// let frame = Quote { symbol: "AAPL", price: 49.6 }.into_frame().unwrap();
/// assert_eq!(frame, r#"{"symbol":"AAPL","price":49.6}"#);
/// ```
pub trait Payload {
    /// The frame text.
    ///
    /// ```
    /// use wasmpush_sdk::Payload;
    ///
    /// assert_eq!(vec![1, 2, 3].into_frame().unwrap(), "[1,2,3]");
    /// ```
    fn into_frame(self) -> Result<String, Error>;
}

impl<T: serde::Serialize> Payload for T {
    fn into_frame(self) -> Result<String, Error> {
        serde_json::to_string(&self).map_err(Error::from)
    }
}

/// A frame text written by the plugin itself, for exact control of the bytes on the wire.
///
/// ```
/// use wasmpush_sdk::{Payload, Raw};
///
/// let frame = Raw(format!("{{\"price\":{}.{:02}}}", 4960 / 100, 4960 % 100));
/// assert_eq!(frame.into_frame().unwrap(), r#"{"price":49.60}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub String);

impl Payload for Raw {
    fn into_frame(self) -> Result<String, Error> {
        Ok(self.0)
    }
}
