//! From a Matrix room event to the gateway's [`InboundMessage`]: which events never reach
//! the dispatcher (our own, edits, notices, anything but `m.room.message`), whether the bot
//! was addressed, the text without a leading mention or reply fallback, the thread, and the
//! file to fetch.
//!
//! Pure functions; no I/O. Dedup and the sync position live in `mod.rs` (they need state).

use std::sync::Arc;

use regex::Regex;

use super::wire::{MessageContent, RoomEvent};
use crate::model::{self, InboundMessage, RoomKind, RoomRef, Sender};

/// Who the bot is on this homeserver.
#[derive(Clone, Debug)]
pub struct BotIdentity {
    pub user_id: String,
    /// A leading mention (`@bot:server`, or the display name) with its separator.
    leading_mention: Regex,
    /// The display name as a word anywhere in a body.
    named: Option<Regex>,
}

impl BotIdentity {
    pub fn new(user_id: &str, display_name: Option<&str>) -> BotIdentity {
        let display_name = display_name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let mut names = vec![regex::escape(user_id)];
        if let Some(n) = &display_name {
            names.push(regex::escape(n));
        }
        let leading_mention = Regex::new(&format!(
            r"(?i)^\s*(?:{})(?:\s+|[:,\-]\s*|$)",
            names.join("|")
        ))
        .expect("escaped names make a valid regex");
        let named = display_name.as_ref().map(|n| {
            Regex::new(&format!(r"(?i)(?:^|\W){}(?:$|\W)", regex::escape(n)))
                .expect("an escaped name makes a valid regex")
        });
        BotIdentity {
            user_id: user_id.to_string(),
            leading_mention,
            named,
        }
    }

    /// Removes a leading mention of the bot, as clients write "Bot: do this" (the pill's
    /// text) or "@bot:server do this". Mentions later in the text are part of the sentence.
    pub fn strip_leading_mention(&self, text: &str) -> String {
        match self.leading_mention.find(text) {
            Some(m) => text[m.end()..].to_string(),
            None => text.to_string(),
        }
    }

    /// The body names the bot: its user id anywhere, or its display name as a word.
    pub fn named_in(&self, body: &str) -> bool {
        body.contains(&self.user_id) || self.named.as_ref().is_some_and(|r| r.is_match(body))
    }
}

/// Why an event never reaches the dispatcher.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    Own,
    /// Not an `m.room.message` (state, reactions, redactions, …).
    NotAMessage(String),
    /// An edit (`m.replace`) of an earlier message: the original was handled already.
    Edit,
    /// `m.notice` is how bots speak; answering one could make two bots loop forever.
    Notice,
    /// A redacted message (no content left).
    Redacted,
}

pub fn skip_reason(ev: &RoomEvent, content: &MessageContent, bot: &BotIdentity) -> Option<Skip> {
    if ev.sender == bot.user_id {
        return Some(Skip::Own);
    }
    if ev.kind != "m.room.message" {
        return Some(Skip::NotAMessage(ev.kind.clone()));
    }
    if rel_type(content) == Some("m.replace") {
        return Some(Skip::Edit);
    }
    match content.msgtype.as_str() {
        "" => Some(Skip::Redacted),
        "m.notice" => Some(Skip::Notice),
        _ => None,
    }
}

fn rel_type(c: &MessageContent) -> Option<&str> {
    c.relates_to.as_ref().and_then(|r| r.rel_type.as_deref())
}

/// The thread root of a message in a thread (`rel_type: m.thread`).
pub fn thread_of(c: &MessageContent) -> Option<String> {
    c.relates_to
        .as_ref()
        .filter(|r| r.rel_type.as_deref() == Some("m.thread"))
        .and_then(|r| r.event_id.clone())
}

/// The event a message replies to (`m.in_reply_to`; in a thread, a real reply only when not
/// the fallback every threaded message carries — the fallback points at the thread's last
/// event, which says nothing about who is addressed).
pub fn reply_to(c: &MessageContent) -> Option<String> {
    let rel = c.relates_to.as_ref()?;
    rel.in_reply_to.as_ref()?.event_id.clone()
}

/// Whether the bot was addressed: a DM, the intentional mentions naming it, or — for
/// clients that do not send `m.mentions` — its id or display name in the body.
pub fn is_addressed(c: &MessageContent, kind: RoomKind, bot: &BotIdentity) -> bool {
    if kind == RoomKind::Direct {
        return true;
    }
    match &c.mentions {
        // Spec 1.7: with `m.mentions`, the body's text is not a mention (a quoted name in a
        // reply fallback must not wake the bot).
        Some(m) => m.user_ids.iter().any(|u| u == &bot.user_id),
        None => bot.named_in(&strip_reply_fallback(&c.body)),
    }
}

/// Removes the `> <@user:server> quoted text` lines a reply's body starts with (the
/// rich-reply fallback of older clients), and the blank line after them.
pub fn strip_reply_fallback(body: &str) -> String {
    if !body.starts_with("> ") {
        return body.to_string();
    }
    let mut lines = body.lines().peekable();
    while lines.peek().is_some_and(|l| l.starts_with('>')) {
        lines.next();
    }
    if lines.peek().is_some_and(|l| l.trim().is_empty()) {
        lines.next();
    }
    lines.collect::<Vec<_>>().join("\n")
}

/// A file attached to a message (`m.file`, `m.image`, `m.audio`, `m.video`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub mxc: String,
    pub name: String,
    pub size: Option<u64>,
}

pub fn file_of(c: &MessageContent) -> Option<FileRef> {
    if !matches!(
        c.msgtype.as_str(),
        "m.file" | "m.image" | "m.audio" | "m.video"
    ) {
        return None;
    }
    let mxc = c.url.clone()?;
    let name = c
        .filename
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| c.body.clone());
    Some(FileRef {
        mxc,
        name,
        size: c.info.as_ref().and_then(|i| i.size),
    })
}

/// The content of an event's latest edit, as the server bundles it with the event (the full
/// replacing event since spec 1.7); `None` when it was never edited, the server bundles only
/// a reference, or the edit is not by the event's own sender (which the spec makes invalid,
/// and which would put someone else's words under the bot's name).
pub fn latest_edit(ev: &RoomEvent) -> Option<MessageContent> {
    let edit = &ev.unsigned["m.relations"]["m.replace"];
    if edit["sender"].as_str() != Some(ev.sender.as_str()) {
        return None;
    }
    let new = edit["content"].get("m.new_content")?;
    serde_json::from_value(new.clone()).ok()
}

/// The text of a message: for a file, its caption only (spec 1.10: `body` is a caption when
/// `filename` is set and differs).
/// The text of a message as the agent reads it: a caption, the body without its reply
/// fallback, an emote with its `*`.
pub fn text_of(c: &MessageContent) -> String {
    if file_of(c).is_some() {
        return match &c.filename {
            Some(f) if !f.is_empty() && f != &c.body => c.body.clone(),
            _ => String::new(),
        };
    }
    let body = strip_reply_fallback(&c.body);
    if c.msgtype == "m.emote" {
        format!("* {body}")
    } else {
        body
    }
}

/// Builds the neutral message (attachments and notes are filled in by the caller). The
/// sender's id and username are both the full user id: it is the one name a Matrix user
/// cannot change, so roles bind to it.
pub fn to_inbound(
    connector: &Arc<str>,
    room: &RoomRef,
    ev: &RoomEvent,
    c: &MessageContent,
    bot: &BotIdentity,
) -> InboundMessage {
    InboundMessage {
        connector: connector.clone(),
        room: room.clone(),
        id: ev.event_id.clone(),
        thread: thread_of(c),
        sender: Sender {
            id: ev.sender.clone(),
            username: ev.sender.clone(),
            display_name: ev.sender.clone(),
        },
        text: bot.strip_leading_mention(&text_of(c)),
        addressed: is_addressed(c, room.kind, bot),
        attachments: Vec::new(),
        notes: Vec::new(),
        conversation: None,
        ts: model::from_epoch_ms(ev.origin_server_ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn bot() -> BotIdentity {
        BotIdentity::new("@bot:localhost", Some("Gateway Bot"))
    }

    fn event(sender: &str, kind: &str, content: Value) -> (RoomEvent, MessageContent) {
        let ev: RoomEvent = serde_json::from_value(json!({
            "event_id": "$e1", "sender": sender, "type": kind,
            "origin_server_ts": 1700000000000u64, "content": content
        }))
        .unwrap();
        let c = serde_json::from_value(ev.content.clone()).unwrap_or_default();
        (ev, c)
    }

    fn text(body: &str) -> Value {
        json!({"msgtype": "m.text", "body": body})
    }

    #[test]
    fn an_events_latest_edit_is_the_bundled_replacement() {
        let (ev, _) = event("@bot:localhost", "m.room.message", text("partial"));
        assert!(latest_edit(&ev).is_none());
        let ev: RoomEvent = serde_json::from_value(json!({
            "event_id": "$e1", "sender": "@bot:localhost", "type": "m.room.message",
            "origin_server_ts": 1700000000000u64, "content": text("partial"),
            "unsigned": {"m.relations": {"m.replace": {
                "event_id": "$e2", "type": "m.room.message", "sender": "@bot:localhost",
                "content": {"msgtype": "m.text", "body": "* the whole answer",
                    "m.new_content": text("the whole answer"),
                    "m.relates_to": {"rel_type": "m.replace", "event_id": "$e1"}}}}}
        }))
        .unwrap();
        assert_eq!(text_of(&latest_edit(&ev).unwrap()), "the whole answer");
        // An edit by someone else is no edit.
        let mut forged = ev.clone();
        forged.unsigned["m.relations"]["m.replace"]["sender"] = json!("@mallory:localhost");
        assert!(latest_edit(&forged).is_none());
        // A server that bundles only a reference leaves the original text.
        let ev: RoomEvent = serde_json::from_value(json!({
            "event_id": "$e1", "sender": "@bot:localhost", "type": "m.room.message",
            "content": text("partial"),
            "unsigned": {"m.relations": {"m.replace": {"event_id": "$e2"}}}
        }))
        .unwrap();
        assert!(latest_edit(&ev).is_none());
    }

    #[test]
    fn drops_own_events_edits_notices_and_non_messages() {
        let skip = |sender: &str, kind: &str, content: Value| {
            let (ev, c) = event(sender, kind, content);
            skip_reason(&ev, &c, &bot())
        };
        assert_eq!(
            skip("@bot:localhost", "m.room.message", text("x")),
            Some(Skip::Own)
        );
        assert_eq!(
            skip("@a:localhost", "m.reaction", json!({})),
            Some(Skip::NotAMessage("m.reaction".into()))
        );
        let edit = json!({"msgtype": "m.text", "body": "* x", "m.new_content": text("x"),
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$old"}});
        assert_eq!(
            skip("@a:localhost", "m.room.message", edit),
            Some(Skip::Edit)
        );
        let notice = json!({"msgtype": "m.notice", "body": "beep"});
        assert_eq!(
            skip("@a:localhost", "m.room.message", notice),
            Some(Skip::Notice)
        );
        assert_eq!(
            skip("@a:localhost", "m.room.message", json!({})),
            Some(Skip::Redacted)
        );
        assert_eq!(skip("@a:localhost", "m.room.message", text("hi")), None);
    }

    #[test]
    fn mention_matrix() {
        let group = RoomKind::Group;
        let addressed = |content: Value, kind| {
            let (_, c) = event("@a:localhost", "m.room.message", content);
            is_addressed(&c, kind, &bot())
        };
        assert!(!addressed(text("hello all"), group));
        assert!(addressed(text("hello all"), RoomKind::Direct));
        assert!(addressed(text("@bot:localhost hi"), group));
        assert!(addressed(text("gateway bot: hi"), group));
        assert!(!addressed(text("gateway botty: hi"), group));
        let intended = json!({"msgtype": "m.text", "body": "Gateway Bot: hi",
            "m.mentions": {"user_ids": ["@bot:localhost"]}});
        assert!(addressed(intended, group));
        // `m.mentions` present without the bot: the body's text does not count.
        let other = json!({"msgtype": "m.text", "body": "Gateway Bot said so",
            "m.mentions": {"user_ids": ["@c:localhost"]}});
        assert!(!addressed(other, group));
        let quoted = text("> <@bot:localhost> earlier answer\n\nthanks everyone");
        assert!(!addressed(quoted, group));
    }

    #[test]
    fn text_loses_the_leading_mention_and_the_reply_fallback() {
        for (body, want) in [
            ("@bot:localhost hello", "hello"),
            ("Gateway Bot: hello", "hello"),
            ("  @bot:localhost, hello", "hello"),
            ("hello @bot:localhost", "hello @bot:localhost"),
            ("@bot:localhostx hi", "@bot:localhostx hi"),
            (
                "> <@x:localhost> quoted\n> more\n\n@bot:localhost real",
                "real",
            ),
        ] {
            let (ev, c) = event("@a:localhost", "m.room.message", text(body));
            let room = RoomRef {
                id: "!r:localhost".into(),
                name: "#r:localhost".into(),
                kind: RoomKind::Group,
            };
            let m = to_inbound(&"mx".into(), &room, &ev, &c, &bot());
            assert_eq!(m.text, want, "{body}");
            assert_eq!(m.sender.id, "@a:localhost");
            assert_eq!(m.sender.username, "@a:localhost");
        }
    }

    #[test]
    fn threads_replies_and_files() {
        let (_, c) = event(
            "@a:localhost",
            "m.room.message",
            json!({
                "msgtype": "m.text", "body": "in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                                 "is_falling_back": true, "m.in_reply_to": {"event_id": "$last"}}
            }),
        );
        assert_eq!(thread_of(&c).as_deref(), Some("$root"));
        assert_eq!(reply_to(&c).as_deref(), Some("$last"));
        let (_, c) = event(
            "@a:localhost",
            "m.room.message",
            json!({
                "msgtype": "m.file", "body": "look at this", "filename": "report.pdf",
                "url": "mxc://localhost/abc", "info": {"size": 12, "mimetype": "application/pdf"}
            }),
        );
        let f = file_of(&c).unwrap();
        assert_eq!(
            (f.mxc.as_str(), f.name.as_str(), f.size),
            ("mxc://localhost/abc", "report.pdf", Some(12))
        );
        assert_eq!(text_of(&c), "look at this");
        let (_, c) = event(
            "@a:localhost",
            "m.room.message",
            json!({
                "msgtype": "m.image", "body": "cat.png", "url": "mxc://localhost/x"
            }),
        );
        assert_eq!(file_of(&c).unwrap().name, "cat.png");
        assert_eq!(text_of(&c), "");
    }
}
