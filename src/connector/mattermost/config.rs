//! The `type: mattermost` connector section: raw keys as written in the file, then the
//! validated [`MattermostConfig`] the connector is built from.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{
    ConnectorConfig, ConnectorKind, MaxFileSize, PlatformSettings, RawAllowedUsers, RawMaxFileSize,
    Validator,
};

/// Mattermost's default `MaxPostSize` (characters); servers configured lower can say so.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 16383;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawMattermost {
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
    /// A personal access token or a bot account's token.
    #[serde(default)]
    token: Option<String>,
    /// The team whose channels `#name` means; optional when the bot is in one team only.
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    reply_in_thread: bool,
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

fn default_download_timeout() -> u64 {
    30
}

fn default_max_message_len() -> usize {
    DEFAULT_MAX_MESSAGE_LEN
}

/// The bot's access token. `Debug` never prints it.
#[derive(Clone)]
pub struct Token(pub String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct MattermostConfig {
    /// Base URL without a trailing `/` (`https://chat.example.com`).
    pub server: String,
    pub token: Token,
    /// Team name for `#channel` specs; `None` = the bot's only team.
    pub team: Option<String>,
    /// Replies to a top-level message open a thread on it (`root_id`).
    pub reply_in_thread: bool,
    /// Copied from the common section: messages the dispatcher will ignore for lack of a
    /// mention do not get their attachments downloaded.
    pub require_mention: bool,
    /// Largest attachment downloaded, in bytes; `None` = no limit.
    pub max_file_size: Option<u64>,
    pub download_timeout: Duration,
    /// Shortest interval between two edits of one streaming reply.
    pub edit_interval: Duration,
    /// The server's `MaxPostSize`; longer replies are split.
    pub max_message_len: usize,
}

/// The JSON Schema of a `type: mattermost` section (`config schema`).
pub fn schema() -> serde_json::Value {
    crate::config::schema::connector_section::<RawMattermost>(super::TYPE)
}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawMattermost = v.parse(path, value)?;
    let users = raw
        .allowed_users
        .validate(&format!("{path}.allowed_users"), v);
    let server = v.base_url(
        &format!("{path}.server"),
        raw.server.as_deref(),
        "the server URL, like https://chat.example.com",
    );
    let token = match raw.token.as_deref().map(str::trim) {
        None | Some("") => {
            v.error(
                format!("{path}.token"),
                "missing: a personal access token or a bot account's token",
            );
            None
        }
        Some(t) => Some(Token(t.to_string())),
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
        v.error(
            format!("{path}.max_message_len"),
            "must be at least 100 characters",
        );
    }
    Some(ConnectorConfig {
        name: raw.name,
        users,
        require_mention: raw.require_mention,
        kind: ConnectorKind::Platform(PlatformSettings::new(
            super::TYPE,
            MattermostConfig {
                server: server?,
                token: token?,
                team: raw.team.filter(|t| !t.trim().is_empty()),
                reply_in_thread: raw.reply_in_thread,
                require_mention: raw.require_mention,
                max_file_size,
                download_timeout: Duration::from_secs(raw.attachments.download_timeout.max(1)),
                edit_interval: Duration::from_millis(raw.edit_interval_ms),
                max_message_len: raw.max_message_len.max(100),
            },
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn parse(section: &str) -> Result<MattermostConfig, String> {
        let yaml = format!(
            "connectors:\n  - name: mm\n    type: mattermost\n{section}\nagents:\n  a:\n    type: claude\n    working_directory: /tmp\nwatchers:\n  - name: w\n    connector: mm\n    room: '#town-square'\n"
        );
        match config::parse(Path::new("/tmp/config.yaml"), &yaml, crate::TYPES) {
            Ok(c) => Ok(c.connectors[0]
                .kind
                .settings::<MattermostConfig>()
                .unwrap()
                .clone()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults() {
        let mm = parse("    server: https://chat.example.com/\n    token: tok-secret").unwrap();
        assert_eq!(mm.server, "https://chat.example.com");
        assert_eq!(mm.team, None);
        assert_eq!(mm.max_file_size, Some(20 * 1024 * 1024));
        assert_eq!(mm.download_timeout, Duration::from_secs(30));
        assert_eq!(mm.edit_interval, Duration::from_secs(1));
        assert_eq!(mm.max_message_len, 16383);
        assert!(!mm.reply_in_thread && mm.require_mention);
        assert!(
            !format!("{mm:?}").contains("tok-secret"),
            "the token leaked into Debug"
        );
    }

    #[test]
    fn reports_every_problem() {
        let err = parse("    server: chat.example.com\n    bogus: 1").unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = parse("    server: chat.example.com\n    max_message_len: 5").unwrap_err();
        assert!(err.contains("must start with http"), "{err}");
        assert!(err.contains("token"), "{err}");
        assert!(err.contains("at least 100"), "{err}");
    }
}
