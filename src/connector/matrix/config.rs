//! The `type: matrix` connector section: raw keys as written in the file, then the validated
//! [`MatrixConfig`] the connector is built from.

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
struct RawMatrix {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    allowed_users: RawAllowedUsers,
    #[serde(default = "default_true")]
    require_mention: bool,
    /// Base URL of the homeserver's client API, `https://matrix.example.com`.
    #[serde(default)]
    homeserver: Option<String>,
    /// The bot's full user id, `@bot:example.com`.
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    attachments: RawAttachments,
    #[serde(default = "default_edit_interval_ms")]
    edit_interval_ms: u64,
    #[serde(default = "default_max_message_len")]
    max_message_len: usize,
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

/// Synapse refuses events over 64 KiB; an edit carries its text twice (`body` and
/// `m.new_content.body`), at up to 4 bytes a character.
fn default_max_message_len() -> usize {
    6000
}

fn default_download_timeout() -> u64 {
    30
}

/// How the bot authenticates. `Debug` never prints the secret.
#[derive(Clone)]
pub enum MatrixAuth {
    /// An access token (from a login or the admin API): cannot be renewed, so a 401 is final.
    Token(String),
    /// `m.login.password` with the user id; a new login replaces an expired token.
    Password(String),
}

impl fmt::Debug for MatrixAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatrixAuth::Token(_) => f.write_str("Token(<redacted>)"),
            MatrixAuth::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MatrixConfig {
    /// Base URL without a trailing `/`.
    pub homeserver: String,
    /// `@bot:example.com`: own events are recognised by it, and mentions name it.
    pub user_id: String,
    pub auth: MatrixAuth,
    /// Copied from the common section: messages the dispatcher will ignore for lack of a
    /// mention do not get their attachments downloaded.
    pub require_mention: bool,
    /// Largest attachment downloaded, in bytes; `None` = no limit.
    pub max_file_size: Option<u64>,
    pub download_timeout: Duration,
    /// Shortest interval between two edits of one streaming reply.
    pub edit_interval: Duration,
    /// Longest text of one message (characters); longer replies are split.
    pub max_message_len: usize,
}

/// The JSON Schema of a `type: matrix` section (`config schema`).
pub fn schema() -> serde_json::Value {
    crate::config::schema::connector_section::<RawMatrix>(super::TYPE)
}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawMatrix = v.parse(path, value)?;
    let users = raw
        .allowed_users
        .validate(&format!("{path}.allowed_users"), v);
    let homeserver = v.base_url(
        &format!("{path}.homeserver"),
        raw.homeserver.as_deref(),
        "the homeserver URL, like https://matrix.example.com",
    );
    let user_id = match raw.user_id.as_deref().map(str::trim) {
        Some(u) if is_user_id(u) => Some(u.to_string()),
        Some(u) => {
            v.error(
                format!("{path}.user_id"),
                format!("'{u}' is not a Matrix user id (like @bot:example.com)"),
            );
            None
        }
        None => {
            v.error(
                format!("{path}.user_id"),
                "missing: the bot's user id, like @bot:example.com",
            );
            None
        }
    };
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let auth = match (non_empty(raw.access_token), non_empty(raw.password)) {
        (Some(t), None) => Some(MatrixAuth::Token(t)),
        (None, Some(p)) => Some(MatrixAuth::Password(p)),
        (Some(_), Some(_)) => {
            v.error(path, "set either access_token or password, not both");
            None
        }
        (None, None) => {
            v.error(
                path,
                "credentials missing: set access_token, or password (for user_id)",
            );
            None
        }
    };
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
    if raw.max_message_len < 100 {
        v.error(format!("{path}.max_message_len"), "must be at least 100");
    }
    Some(ConnectorConfig {
        name: raw.name,
        users,
        require_mention: raw.require_mention,
        kind: ConnectorKind::Platform(PlatformSettings::new(
            super::TYPE,
            MatrixConfig {
                homeserver: homeserver?,
                user_id: user_id?,
                auth: auth?,
                require_mention: raw.require_mention,
                max_file_size,
                download_timeout: Duration::from_secs(raw.attachments.download_timeout.max(1)),
                edit_interval: Duration::from_millis(raw.edit_interval_ms),
                max_message_len: raw.max_message_len.max(100),
            },
        )),
    })
}

/// `@localpart:server` (the grammar's outline: a sigil, a localpart, a colon, a server name).
pub fn is_user_id(s: &str) -> bool {
    s.strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| !local.is_empty() && !server.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn parse(section: &str) -> Result<MatrixConfig, String> {
        let yaml = format!(
            "connectors:\n  - name: mx\n    type: matrix\n{section}\nagents:\n  a:\n    type: claude\n    working_directory: /tmp\nwatchers:\n  - name: w\n    connector: mx\n    room: '#general:example.com'\n"
        );
        match config::parse(Path::new("/tmp/config.yaml"), &yaml, crate::TYPES) {
            Ok(c) => Ok(c.connectors[0]
                .kind
                .settings::<MatrixConfig>()
                .unwrap()
                .clone()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn token_config_with_defaults() {
        let mx = parse(
            "    homeserver: https://matrix.example.com/\n    user_id: '@bot:example.com'\n    access_token: syt_secret",
        )
        .unwrap();
        assert_eq!(mx.homeserver, "https://matrix.example.com");
        assert_eq!(mx.user_id, "@bot:example.com");
        assert!(matches!(mx.auth, MatrixAuth::Token(_)));
        assert_eq!(mx.max_file_size, Some(20 * 1024 * 1024));
        assert_eq!(mx.edit_interval, Duration::from_secs(1));
        assert_eq!(mx.max_message_len, 6000);
        assert!(mx.require_mention);
        assert!(!format!("{mx:?}").contains("syt_secret"), "secret in Debug");
    }

    #[test]
    fn reports_every_problem() {
        let err = parse("    homeserver: matrix.example.com\n    user_id: bot\n    bogus: 1")
            .unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = parse("    homeserver: matrix.example.com\n    user_id: bot").unwrap_err();
        assert!(err.contains("must start with http"), "{err}");
        assert!(err.contains("not a Matrix user id"), "{err}");
        assert!(err.contains("credentials missing"), "{err}");
        let err = parse(
            "    homeserver: https://x\n    user_id: '@b:x'\n    password: p\n    access_token: t",
        )
        .unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn user_ids() {
        assert!(is_user_id("@owner:localhost"));
        assert!(is_user_id("@a:matrix.org:8448"));
        assert!(!is_user_id("owner"));
        assert!(!is_user_id("@owner"));
        assert!(!is_user_id("@:x"));
    }
}
