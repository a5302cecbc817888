//! From a Rocket.Chat message document to the gateway's [`InboundMessage`]: which messages
//! are dropped before they reach the dispatcher (our own, system messages), whether the bot
//! was addressed, the text without the leading `@bot`, and the files to fetch.
//!
//! Pure functions; no I/O. The dedup and edit policy lives in `mod.rs` (it needs state).

use std::sync::Arc;

use regex::Regex;

use super::wire::WireMessage;
use crate::model::{self, InboundMessage, RoomKind, RoomRef, Sender};

/// Who the bot is on this server (from the login).
#[derive(Clone, Debug)]
pub struct BotIdentity {
    pub user_id: String,
    pub username: String,
    /// A leading `@bot` mention, compiled once per login.
    leading_mention: Regex,
}

impl BotIdentity {
    pub fn new(user_id: &str, username: &str) -> BotIdentity {
        BotIdentity {
            user_id: user_id.to_string(),
            username: username.to_string(),
            leading_mention: leading_mention_regex(username),
        }
    }

    /// Removes a leading `@bot` (with a following `:`/`,`/`-` and spaces), as people write
    /// "@bot: do this". Mentions elsewhere in the text stay: they are part of the sentence.
    /// `@botty` or `@bot.x` is someone else: the pattern needs a separator or the end.
    pub fn strip_leading_mention(&self, text: &str) -> String {
        match self.leading_mention.find(text) {
            Some(m) => text[m.end()..].to_string(),
            None => text.to_string(),
        }
    }
}

fn leading_mention_regex(username: &str) -> Regex {
    Regex::new(&format!(
        r"(?i)^\s*@{}(?:\s+|[:,\-]\s*|$)",
        regex::escape(username)
    ))
    .expect("escaped username makes a valid regex")
}

/// Why a message never reaches the dispatcher.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    Own,
    /// `t` is set: joins, leaves, topic changes, … (the Python gateway's D2).
    System(String),
}

pub fn skip_reason(m: &WireMessage, bot: &BotIdentity) -> Option<Skip> {
    if m.u.id == bot.user_id || m.u.username.as_deref() == Some(bot.username.as_str()) {
        return Some(Skip::Own);
    }
    if let Some(t) = m.t.as_deref().filter(|t| !t.is_empty()) {
        return Some(Skip::System(t.to_string()));
    }
    None
}

/// Whether the bot was addressed: a DM, the server's `mentions[]` naming the bot (by id or
/// username), or `@all`/`@here` when the connector is configured to answer those.
pub fn is_addressed(m: &WireMessage, kind: RoomKind, bot: &BotIdentity, mention_all: bool) -> bool {
    if kind == RoomKind::Direct {
        return true;
    }
    m.mentions.iter().any(|mention| {
        let name = mention.username.as_deref().unwrap_or(mention.id.as_str());
        mention.id == bot.user_id
            || name == bot.username
            || (mention_all && matches!(name, "all" | "here"))
    })
}

/// A file attached to a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub id: String,
    pub name: String,
    pub size: Option<u64>,
    /// Server-relative download path (`/file-upload/<id>/<name>`).
    pub link: String,
}

pub fn files_of(m: &WireMessage) -> Vec<FileRef> {
    let mut out: Vec<FileRef> = Vec::new();
    for f in m.files.iter().chain(m.file.iter()) {
        if f.id.is_empty() || out.iter().any(|o| o.id == f.id) {
            continue;
        }
        // Rocket.Chat adds image thumbnails as extra `files[]` entries (`typeGroup: thumb`,
        // name prefixed `thumb-`). Only the original is worth fetching.
        if f.type_group.as_deref() == Some("thumb")
            || (f.name.starts_with("thumb-") && m.files.len() > 1)
        {
            continue;
        }
        let name = if f.name.is_empty() {
            f.id.clone()
        } else {
            f.name.clone()
        };
        out.push(FileRef {
            link: format!(
                "/file-upload/{}/{}",
                percent_encode(&f.id),
                percent_encode(&name)
            ),
            id: f.id.clone(),
            name,
            size: f.size,
        });
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds the neutral message (attachments and notes are filled in by the caller).
pub fn to_inbound(
    connector: &Arc<str>,
    room: &RoomRef,
    m: &WireMessage,
    bot: &BotIdentity,
    mention_all: bool,
) -> InboundMessage {
    let mut text = bot.strip_leading_mention(&m.msg);
    if text.trim().is_empty() {
        // A pure upload carries its caption in the attachment description.
        if let Some(d) = m.attachments.iter().find_map(|a| a.description.clone()) {
            text = bot.strip_leading_mention(&d);
        }
    }
    InboundMessage {
        connector: connector.clone(),
        room: room.clone(),
        id: m.id.clone(),
        thread: m.tmid.clone(),
        sender: sender_of(m),
        text,
        addressed: is_addressed(m, room.kind, bot, mention_all),
        attachments: Vec::new(),
        notes: Vec::new(),
        conversation: None,
        ts: model::from_epoch_ms(m.ts.0),
    }
}

/// A message's author: the user id, the login name (the id when the server sent none) and
/// the display name.
pub fn sender_of(m: &WireMessage) -> Sender {
    let username = m.u.username.clone().unwrap_or_else(|| m.u.id.clone());
    Sender {
        id: m.u.id.clone(),
        display_name: m
            .u
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| username.clone()),
        username,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bot() -> BotIdentity {
        BotIdentity::new("botuid", "bot")
    }

    fn msg(v: serde_json::Value) -> WireMessage {
        let mut base = json!({"_id":"m1","rid":"GENERAL","msg":"hi","ts":{"$date":1},"u":{"_id":"u1","username":"alice"}});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn drops_own_and_system_messages() {
        assert_eq!(
            skip_reason(&msg(json!({"u":{"_id":"botuid","username":"bot"}})), &bot()),
            Some(Skip::Own)
        );
        assert_eq!(
            skip_reason(&msg(json!({"t":"uj"})), &bot()),
            Some(Skip::System("uj".into()))
        );
        assert_eq!(skip_reason(&msg(json!({})), &bot()), None);
    }

    #[test]
    fn mention_matrix() {
        let group = RoomKind::Group;
        let plain = msg(json!({}));
        let mentioned = msg(json!({"mentions":[{"_id":"botuid","username":"bot"}]}));
        let other = msg(json!({"mentions":[{"_id":"u9","username":"bob"}]}));
        let all = msg(json!({"mentions":[{"_id":"all","username":"all"}]}));
        let here = msg(json!({"mentions":[{"_id":"here"}]}));
        assert!(!is_addressed(&plain, group, &bot(), true));
        assert!(is_addressed(&mentioned, group, &bot(), false));
        assert!(!is_addressed(&other, group, &bot(), true));
        assert!(!is_addressed(&all, group, &bot(), false));
        assert!(is_addressed(&all, group, &bot(), true));
        assert!(is_addressed(&here, group, &bot(), true));
        assert!(is_addressed(&plain, RoomKind::Direct, &bot(), false));
    }

    #[test]
    fn strips_only_a_leading_bot_mention() {
        for (input, want) in [
            ("@bot hello", "hello"),
            ("  @bot: hello", "hello"),
            ("@Bot, hello", "hello"),
            ("@bot", ""),
            ("@botty hello", "@botty hello"),
            ("@bot.x hello", "@bot.x hello"),
            ("hello @bot", "hello @bot"),
        ] {
            assert_eq!(bot().strip_leading_mention(input), want, "{input}");
        }
    }

    #[test]
    fn files_and_caption() {
        let m = msg(
            json!({"msg":"","files":[{"_id":"f1","name":"a b.png","size":10},{"_id":"f2","name":"thumb-a b.png","size":2}],
            "attachments":[{"type":"file","title":"a b.png","description":"@bot look at this"}]}),
        );
        let files = files_of(&m);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].link, "/file-upload/f1/a%20b.png");
        let room = RoomRef {
            id: "GENERAL".into(),
            name: "#general".into(),
            kind: RoomKind::Group,
        };
        let inbound = to_inbound(&"rc".into(), &room, &m, &bot(), false);
        assert_eq!(inbound.text, "look at this");
    }
}
