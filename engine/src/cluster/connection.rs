//! How a node connects to NATS: the client options of `[cluster]` (its credentials checked
//! before the first try, so a bad seed or file is an error at start, not a link that never
//! comes up), how soon it reconnects, and why NATS refused or could not be reached, for
//! `/healthz` and `/status` while the link is down.
//!
//! The client's events name only the kind of a failed connection (`IO error`), which says the
//! same of a server that is down and of a certificate the CA did not sign. On the first such
//! failure of each kind while the link is down, one connection is tried for the purpose, whose
//! error carries the cause (`IO error: invalid peer certificate: UnknownIssuer`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ClientError, Event, ServerError};

use super::ClusterError;
use crate::config::ClusterSettings;

/// The longest wait between two tries to reconnect to NATS: a try is one TCP connection, cheap
/// for a server even from hundreds of nodes.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// How long the connection tried to tell why the link is down may take, per server address.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the link to NATS is down, as the NATS client last said: set by its events, cleared once
/// it connects.
#[derive(Debug, Default)]
pub(super) struct LinkTrouble(Mutex<Trouble>);

/// What [`LinkTrouble`] holds.
#[derive(Debug, Default)]
struct Trouble {
    /// The last reason, since the client last connected.
    reason: Option<String>,
    /// The kind of failure `reason` was found out for, by a connection tried for the purpose.
    explained: Option<String>,
}

impl LinkTrouble {
    /// The last reason, if the client failed since it last connected.
    pub(super) fn reason(&self) -> Option<String> {
        self.trouble().reason.clone()
    }

    fn trouble(&self) -> std::sync::MutexGuard<'_, Trouble> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes in one of the client's events: a failure is kept (and logged when it differs from
    /// the last one, so a server refusing every try is told once), a connection clears it.
    /// Whether the failure is of a kind to find out more of: its event named no more than its
    /// kind, and none of that kind was found out since the link went down.
    fn took(&self, event: &Event) -> bool {
        let (reason, generic) = match event {
            Event::Connected => (None, false),
            Event::ServerError(ServerError::AuthorizationViolation) => {
                (Some("authorization violation: NATS refused this node's credentials".to_owned()), false)
            }
            Event::ServerError(ServerError::Other(err)) => (Some(format!("the server said: {err}")), false),
            Event::ClientError(ClientError::Other(kind)) => {
                if self.trouble().explained.as_ref() == Some(kind) {
                    return false;
                }
                (Some(kind.clone()), true)
            }
            _ => return false,
        };
        let mut trouble = self.trouble();
        match &reason {
            Some(reason) if trouble.reason.as_ref() != Some(reason) && !generic => {
                tracing::warn!(%reason, "the link to NATS is down; serving the last data seen");
            }
            None if trouble.reason.is_some() => tracing::info!("the link to NATS is up again"),
            _ => {}
        }
        *trouble = Trouble { reason, explained: None };
        generic
    }

    /// Keeps `cause`, found out by a connection tried for the purpose, as the reason of failures
    /// of kind `kind` until the client connects.
    fn explain(&self, kind: String, cause: String) {
        tracing::warn!(reason = %cause, "the link to NATS is down; serving the last data seen");
        *self.trouble() = Trouble { reason: Some(cause), explained: Some(kind) };
    }
}

/// The NATS client options of `settings`: its credentials, checked, and TLS roots; reconnecting
/// for ever, at most [`MAX_RECONNECT_DELAY`] apart; the client's failures told to `trouble`.
pub(super) async fn options(
    settings: &ClusterSettings,
    trouble: &Arc<LinkTrouble>,
) -> Result<async_nats::ConnectOptions, ClusterError> {
    let (trouble, settings_now) = (trouble.clone(), Arc::new(settings.clone()));
    let options = signed_in(settings).await?;
    Ok(options.max_reconnects(None).reconnect_delay_callback(reconnect_delay).event_callback(move |event| {
        let (trouble, settings) = (trouble.clone(), settings_now.clone());
        async move {
            if trouble.took(&event)
                && let Event::ClientError(ClientError::Other(kind)) = event
                // In a task of its own: the callback's future must be Sync, a connection's is not.
                && let Ok(Some(cause)) = tokio::spawn(async move { diagnose(&settings).await }).await
            {
                trouble.explain(kind, cause);
            }
        }
    }))
}

/// The client options of `settings` that sign in: its credentials, checked, and TLS roots.
async fn signed_in(settings: &ClusterSettings) -> Result<async_nats::ConnectOptions, ClusterError> {
    let mut options = async_nats::ConnectOptions::new().name("wasmpush");
    if let Some(path) = &settings.creds_file {
        let setup = |err: std::io::Error| ClusterError::Setup(format!("credentials file {}: {err}", path.display()));
        options = options.credentials_file(path).await.map_err(setup)?;
    }
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(seed) = &settings.nkey_seed {
        nkeys::KeyPair::from_seed(seed)
            .map_err(|err| ClusterError::Setup(format!("nkey_seed is not an nkey seed: {err}")))?;
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &settings.tls_ca_file {
        let pem = std::fs::read_to_string(ca)
            .map_err(|err| ClusterError::Setup(format!("tls_ca_file {}: {err}", ca.display())))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ClusterError::Setup(format!("tls_ca_file {} holds no PEM certificate", ca.display())));
        }
        options = options.add_root_certificates(ca.clone());
    }
    Ok(options)
}

/// The servers of `settings`, parsed.
pub(super) fn server_addrs(settings: &ClusterSettings) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
    settings.nats.iter().map(|url| url.parse().map_err(|err| ClusterError::Setup(format!("`{url}`: {err}")))).collect()
}

/// Why a connection with `settings` fails now, in full; `None` if it connects.
async fn diagnose(settings: &ClusterSettings) -> Option<String> {
    let options = signed_in(settings).await.ok()?.connection_timeout(DIAGNOSIS_TIMEOUT);
    options.connect(server_addrs(settings).ok()?).await.err().map(|err| err.to_string())
}

/// How long the NATS client waits before its `attempts`th try to reconnect: none before the
/// first, then doubling from 2 ms to [`MAX_RECONNECT_DELAY`]. (async-nats' own default doubles to
/// 4 s: a node could stay cut off for 4 s after NATS came back, serving stale data.)
fn reconnect_delay(attempts: usize) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    match attempts {
        0 | 1 => Duration::ZERO,
        _ => Duration::from_millis(2_u64.saturating_pow(doublings)).min(MAX_RECONNECT_DELAY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_waits_double_up_to_half_a_second() {
        let delays: Vec<u64> =
            [1, 2, 3, 9, 10, 11, 1000].map(|attempt| reconnect_delay(attempt).as_millis() as u64).into();
        assert_eq!(delays, [0, 2, 4, 256, 500, 500, 500]);
    }

    #[test]
    fn the_last_failure_is_kept_until_the_client_connects_and_a_kind_is_found_out_once() {
        let trouble = LinkTrouble::default();
        assert!(!trouble.took(&Event::ServerError(ServerError::AuthorizationViolation)), "it says why itself");
        assert!(trouble.reason().unwrap().contains("refused this node's credentials"));
        trouble.took(&Event::Disconnected);
        assert!(trouble.reason().is_some(), "a disconnection says no more than the failure");
        let io_error = Event::ClientError(ClientError::Other("IO error".to_owned()));
        assert!(trouble.took(&io_error), "a failure named by its kind alone is to be found out");
        assert_eq!(trouble.reason().as_deref(), Some("IO error"));
        trouble.explain("IO error".to_owned(), "IO error: invalid peer certificate: UnknownIssuer".to_owned());
        assert!(!trouble.took(&io_error), "found out once while the link is down");
        assert_eq!(trouble.reason().as_deref(), Some("IO error: invalid peer certificate: UnknownIssuer"));
        assert!(trouble.took(&Event::ClientError(ClientError::Other("timed out".to_owned()))), "another kind");
        trouble.took(&Event::Connected);
        assert_eq!(trouble.reason(), None);
        assert!(trouble.took(&io_error), "found out again after the link was up");
    }

    #[tokio::test]
    async fn a_connection_tried_to_find_out_says_what_the_clients_events_do_not() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("nats://{}", closed.local_addr().unwrap());
        drop(closed);
        let settings = ClusterSettings { nats: vec![url], ..Default::default() };
        let cause = diagnose(&settings).await.expect("nothing listens there");
        assert!(cause.contains("IO error: ") && cause.to_lowercase().contains("refused"), "{cause}");
    }

    #[tokio::test]
    async fn credentials_that_cannot_work_are_refused_before_any_try() {
        let trouble = Arc::default();
        let with = |edit: fn(&mut ClusterSettings)| {
            let mut settings = ClusterSettings { nats: vec!["nats://127.0.0.1:4222".to_owned()], ..Default::default() };
            edit(&mut settings);
            settings
        };
        let not_a_seed = with(|settings| settings.nkey_seed = Some("SUnotaseed".to_owned()));
        let err = options(&not_a_seed, &trouble).await.unwrap_err().to_string();
        assert!(err.contains("nkey_seed is not an nkey seed"), "{err}");
        let no_creds = with(|settings| settings.creds_file = Some("/nonexistent/nats.creds".into()));
        let err = options(&no_creds, &trouble).await.unwrap_err().to_string();
        assert!(err.contains("credentials file /nonexistent/nats.creds"), "{err}");
        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "not a certificate").unwrap();
        let path = not_pem.path().to_owned();
        let mut settings = with(|_| {});
        settings.tls_ca_file = Some(path);
        let err = options(&settings, &trouble).await.unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let mut settings = with(|_| {});
        settings.nkey_seed = Some(seed);
        assert!(options(&settings, &trouble).await.is_ok());
    }
}
