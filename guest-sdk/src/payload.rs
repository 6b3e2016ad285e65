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
    /// Appends the frame text to `frame`, the buffer a whole batch's texts are written into.
    /// What it appends must be UTF-8 (the engine refuses a frame that is not: that call fails
    /// with a contract error); on an error it may leave a partial text, which is discarded.
    ///
    /// ```
    /// use wasmpush_sdk::Payload;
    ///
    /// let mut frame = Vec::new();
    /// vec![1, 2, 3].write_frame(&mut frame).unwrap();
    /// assert_eq!(frame, b"[1,2,3]");
    /// ```
    fn write_frame(self, frame: &mut Vec<u8>) -> Result<(), Error>;

    /// The frame text on its own, as the engine would send it.
    ///
    /// ```
    /// use wasmpush_sdk::Payload;
    ///
    /// assert_eq!(vec![1, 2, 3].into_frame().unwrap(), "[1,2,3]");
    /// ```
    fn into_frame(self) -> Result<String, Error>
    where
        Self: Sized,
    {
        let mut frame = Vec::new();
        self.write_frame(&mut frame)?;
        String::from_utf8(frame).map_err(|err| Error::msg(format!("the frame is not UTF-8: {err}")))
    }
}

impl<T: serde::Serialize> Payload for T {
    fn write_frame(self, frame: &mut Vec<u8>) -> Result<(), Error> {
        serde_json::to_writer(frame, &self).map_err(Error::from)
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
    fn write_frame(self, frame: &mut Vec<u8>) -> Result<(), Error> {
        frame.extend_from_slice(self.0.as_bytes());
        Ok(())
    }

    fn into_frame(self) -> Result<String, Error> {
        Ok(self.0)
    }
}
