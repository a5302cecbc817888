//! The `type: openai` connector section.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{ConnectorConfig, ConnectorKind, PlatformSettings, RawAllowedUsers, Validator};
use crate::connector::ApprovalPlace;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawOpenai {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    #[serde(default = "default_listen")]
    listen: String,
    /// user → API key (`${VAR}` expanded like everywhere).
    #[serde(default)]
    keys: BTreeMap<String, String>,
    #[serde(default)]
    allowed_users: RawAllowedUsers,
    /// model name a client may use → the watched model (a watcher's `room`) it stands for.
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    /// `<connector>/<room>` where approval prompts of API requests are posted.
    #[serde(default)]
    approvals_room: Option<String>,
    /// Tool activity appears in streamed answers as text lines.
    #[serde(default)]
    show_tools: bool,
    /// Models a caller may ask the agent's CLI for with `<model>:<override>`.
    #[serde(default)]
    model_overrides: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests: u32,
    #[serde(default = "default_per")]
    per_seconds: u64,
}

fn default_listen() -> String {
    "127.0.0.1:8791".into()
}

fn default_per() -> u64 {
    60
}

/// At most this many requests per key in [`RateLimit::per`], refilled evenly.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

/// The shortest key accepted: a key is a password that scripts send on every request.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Clone, Debug)]
pub struct OpenaiConfig {
    pub listen: SocketAddr,
    /// (user, key); each key is one user's.
    pub keys: Vec<(String, String)>,
    pub aliases: BTreeMap<String, String>,
    pub rate_limit: RateLimit,
    /// Where approval prompts go: nowhere (calls needing an owner are denied) or a room.
    pub approvals: ApprovalPlace,
    pub show_tools: bool,
    /// CLI model names a request may choose (`assistant:sonnet`); empty: none.
    pub model_overrides: Vec<String>,
}

/// The JSON Schema of a `type: openai` section (`config schema`).
pub fn schema() -> serde_json::Value {
    crate::config::schema::connector_section::<RawOpenai>(super::TYPE)
}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawOpenai = v.parse(path, value)?;
    let listen = match raw.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            v.error(
                format!("{path}.listen"),
                format!("'{}' is not an address like 127.0.0.1:8791", raw.listen),
            );
            return None;
        }
    };
    let users = raw
        .allowed_users
        .validate(&format!("{path}.allowed_users"), v);
    if raw.keys.is_empty() {
        v.error(
            format!("{path}.keys"),
            "no keys: map at least one user to an API key (user: key)",
        );
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (user, key) in &raw.keys {
        if key.len() < MIN_KEY_LEN {
            v.error(
                format!("{path}.keys.{user}"),
                format!("must be at least {MIN_KEY_LEN} characters"),
            );
        }
        if let Some(other) = seen.insert(key, user) {
            v.error(
                format!("{path}.keys.{user}"),
                format!("the same key as '{other}': each key must name one user"),
            );
        }
        let has_role = users.owners.contains(user) || users.guests.contains(user);
        if !has_role && users.unknown.is_none() {
            v.warn(
                format!("{path}.keys.{user}"),
                "this user is neither an owner nor a guest in allowed_users: its requests are refused",
            );
        }
    }
    for (alias, target) in &raw.aliases {
        if alias == target {
            v.error(
                format!("{path}.aliases.{alias}"),
                "an alias must name another model",
            );
        }
    }
    let rate_limit = match raw.rate_limit {
        None => RateLimit {
            requests: 60,
            per: Duration::from_secs(60),
        },
        Some(r) => {
            if r.requests == 0 || r.per_seconds == 0 {
                v.error(
                    format!("{path}.rate_limit"),
                    "requests and per_seconds must be at least 1",
                );
            }
            RateLimit {
                requests: r.requests.max(1),
                per: Duration::from_secs(r.per_seconds.max(1)),
            }
        }
    };
    for (i, m) in raw.model_overrides.iter().enumerate() {
        let ok = (1..=64).contains(&m.len())
            && !m.starts_with('-')
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-[]".contains(&b));
        if !ok {
            v.error(
                format!("{path}.model_overrides[{i}]"),
                format!("'{m}' is not a model name (1 to 64 of A-Z a-z 0-9 _ . - [ ], not starting with -)"),
            );
        }
    }
    for user in raw.keys.keys() {
        if user.is_empty() || user.contains('/') || user.starts_with("id:") {
            v.error(
                format!("{path}.keys.{user}"),
                "a user name must be non-empty, without '/', and not start with 'id:'",
            );
        }
    }
    let approvals = match raw.approvals_room.as_deref() {
        None => ApprovalPlace::Nowhere,
        Some(spec) => match spec.split_once('/') {
            Some((connector, room))
                if !connector.is_empty() && !room.is_empty() && connector != raw.name =>
            {
                ApprovalPlace::Room {
                    connector: connector.to_string(),
                    room: room.to_string(),
                }
            }
            _ => {
                v.error(
                    format!("{path}.approvals_room"),
                    format!(
                        "'{spec}' is not `<connector>/<room>` of another connector (e.g. web/lobby)"
                    ),
                );
                ApprovalPlace::Nowhere
            }
        },
    };
    Some(ConnectorConfig {
        name: raw.name,
        users,
        require_mention: false,
        kind: ConnectorKind::Platform(PlatformSettings::new(
            super::TYPE,
            OpenaiConfig {
                listen,
                keys: raw.keys.into_iter().collect(),
                aliases: raw.aliases,
                rate_limit,
                approvals,
                show_tools: raw.show_tools,
                model_overrides: raw.model_overrides,
            },
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn parse(section: &str) -> Result<Config, crate::config::ConfigError> {
        let yaml = format!(
            "connectors:\n  - {section}\n  - {{name: web, type: webchat, allowed_users: {{owners: [alice]}}}}\n\
             agents:\n  a: {{type: claude, working_directory: /tmp}}\n\
             watchers:\n  - {{name: w, connector: api, room: a}}\n"
        );
        crate::config::parse(Path::new("/tmp/config.yaml"), &yaml, crate::TYPES)
    }

    #[test]
    fn a_section_validates_with_defaults() {
        let c = parse("{name: api, type: openai, keys: {alice: sk-alice-0123456789}, allowed_users: {owners: [alice]}}").unwrap();
        let o = c.connectors[0].kind.settings::<OpenaiConfig>().unwrap();
        assert_eq!(o.listen.to_string(), "127.0.0.1:8791");
        assert_eq!(o.keys, vec![("alice".into(), "sk-alice-0123456789".into())]);
        assert_eq!(o.approvals, ApprovalPlace::Nowhere);
        assert_eq!(o.rate_limit.requests, 60);
        assert!(!o.show_tools);
        assert!(o.model_overrides.is_empty());
    }

    #[test]
    fn model_overrides_are_names_never_flags() {
        let err = parse("{name: api, type: openai, keys: {alice: sk-alice-0123456789}, allowed_users: {owners: [alice]}, model_overrides: [sonnet, --dangerously-skip-permissions, 'a b']}")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model_overrides[1]") && err.contains("model_overrides[2]"),
            "{err}"
        );
        assert!(!err.contains("model_overrides[0]"), "{err}");
    }

    #[test]
    fn bad_keys_rate_limit_and_approvals_room_are_reported_with_their_paths() {
        let err = parse("{name: api, type: openai, keys: {alice: short, bob: short}, allowed_users: {owners: [alice]}, rate_limit: {requests: 0}, approvals_room: lobby}")
            .err()
            .unwrap()
            .to_string();
        for needle in [
            "keys.alice",
            "at least 16 characters",
            "the same key as",
            "rate_limit",
            "approvals_room",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn an_approvals_room_names_a_connector_and_a_room() {
        let c = parse("{name: api, type: openai, keys: {alice: sk-alice-0123456789}, allowed_users: {owners: [alice]}, approvals_room: web/lobby}").unwrap();
        let o = c.connectors[0].kind.settings::<OpenaiConfig>().unwrap();
        assert_eq!(
            o.approvals,
            ApprovalPlace::Room {
                connector: "web".into(),
                room: "lobby".into()
            }
        );
    }
}
