//! The `type: onebot` connector section.

use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{ConnectorConfig, ConnectorKind, RawAllowedUsers, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOneBot {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    allowed_users: RawAllowedUsers,
    #[serde(default = "default_true")]
    require_mention: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug)]
pub struct OneBotConfig {}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawOneBot = v.parse(path, value)?;
    let users = raw.allowed_users.validate(&format!("{path}.allowed_users"), v);
    Some(ConnectorConfig {
        name: raw.name,
        users,
        require_mention: raw.require_mention,
        kind: ConnectorKind::OneBot(OneBotConfig {}),
    })
}
