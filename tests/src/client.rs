//! [`Client`]: a real WebSocket client for tests, reading frames with timeouts so no test hangs.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A close frame, with its code and reason.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Gone,
}

/// A connected client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects; panics with the server's answer if the handshake is refused.
    pub async fn connect(url: &str) -> Client {
        match Self::try_connect(url).await {
            Ok(client) => client,
            Err(err) => panic!("connecting to {url} failed: {err}"),
        }
    }

    /// Connects, or returns the handshake error (whose response carries the refusal).
    pub async fn try_connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = connect_async(url).await?;
        Ok(Client { ws })
    }

    /// Connects from the local address `source` (127.0.0.2 and up stand for other clients), or
    /// returns the handshake error.
    pub async fn try_connect_from(
        source: std::net::IpAddr,
        url: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let host = url.split('/').nth(2).expect("ws://HOST:PORT/…");
        let addr: std::net::SocketAddr = host.parse().expect("a numeric host and port");
        let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let stream = socket.connect(addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
        Ok(Client { ws })
    }

    /// Connects with a request of one's own (headers, subprotocols); returns the client and the
    /// server's handshake response, or the handshake error.
    pub async fn try_connect_with(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<
        (Client, tokio_tungstenite::tungstenite::handshake::client::Response),
        tokio_tungstenite::tungstenite::Error,
    > {
        let (ws, response) = connect_async(request).await?;
        Ok((Client { ws }, response))
    }

    /// Connects, retrying for up to `within` while the handshake is refused or fails (an engine
    /// still starting, a plugin not yet loaded, a place not yet freed).
    pub async fn connect_retrying(url: &str, within: Duration) -> Client {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match Self::try_connect(url).await {
                Ok(client) => return client,
                Err(err) if tokio::time::Instant::now() > deadline => panic!("{url} never served: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).await.expect("send binary");
    }

    /// The next frame, or `None` if none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            return Some(match next {
                Some(Ok(Message::Text(text))) => Frame::Text(text.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    Frame::Close(frame.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Frame::Gone,
            });
        }
    }

    /// The next text frame; panics if something else or nothing arrives within `wait`.
    pub async fn next_text(&mut self, wait: Duration) -> String {
        match self.next_within(wait).await {
            Some(Frame::Text(text)) => text,
            other => panic!("expected a text frame within {wait:?}, got {other:?}"),
        }
    }

    /// The next error frame (`{"code":…}`), skipping data frames; each frame must come within
    /// `wait`.
    pub async fn next_error_frame(&mut self, wait: Duration) -> String {
        loop {
            let frame = self.next_text(wait).await;
            if frame.starts_with(r#"{"code""#) {
                return frame;
            }
        }
    }

    /// What ends the connection (a close frame, or the socket ending), skipping text frames;
    /// `None` if nothing comes within `wait` of the previous frame.
    pub async fn closing_frame(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            match self.next_within(wait).await {
                Some(Frame::Text(_)) => continue,
                other => return other,
            }
        }
    }

    /// The text frames received within `window`; panics on a close.
    pub async fn texts_during(&mut self, window: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut texts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                None => return texts,
                Some(Frame::Text(text)) => texts.push(text),
                Some(other) => panic!("connection ended during the window: {other:?}"),
            }
        }
    }

    /// Writes `bytes` straight to the socket, bypassing the WebSocket framing (for hostile-input
    /// tests); ignores a socket the server already closed.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.ws.get_mut().write_all(bytes).await;
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
