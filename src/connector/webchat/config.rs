//! The `type: webchat` connector section.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{ConnectorConfig, ConnectorKind, PlatformSettings, RawAllowedUsers, Validator};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawWebchat {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    #[serde(default = "default_listen")]
    listen: String,
    /// user → token. Listed users without a token get one generated on first start.
    #[serde(default)]
    tokens: BTreeMap<String, String>,
    #[serde(default)]
    allowed_users: RawAllowedUsers,
    #[serde(default)]
    require_mention: bool,
    #[serde(default = "default_history")]
    history_limit: usize,
    #[serde(default = "default_true")]
    persist_history: bool,
}

fn default_true() -> bool {
    true
}

fn default_listen() -> String {
    "127.0.0.1:8790".into()
}

fn default_history() -> usize {
    500
}

#[derive(Clone, Debug)]
pub struct WebchatConfig {
    pub listen: SocketAddr,
    pub tokens: BTreeMap<String, String>,
    /// Every user that may log in: owners, guests and users with a configured token.
    pub users: Vec<String>,
    /// Messages kept per room for the page and the JSON API.
    pub history_limit: usize,
    /// Keep the rooms' history in the runtime dir across restarts.
    pub persist_history: bool,
    /// Copied from the connector section: when false every message counts as addressed to
    /// the bot; when true only messages starting with `@bot` do.
    pub require_mention: bool,
}

/// The JSON Schema of a `type: webchat` section (`config schema`).
pub fn schema() -> serde_json::Value {
    crate::config::schema::connector_section::<RawWebchat>(super::TYPE)
}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawWebchat = v.parse(path, value)?;
    let listen = match raw.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            v.error(
                format!("{path}.listen"),
                format!("'{}' is not an address like 127.0.0.1:8790", raw.listen),
            );
            return None;
        }
    };
    for (user, token) in &raw.tokens {
        if token.len() < 16 {
            v.error(
                format!("{path}.tokens.{user}"),
                "must be at least 16 characters (leave it out to have one generated)",
            );
        }
    }
    let users_cfg = raw
        .allowed_users
        .validate(&format!("{path}.allowed_users"), v);
    let mut users: Vec<String> = raw
        .allowed_users
        .owners
        .iter()
        .chain(&raw.allowed_users.guests)
        .chain(raw.tokens.keys())
        .cloned()
        .collect();
    users.sort();
    users.dedup();
    if users.iter().any(|u| u == super::BOT_NAME) {
        v.error(
            format!("{path}.allowed_users"),
            format!(
                "'{}' is reserved for the gateway itself in the web chat",
                super::BOT_NAME
            ),
        );
    }
    if users.is_empty() {
        v.error(
            format!("{path}.allowed_users"),
            "no users: list at least one owner (a token is generated for each)",
        );
    }
    if raw.history_limit == 0 {
        v.error(format!("{path}.history_limit"), "must be at least 1");
    }
    Some(ConnectorConfig {
        name: raw.name,
        users: users_cfg,
        require_mention: raw.require_mention,
        kind: ConnectorKind::Platform(PlatformSettings::new(
            super::TYPE,
            WebchatConfig {
                listen,
                tokens: raw.tokens,
                users,
                history_limit: raw.history_limit,
                persist_history: raw.persist_history,
                require_mention: raw.require_mention,
            },
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::WebchatConfig;
    use crate::config::Config;
    use std::path::Path;

    fn parse(path: &Path, yaml: &str) -> Result<Config, crate::config::ConfigError> {
        crate::config::parse(path, yaml, crate::TYPES)
    }

    fn config(connector: &str) -> String {
        format!(
            "connectors:\n  - {connector}\n\
             agents:\n  a: {{type: claude, working_directory: /tmp}}\n\
             watchers:\n  - {{name: w, connector: web, room: lobby}}\n"
        )
    }

    #[test]
    fn webchat_section_validates_with_defaults() {
        let yaml = config("{name: web, type: webchat, allowed_users: {owners: [alice]}, tokens: {bob: bob-token-0123456789}}");
        let c = parse(Path::new("/tmp/config.yaml"), &yaml).unwrap();
        let Some(w) = c.connectors[0].kind.settings::<WebchatConfig>() else {
            panic!("not webchat")
        };
        assert_eq!(w.listen.to_string(), "127.0.0.1:8790");
        assert_eq!(w.users, ["alice", "bob"]);
        assert_eq!(w.history_limit, 500);
        assert!(!w.require_mention);
        assert!(!c.connectors[0].require_mention);
    }

    #[test]
    fn require_mention_reaches_the_connector() {
        let yaml = config(
            "{name: web, type: webchat, require_mention: true, allowed_users: {owners: [alice]}}",
        );
        let c = parse(Path::new("/tmp/config.yaml"), &yaml).unwrap();
        let Some(w) = c.connectors[0].kind.settings::<WebchatConfig>() else {
            panic!("not webchat")
        };
        assert!(w.require_mention);
    }

    #[test]
    fn the_bot_name_is_reserved_and_short_tokens_are_refused() {
        let yaml = config(
            "{name: web, type: webchat, allowed_users: {owners: [bot]}, tokens: {alice: short}}",
        );
        let err = parse(Path::new("/tmp/config.yaml"), &yaml).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("connectors[0].allowed_users") && text.contains("'bot' is reserved"),
            "{text}"
        );
        assert!(
            text.contains("connectors[0].tokens.alice") && text.contains("at least 16"),
            "{text}"
        );
    }
}
