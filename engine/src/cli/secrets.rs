//! [`Secrets`]: what a start may be given by flag or environment and must never write to a file
//! or a command line: the publish and admin tokens and the JWT secret. A daemon's child gets them
//! by environment; a restart's new engine gets the running engine's through the handover socket.

/// The secrets a start may be given by flag or environment (never kept in a file beside the pid
/// file): a restart's new engine gets the running engine's through the handover socket.
#[derive(Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Secrets {
    /// `--publish-token` / `WASMPUSH_PUBLISH_TOKEN`.
    pub(super) publish_token: Option<String>,
    /// `--admin-token` / `WASMPUSH_ADMIN_TOKEN`.
    pub(super) admin_token: Option<String>,
    /// `--jwt-secret` / `WASMPUSH_JWT_SECRET`.
    pub(super) jwt_secret: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |secret: &Option<String>| if secret.is_some() { "given" } else { "none" };
        f.debug_struct("Secrets")
            .field("publish_token", &given(&self.publish_token))
            .field("admin_token", &given(&self.admin_token))
            .field("jwt_secret", &given(&self.jwt_secret))
            .finish()
    }
}

impl Secrets {
    /// Each secret with the environment variable that carries it.
    fn named(self) -> [(&'static str, Option<String>); 3] {
        [
            ("WASMPUSH_PUBLISH_TOKEN", self.publish_token),
            ("WASMPUSH_ADMIN_TOKEN", self.admin_token),
            ("WASMPUSH_JWT_SECRET", self.jwt_secret),
        ]
    }

    /// Each secret given, with the environment variable that carries it to a daemon's child.
    pub(super) fn into_env(self) -> Vec<(&'static str, String)> {
        self.named().into_iter().filter_map(|(name, secret)| Some((name, secret?))).collect()
    }

    /// Takes each of `running`'s secrets that this one lacks; returns their environment names.
    pub(super) fn adopt(&mut self, running: Secrets) -> Vec<&'static str> {
        let ours = [&mut self.publish_token, &mut self.admin_token, &mut self.jwt_secret];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secrets_a_start_lacks_are_taken_from_the_running_engine() {
        let given = |token: &str| Some(token.to_owned());
        let mut ours = Secrets { admin_token: given("new-admin"), ..Secrets::default() };
        let running = Secrets { publish_token: given("p"), admin_token: given("old-admin"), jwt_secret: None };
        assert_eq!(ours.adopt(running), ["WASMPUSH_PUBLISH_TOKEN"]);
        assert_eq!(ours.publish_token.as_deref(), Some("p"));
        assert_eq!(ours.admin_token.as_deref(), Some("new-admin"), "a secret given to this start wins");
        assert!(!format!("{ours:?}").contains("new-admin"), "Debug shows no secret");
    }
}
