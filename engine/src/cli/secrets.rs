//! [`Secrets`]: what a start may be given by flag or environment and must never write to a file
//! or a command line: the publish and admin tokens, the JWT secret, and the NATS token and
//! password ([`NatsSecrets`], which `deploy` takes too). A daemon's child gets them by
//! environment; a restart's new engine gets the running engine's through the handover socket.

use clap::Args;

use crate::config::ClusterSettings;

/// The secrets a start may be given by flag or environment (never kept in a file beside the pid
/// file): a restart's new engine gets the running engine's through the handover socket. One of
/// an older engine, which lacks the NATS ones, reads as `None` for them.
#[derive(Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Secrets {
    /// `--publish-token` / `WASMPUSH_PUBLISH_TOKEN`.
    pub(super) publish_token: Option<String>,
    /// `--admin-token` / `WASMPUSH_ADMIN_TOKEN`.
    pub(super) admin_token: Option<String>,
    /// `--jwt-secret` / `WASMPUSH_JWT_SECRET`.
    pub(super) jwt_secret: Option<String>,
    /// `--nats-token` / `WASMPUSH_NATS_TOKEN`.
    #[serde(default)]
    pub(super) nats_token: Option<String>,
    /// `--nats-password` / `WASMPUSH_NATS_PASSWORD`.
    #[serde(default)]
    pub(super) nats_password: Option<String>,
}

/// How a secret shows in `Debug`: whether it was given, never its value.
fn given(secret: &Option<String>) -> &'static str {
    if secret.is_some() { "given" } else { "none" }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("publish_token", &given(&self.publish_token))
            .field("admin_token", &given(&self.admin_token))
            .field("jwt_secret", &given(&self.jwt_secret))
            .field("nats_token", &given(&self.nats_token))
            .field("nats_password", &given(&self.nats_password))
            .finish()
    }
}

impl Secrets {
    /// Each secret with the environment variable that carries it.
    fn named(self) -> [(&'static str, Option<String>); 5] {
        [
            ("WASMPUSH_PUBLISH_TOKEN", self.publish_token),
            ("WASMPUSH_ADMIN_TOKEN", self.admin_token),
            ("WASMPUSH_JWT_SECRET", self.jwt_secret),
            ("WASMPUSH_NATS_TOKEN", self.nats_token),
            ("WASMPUSH_NATS_PASSWORD", self.nats_password),
        ]
    }

    /// Each secret given, with the environment variable that carries it to a daemon's child.
    pub(super) fn into_env(self) -> Vec<(&'static str, String)> {
        self.named().into_iter().filter_map(|(name, secret)| Some((name, secret?))).collect()
    }

    /// Takes each of `running`'s secrets that this one lacks; returns their environment names.
    pub(super) fn adopt(&mut self, running: Secrets) -> Vec<&'static str> {
        let ours = [
            &mut self.publish_token,
            &mut self.admin_token,
            &mut self.jwt_secret,
            &mut self.nats_token,
            &mut self.nats_password,
        ];
        let mut taken = Vec::new();
        for (ours, (name, theirs)) in ours.into_iter().zip(running.named()) {
            if ours.is_none() && theirs.is_some() {
                *ours = theirs;
                taken.push(name);
            }
        }
        taken
    }
}

/// The NATS token and password of `[cluster]` by flag or environment, which then need not be
/// written into the config file; given, they win over it.
#[derive(Clone, Default, Args)]
pub(super) struct NatsSecrets {
    /// NATS token, `[cluster] token` (better: the environment variable, which `ps` does not show).
    #[arg(long, value_name = "TOKEN", env = "WASMPUSH_NATS_TOKEN", hide_env_values = true)]
    pub(super) nats_token: Option<String>,
    /// NATS password of `[cluster] user`, `[cluster] password` (better: the environment variable).
    #[arg(long, value_name = "PASSWORD", env = "WASMPUSH_NATS_PASSWORD", hide_env_values = true)]
    pub(super) nats_password: Option<String>,
}

impl std::fmt::Debug for NatsSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSecrets")
            .field("nats_token", &given(&self.nats_token))
            .field("nats_password", &given(&self.nats_password))
            .finish()
    }
}

impl NatsSecrets {
    /// Puts the secrets given into `cluster`.
    pub(super) fn apply_to(&self, cluster: &mut ClusterSettings) {
        if let Some(token) = &self.nats_token {
            cluster.token = Some(token.clone());
        }
        if let Some(password) = &self.nats_password {
            cluster.password = Some(password.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secrets_a_start_lacks_are_taken_from_the_running_engine() {
        let given = |token: &str| Some(token.to_owned());
        let mut ours = Secrets { admin_token: given("new-admin"), ..Secrets::default() };
        let running = Secrets {
            publish_token: given("p"),
            admin_token: given("old-admin"),
            nats_password: given("n"),
            ..Secrets::default()
        };
        assert_eq!(ours.adopt(running), ["WASMPUSH_PUBLISH_TOKEN", "WASMPUSH_NATS_PASSWORD"]);
        assert_eq!(ours.publish_token.as_deref(), Some("p"));
        assert_eq!(ours.admin_token.as_deref(), Some("new-admin"), "a secret given to this start wins");
        assert!(!format!("{ours:?}").contains("new-admin"), "Debug shows no secret");
    }
}
