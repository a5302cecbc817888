//! The `type: onebot` connector section: raw YAML keys (unknown keys are errors) and the
//! validated [`OneBotConfig`] the connector is built from.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{
    ConnectorConfig, ConnectorKind, MaxFileSize, PlatformSettings, RawAllowedUsers, RawMaxFileSize,
    Validator,
};

/// The path NapCat, NoneBot and agentgate use for reverse WebSocket connections.
pub const DEFAULT_PATH: &str = "/onebot/v11/ws";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawOneBot {
    name: String,
    #[serde(rename = "type")]
    _type: String,
    #[serde(default)]
    allowed_users: RawAllowedUsers,
    #[serde(default = "default_true")]
    require_mention: bool,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    group_whitelist: Vec<i64>,
    #[serde(default)]
    user_whitelist: Vec<i64>,
    #[serde(default = "default_max_message_length")]
    max_message_length: usize,
    #[serde(default = "default_forward_threshold")]
    forward_threshold: usize,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    group_context: Option<RawGroupContext>,
    #[serde(default)]
    attachments: Option<RawAttachments>,
    #[serde(default = "default_action_timeout")]
    action_timeout_secs: u64,
    #[serde(default)]
    heartbeat_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default = "default_rate_messages")]
    messages: usize,
    #[serde(default = "default_rate_window")]
    window_secs: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawGroupContext {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_context_messages")]
    max_messages: usize,
    #[serde(default = "default_context_chars")]
    max_chars: usize,
    #[serde(default = "default_context_scan")]
    scan_limit: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAttachments {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default)]
    max_file_size_mb: RawMaxFileSize,
    #[serde(default = "default_download_timeout")]
    download_timeout: u64,
}

fn default_true() -> bool {
    true
}
fn default_max_message_length() -> usize {
    4000
}
fn default_forward_threshold() -> usize {
    12000
}
fn default_rate_messages() -> usize {
    20
}
fn default_rate_window() -> u64 {
    60
}
fn default_context_messages() -> usize {
    30
}
fn default_context_chars() -> usize {
    4000
}
fn default_context_scan() -> usize {
    200
}
/// `max_bytes` of a limit: "no limit" is a limit nothing reaches.
fn max_bytes(limit: MaxFileSize) -> u64 {
    limit.bytes().unwrap_or(u64::MAX)
}
fn default_download_timeout() -> u64 {
    60
}
fn default_action_timeout() -> u64 {
    30
}

/// How the gateway meets the OneBot implementation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Reverse WebSocket: the gateway listens, NapCat & co. connect to it.
    Listen { addr: SocketAddr, path: String },
    /// Forward WebSocket: the gateway connects to the implementation's server.
    Connect { url: String },
}

pub use crate::config::RateLimit;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupContext {
    /// Recent messages included at most.
    pub max_messages: usize,
    /// Characters of context included at most.
    pub max_chars: usize,
    /// History messages fetched at most while looking for the last address of the bot.
    pub scan_limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentLimits {
    pub max_bytes: u64,
    pub download_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct OneBotConfig {
    pub mode: Mode,
    /// Shared secret; `None` accepts any client (only allowed on a loopback address).
    pub access_token: Option<String>,
    /// Copied from the connector section: whether group messages need the bot addressed to
    /// start a turn (decides whether unaddressed messages get attachments downloaded and are
    /// rate limited).
    pub require_mention: bool,
    /// Only these groups are served (empty: every group).
    pub group_whitelist: HashSet<i64>,
    /// Only these QQ users are served, in groups and in private chats (empty: everyone).
    pub user_whitelist: HashSet<i64>,
    pub max_message_length: usize,
    /// Replies longer than this (characters) go out as one merged-forward message.
    pub forward_threshold: usize,
    pub rate_limit: Option<RateLimit>,
    pub group_context: Option<GroupContext>,
    /// `None`: incoming images and files are listed in the text but not downloaded.
    pub attachments: Option<AttachmentLimits>,
    pub action_timeout: Duration,
    /// Silence after which a connection that has sent heartbeats is considered dead. `None`:
    /// three times the interval the implementation announces in its heartbeats.
    pub heartbeat_timeout: Option<Duration>,
}

impl OneBotConfig {
    /// A reverse-WS configuration with every default, for tests and examples.
    pub fn listening(addr: SocketAddr, access_token: Option<String>) -> Self {
        OneBotConfig {
            mode: Mode::Listen {
                addr,
                path: DEFAULT_PATH.to_string(),
            },
            access_token,
            require_mention: true,
            group_whitelist: HashSet::new(),
            user_whitelist: HashSet::new(),
            max_message_length: default_max_message_length(),
            forward_threshold: default_forward_threshold(),
            rate_limit: Some(RateLimit {
                messages: default_rate_messages(),
                window: Duration::from_secs(default_rate_window()),
            }),
            group_context: None,
            attachments: Some(AttachmentLimits {
                max_bytes: max_bytes(MaxFileSize::default()),
                download_timeout: Duration::from_secs(default_download_timeout()),
            }),
            action_timeout: Duration::from_secs(default_action_timeout()),
            heartbeat_timeout: None,
        }
    }
}

/// The JSON Schema of a `type: onebot` section (`config schema`).
pub fn schema() -> serde_json::Value {
    crate::config::schema::connector_section::<RawOneBot>(super::TYPE)
}

pub fn validate(path: &str, value: Value, v: &mut Validator) -> Option<ConnectorConfig> {
    let raw: RawOneBot = v.parse(path, value)?;
    let users = raw
        .allowed_users
        .validate(&format!("{path}.allowed_users"), v);
    let access_token = raw.access_token.filter(|t| !t.is_empty());
    let mode = match (raw.listen, raw.url) {
        (Some(_), Some(_)) => {
            v.error(
                format!("{path}.url"),
                "set either 'listen' (reverse WebSocket) or 'url' (forward WebSocket), not both",
            );
            None
        }
        (None, None) => {
            v.error(
                format!("{path}.listen"),
                "missing: set 'listen' (e.g. 127.0.0.1:8765, NapCat connects to it) or 'url' (the implementation's WebSocket server)",
            );
            None
        }
        (Some(listen), None) => {
            let ws_path = raw.path.unwrap_or_else(|| DEFAULT_PATH.to_string());
            if !ws_path.starts_with('/') {
                v.error(format!("{path}.path"), "must start with '/'");
            }
            match listen.parse::<SocketAddr>() {
                Ok(addr) => {
                    if !addr.ip().is_loopback() && access_token.is_none() {
                        v.error(
                            format!("{path}.access_token"),
                            "required when 'listen' is not a loopback address (anyone reaching the port could pose as a QQ bot)",
                        );
                    }
                    Some(Mode::Listen {
                        addr,
                        path: ws_path,
                    })
                }
                Err(_) => {
                    v.error(
                        format!("{path}.listen"),
                        format!("'{listen}' is not an address:port (e.g. 127.0.0.1:8765)"),
                    );
                    None
                }
            }
        }
        (None, Some(url)) => {
            if raw.path.is_some() {
                v.error(
                    format!("{path}.path"),
                    "only applies with 'listen'; put the path into 'url'",
                );
            }
            if url.starts_with("wss://") {
                v.error(
                    format!("{path}.url"),
                    "wss:// is not supported; run the gateway next to the implementation and use ws:// (or reverse mode)",
                );
                None
            } else if !url.starts_with("ws://") {
                v.error(format!("{path}.url"), "must start with ws://");
                None
            } else {
                Some(Mode::Connect { url })
            }
        }
    };
    if raw.max_message_length < 100 {
        v.error(
            format!("{path}.max_message_length"),
            "must be at least 100 characters",
        );
    }
    if raw.forward_threshold < raw.max_message_length {
        v.error(
            format!("{path}.forward_threshold"),
            "must be at least max_message_length (it is the total length past which a reply becomes a forward message)",
        );
    }
    let rate_limit = match raw.rate_limit {
        None => Some(RateLimit {
            messages: default_rate_messages(),
            window: Duration::from_secs(default_rate_window()),
        }),
        Some(r) if r.messages == 0 => None,
        Some(r) => {
            if r.window_secs == 0 {
                v.error(
                    format!("{path}.rate_limit.window_secs"),
                    "must be at least 1 (set messages: 0 to disable the limit)",
                );
            }
            Some(RateLimit {
                messages: r.messages,
                window: Duration::from_secs(r.window_secs),
            })
        }
    };
    let group_context = match raw.group_context {
        Some(g) if g.enabled => {
            if g.max_messages == 0 || g.max_chars == 0 {
                v.error(
                    format!("{path}.group_context"),
                    "max_messages and max_chars must be at least 1 (or set enabled: false)",
                );
            }
            Some(GroupContext {
                max_messages: g.max_messages,
                max_chars: g.max_chars,
                scan_limit: g.scan_limit.max(g.max_messages),
            })
        }
        _ => None,
    };
    let attachments = match raw.attachments {
        Some(a) if !a.enabled => None,
        Some(a) => {
            let limit = MaxFileSize::validate(
                a.max_file_size_mb,
                &format!("{path}.attachments.max_file_size_mb"),
                v,
            );
            if a.download_timeout == 0 {
                v.error(
                    format!("{path}.attachments.download_timeout"),
                    "must be at least 1 second (or set enabled: false)",
                );
            }
            Some(AttachmentLimits {
                max_bytes: max_bytes(limit),
                download_timeout: Duration::from_secs(a.download_timeout),
            })
        }
        None => Some(AttachmentLimits {
            max_bytes: max_bytes(MaxFileSize::default()),
            download_timeout: Duration::from_secs(default_download_timeout()),
        }),
    };
    if raw.action_timeout_secs == 0 {
        v.error(format!("{path}.action_timeout_secs"), "must be at least 1");
    }
    if raw.heartbeat_timeout_secs == Some(0) {
        v.error(
            format!("{path}.heartbeat_timeout_secs"),
            "must be at least 1",
        );
    }
    let mode = mode?;
    Some(ConnectorConfig {
        name: raw.name,
        users,
        require_mention: raw.require_mention,
        kind: ConnectorKind::Platform(PlatformSettings::new(
            super::TYPE,
            OneBotConfig {
                mode,
                access_token,
                require_mention: raw.require_mention,
                group_whitelist: raw.group_whitelist.into_iter().collect(),
                user_whitelist: raw.user_whitelist.into_iter().collect(),
                max_message_length: raw.max_message_length,
                forward_threshold: raw.forward_threshold,
                rate_limit,
                group_context,
                attachments,
                action_timeout: Duration::from_secs(raw.action_timeout_secs),
                heartbeat_timeout: raw.heartbeat_timeout_secs.map(Duration::from_secs),
            },
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(section: &str) -> Result<OneBotConfig, Vec<String>> {
        let yaml = format!(
            r#"
connectors:
  - {section}
default_agent: a
agents:
  a: {{type: claude, command: claude, working_directory: /tmp}}
watchers:
  - {{name: w, connector: qq, room: "*", agent: a}}
"#
        );
        match crate::config::parse(Path::new("/tmp/config.yaml"), &yaml, crate::TYPES) {
            Ok(c) => match c.connectors[0].kind.settings::<OneBotConfig>() {
                Some(o) => Ok(o.clone()),
                None => panic!("{:?}", c.connectors[0].kind),
            },
            Err(e) => Err(e.issues.iter().map(|i| i.to_string()).collect()),
        }
    }

    #[test]
    fn defaults_for_a_minimal_reverse_section() {
        let c = config(r#"{name: qq, type: onebot, listen: "127.0.0.1:8765"}"#).unwrap();
        assert_eq!(
            c.mode,
            Mode::Listen {
                addr: "127.0.0.1:8765".parse().unwrap(),
                path: DEFAULT_PATH.into()
            }
        );
        assert_eq!(c.access_token, None);
        assert!(c.require_mention);
        assert_eq!((c.max_message_length, c.forward_threshold), (4000, 12000));
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                messages: 20,
                window: Duration::from_secs(60)
            })
        );
        assert_eq!(c.group_context, None);
        assert_eq!(c.attachments.as_ref().unwrap().max_bytes, 20 * 1024 * 1024);
        assert_eq!(c.action_timeout, Duration::from_secs(30));
        assert_eq!(c.heartbeat_timeout, None);
    }

    #[test]
    fn every_key_is_read() {
        let c = config(
            r#"{name: qq, type: onebot, url: "ws://127.0.0.1:3001", access_token: t, require_mention: false,
                group_whitelist: [1, 2], user_whitelist: [3], max_message_length: 500, forward_threshold: 2000,
                rate_limit: {messages: 0}, group_context: {max_messages: 5, max_chars: 900},
                attachments: {enabled: false}, action_timeout_secs: 5, heartbeat_timeout_secs: 90}"#,
        )
        .unwrap();
        assert_eq!(
            c.mode,
            Mode::Connect {
                url: "ws://127.0.0.1:3001".into()
            }
        );
        assert_eq!(c.access_token.as_deref(), Some("t"));
        assert!(!c.require_mention);
        assert_eq!(c.group_whitelist.len(), 2);
        assert!(c.user_whitelist.contains(&3));
        assert_eq!(c.rate_limit, None);
        assert_eq!(
            c.group_context,
            Some(GroupContext {
                max_messages: 5,
                max_chars: 900,
                scan_limit: 200
            })
        );
        assert_eq!(c.attachments, None);
        assert_eq!(c.action_timeout, Duration::from_secs(5));
        assert_eq!(c.heartbeat_timeout, Some(Duration::from_secs(90)));
    }

    #[test]
    fn problems_are_reported_together() {
        let errs = config(
            r#"{name: qq, type: onebot, listen: "0.0.0.0:8765", max_message_length: 10, forward_threshold: 5,
                rate_limit: {messages: 3, window_secs: 0}, colour: red}"#,
        )
        .unwrap_err();
        assert!(errs.iter().any(|e| e.contains("colour")), "{errs:?}");
        let errs = config(
            r#"{name: qq, type: onebot, listen: "0.0.0.0:8765", max_message_length: 10, forward_threshold: 5,
                rate_limit: {messages: 3, window_secs: 0}}"#,
        )
        .unwrap_err();
        let all = errs.join("\n");
        assert!(
            all.contains("access_token: required when 'listen' is not a loopback"),
            "{all}"
        );
        assert!(
            all.contains("max_message_length (line 3): must be at least 100"),
            "{all}"
        );
        assert!(all.contains("forward_threshold"), "{all}");
        assert!(all.contains("rate_limit.window_secs"), "{all}");

        let both = config(r#"{name: qq, type: onebot, listen: "127.0.0.1:1", url: "ws://x"}"#)
            .unwrap_err();
        assert!(both.join("\n").contains("not both"), "{both:?}");
        let neither = config(r#"{name: qq, type: onebot}"#).unwrap_err();
        assert!(neither.join("\n").contains("listen"), "{neither:?}");
        let tls = config(r#"{name: qq, type: onebot, url: "wss://x"}"#).unwrap_err();
        assert!(
            tls.join("\n").contains("wss:// is not supported"),
            "{tls:?}"
        );
        let addr = config(r#"{name: qq, type: onebot, listen: "localhost"}"#).unwrap_err();
        assert!(addr.join("\n").contains("not an address:port"), "{addr:?}");
    }
}
