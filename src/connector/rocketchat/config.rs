//! The `type: rocketchat` connector section: raw keys as written in the file, then the
//! validated [`RocketChatConfig`] the connector is built from.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{
    ConnectorConfig, ConnectorKind, MaxFileSize, PlatformSettings, RawAllowedUsers, RawMaxFileSize,
    Validator,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRocketChat {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    allowed_users: RawAllowedUsers,
    #[serde(default = "default_true")]
    require_mention: bool,
    /// Base URL of the server, `https://chat.example.com`.
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    auth_token: Option<String>,
    #[serde(default)]
    mention_all: bool,
    #[serde(default)]
    reply_in_thread: bool,
    #[serde(default)]
    attachments: RawAttachments,
    #[serde(default = "default_edit_interval_ms")]
    edit_interval_ms: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAttachments {
    #[serde(default)]
    max_file_size_mb: RawMaxFileSize,
    #[serde(default = "default_download_timeout")]
    download_timeout: u64,
}

impl Default for RawAttachments {
    fn default() -> Self {
        RawAttachments {
            max_file_size_mb: RawMaxFileSize::default(),
            download_timeout: default_download_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_edit_interval_ms() -> u64 {
    1000
}

fn default_download_timeout() -> u64 {
    30
}

/// How the bot authenticates. `Debug` never prints the secret.
#[derive(Clone)]
pub enum RocketChatAuth {
    /// REST `login` with username and password; the returned token is used everywhere else
    /// and renewed by logging in again when it expires.
    Password { username: String, password: String },
    /// A personal access token: cannot be renewed, so a 401 is final.
    Token { user_id: String, auth_token: String },
}

impl fmt::Debug for RocketChatAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RocketChatAuth::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RocketChatAuth::Token { user_id, .. } => f
                .debug_struct("Token")
                .field("user_id", user_id)
                .field("auth_token", &"<redacted>")
                .finish(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RocketChatConfig {
    /// Base URL without a trailing `/` (`https://chat.example.com`).
    pub server: String,
    pub auth: RocketChatAuth,
    /// `@all` / `@here` address the bot.
    pub mention_all: bool,
    /// Replies to a top-level message open a thread on it.
    pub reply_in_thread: bool,
    /// Copied from the common section: messages the dispatcher will ignore for lack of a
    /// mention do not get their attachments downloaded.
    pub require_mention: bool,
    /// Largest attachment downloaded, in bytes; `None` = no limit.
    pub max_file_size: Option<u64>,
    pub download_timeout: Duration,
    /// Shortest interval between two edits of one streaming reply.
    pub edit_interval: Duration,
}

/// The JSON Schema of a `type: rocketchat` section (`config schema`).
pub fn schema() -> serde_json::Value {
    crate::config::schema::connector_section::<RawRocketChat>(super::TYPE)
}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawRocketChat = v.parse(path, value)?;
    let users = raw
        .allowed_users
        .validate(&format!("{path}.allowed_users"), v);
    let server = v.base_url(
        &format!("{path}.server"),
        raw.server.as_deref(),
        "the server URL, like https://chat.example.com",
    );
    let auth = validate_auth(path, &raw, v);
    let max_file_size = MaxFileSize::validate(
        raw.attachments.max_file_size_mb,
        &format!("{path}.attachments.max_file_size_mb"),
        v,
    )
    .bytes();
    if raw.attachments.download_timeout == 0 {
        v.error(
            format!("{path}.attachments.download_timeout"),
            "must be at least 1 second",
        );
    }
    Some(ConnectorConfig {
        name: raw.name,
        users,
        require_mention: raw.require_mention,
        kind: ConnectorKind::Platform(PlatformSettings::new(
            super::TYPE,
            RocketChatConfig {
                server: server?,
                auth: auth?,
                mention_all: raw.mention_all,
                reply_in_thread: raw.reply_in_thread,
                require_mention: raw.require_mention,
                max_file_size,
                download_timeout: Duration::from_secs(raw.attachments.download_timeout.max(1)),
                edit_interval: Duration::from_millis(raw.edit_interval_ms),
            },
        )),
    })
}

fn validate_auth(path: &str, raw: &RawRocketChat, v: &mut Validator) -> Option<RocketChatAuth> {
    let non_empty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    match (
        non_empty(&raw.username),
        non_empty(&raw.password),
        non_empty(&raw.user_id),
        non_empty(&raw.auth_token),
    ) {
        (Some(username), Some(password), None, None) => {
            Some(RocketChatAuth::Password { username, password })
        }
        (None, None, Some(user_id), Some(auth_token)) => Some(RocketChatAuth::Token {
            user_id,
            auth_token,
        }),
        (None, None, None, None) => {
            v.error(
                path,
                "credentials missing: set username + password, or user_id + auth_token (a personal access token)",
            );
            None
        }
        (u, p, i, t) if (u.is_some() || p.is_some()) && (i.is_some() || t.is_some()) => {
            v.error(
                path,
                "set either username + password or user_id + auth_token, not both",
            );
            None
        }
        (u, p, i, t) => {
            let missing = match (u, p, i, t) {
                (Some(_), None, _, _) => "password",
                (None, Some(_), _, _) => "username",
                (_, _, Some(_), None) => "auth_token",
                _ => "user_id",
            };
            v.error(
                format!("{path}.{missing}"),
                "missing (credentials come in pairs)",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn parse(section: &str) -> Result<RocketChatConfig, String> {
        let yaml = format!(
            "connectors:\n  - name: rc\n    type: rocketchat\n{section}\nagents:\n  a:\n    type: claude\n    working_directory: /tmp\nwatchers:\n  - name: w\n    connector: rc\n    room: '#general'\n"
        );
        match config::parse(Path::new("/tmp/config.yaml"), &yaml, crate::TYPES) {
            Ok(c) => Ok(c.connectors[0]
                .kind
                .settings::<RocketChatConfig>()
                .unwrap()
                .clone()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn password_config_with_defaults() {
        let rc =
            parse("    server: https://chat.example.com/\n    username: bot\n    password: pw")
                .unwrap();
        assert_eq!(rc.server, "https://chat.example.com");
        assert!(matches!(rc.auth, RocketChatAuth::Password { .. }));
        assert_eq!(rc.max_file_size, Some(20 * 1024 * 1024));
        assert_eq!(rc.download_timeout, Duration::from_secs(30));
        assert_eq!(rc.edit_interval, Duration::from_secs(1));
        assert!(!rc.mention_all && !rc.reply_in_thread && rc.require_mention);
        assert!(
            !format!("{:?}", rc.auth).contains("pw\""),
            "secret leaked into Debug"
        );
    }

    #[test]
    fn token_config_and_zero_size_limit() {
        let rc = parse(
            "    server: http://127.0.0.1:3000\n    user_id: U1\n    auth_token: T1\n    attachments: {max_file_size_mb: 0}",
        )
        .unwrap();
        assert!(matches!(rc.auth, RocketChatAuth::Token { .. }));
        assert_eq!(rc.max_file_size, None);
    }

    #[test]
    fn reports_every_problem() {
        let err =
            parse("    server: chat.example.com\n    username: bot\n    bogus: 1").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = parse("    server: chat.example.com\n    username: bot").unwrap_err();
        assert!(err.contains("must start with http"), "{err}");
        assert!(err.contains("password"), "{err}");
        let err =
            parse("    server: https://x\n    username: bot\n    password: p\n    auth_token: t")
                .unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }
}
