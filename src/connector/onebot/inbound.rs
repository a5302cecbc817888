//! Message events → [`InboundMessage`]: own messages dropped, whitelists and watched rooms
//! applied, the room bound to the bot that serves it, `addressed` decided (DM; @ of the bot;
//! reply to one of the bot's messages, checked with `get_msg`), segments rendered to text
//! (leading reply/@bot removed, quotes and forwards expanded, unknown types as
//! `[unknown:type]`), the per-user rate limit applied, attachments downloaded and group
//! context prepended. Events are handled in order per room, by one task per room, apart
//! from the socket's reader (which must stay free to route the answers of the calls made
//! here).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::attach::Remote;
use super::config::OneBotConfig;
use super::wire::{ForwardData, GetMsgData, MessageEvent, Segment};
use super::{context, replay, Chat, Inner, Runtime};
use crate::connector::Acceptance;
use crate::model::{Attachment, InboundMessage, ReplyTarget, RoomRef, Sender, ThreadMessage};
use crate::ratelimit::Verdict;

/// Forwarded messages shown at most when a `forward` segment is expanded.
const FORWARD_NODES: usize = 50;

/// What a socket's event processor does next, in arrival order.
#[derive(Debug)]
pub enum Work {
    Event(Box<MessageEvent>),
    /// The bot (self id) just connected: catch up on what its rooms missed.
    Replay(i64),
}

/// Events waiting in one room's queue.
const ROOM_QUEUE: usize = 256;

/// Routes a socket's work to one task per room: events of a room are handled in order, and
/// rooms proceed independently, so a slow download or `get_msg` in one room never holds up
/// another (an owner's `approve` elsewhere, say). Room tasks end with the socket.
pub async fn process(inner: Arc<Inner>, mut work: mpsc::Receiver<Work>, cancel: CancellationToken) {
    let mut rooms: HashMap<String, mpsc::Sender<MessageEvent>> = HashMap::new();
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return,
            w = work.recv() => match w {
                Some(w) => w,
                None => return,
            },
        };
        let events = match item {
            Work::Event(event) => vec![*event],
            Work::Replay(self_id) => {
                let Some(rt) = inner.runtime.get() else {
                    continue;
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    missed = replay::missed(&inner, rt, self_id) => missed,
                }
            }
        };
        let Some(rt) = inner.runtime.get() else {
            continue;
        };
        for event in events {
            // Cheap checks here, in arrival order, so no task is made for a room we ignore.
            let key = match admit(&inner.cfg, rt.watch_all, &rt.watched, &event) {
                Ok(chat) => chat.room_id(),
                Err(why) => {
                    tracing::debug!(connector = %inner.name, message = event.message_id, why, "message ignored");
                    continue;
                }
            };
            let tx = rooms.entry(key).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(ROOM_QUEUE);
                tokio::spawn(room_loop(inner.clone(), rx, cancel.clone()));
                tx
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = tx.send(event) => if sent.is_err() {
                    tracing::error!(connector = %inner.name, "room task gone; message dropped");
                },
            }
        }
    }
}

async fn room_loop(
    inner: Arc<Inner>,
    mut events: mpsc::Receiver<MessageEvent>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = events.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        handle(&inner, event, &cancel).await;
    }
}

/// Whether a message event concerns the gateway at all: not the bot's own, a private or group
/// message, inside the whitelists, in a watched room. `Err` says why not (for the log).
pub fn admit(
    cfg: &OneBotConfig,
    watch_all: bool,
    watched: &HashSet<String>,
    ev: &MessageEvent,
) -> Result<Chat, &'static str> {
    if ev.user_id == ev.self_id || ev.user_id == 0 {
        return Err("own message");
    }
    let chat = room_of(ev).ok_or("not a private or group message")?;
    if let Chat::Group(gid) = chat {
        if !cfg.group_whitelist.is_empty() && !cfg.group_whitelist.contains(&gid) {
            return Err("group not in group_whitelist");
        }
    }
    if !cfg.user_whitelist.is_empty() && !cfg.user_whitelist.contains(&ev.user_id) {
        return Err("sender not in user_whitelist");
    }
    if !watch_all && !watched.contains(&chat.room_id()) {
        return Err("room not watched");
    }
    Ok(chat)
}

/// The room a message event belongs to, if it is a private or group message.
fn room_of(ev: &MessageEvent) -> Option<Chat> {
    match (ev.message_type.as_str(), ev.group_id) {
        ("private", _) => Some(Chat::Private(ev.user_id)),
        ("group", Some(gid)) => Some(Chat::Group(gid)),
        _ => None,
    }
}

/// Prepares a message event (quotes, chains, files, context) and delivers it. Preparing
/// stops with the connector; a delivered message's verdict is awaited even while stopping (as
/// the other connectors do): dropped, it would leave an accepted message unsettled, delivered
/// again after a restart.
async fn handle(inner: &Inner, ev: MessageEvent, cancel: &CancellationToken) {
    let Some(rt) = inner.runtime.get() else {
        return;
    };
    let (time, id) = (ev.time, ev.message_id);
    let message = tokio::select! {
        m = prepare(inner, ev) => m,
        _ = cancel.cancelled() => return,
    };
    let Some(message) = message else {
        return;
    };
    let room_id = message.room.id.clone();
    let verdict = rt.events.deliver(message).await;
    if verdict.is_settled() {
        replay::record(rt, &room_id, time, id);
    }
    match &verdict {
        Acceptance::Queued | Acceptance::Handled => {
            tracing::debug!(connector = %inner.name, room = %room_id, message = id, ?verdict, "delivered")
        }
        Acceptance::Ignored(why) => {
            tracing::debug!(connector = %inner.name, room = %room_id, message = id, why, "not taken")
        }
        // The dispatcher has told the sender. Not recorded as settled: a replay after a
        // reconnect may offer it again.
        Acceptance::Rejected(why) => {
            tracing::warn!(connector = %inner.name, room = %room_id, message = id, why, "message rejected")
        }
    }
}

/// The neutral message for an admitted event; `None` when it is not delivered (another bot's
/// room, already settled, rate limited).
async fn prepare(inner: &Inner, ev: MessageEvent) -> Option<InboundMessage> {
    let rt = inner.runtime.get()?;
    let self_id = ev.self_id;
    // Admitted by `process` already; this cannot fail.
    let chat = room_of(&ev)?;
    let room_id = chat.room_id();
    let cfg = &inner.cfg;
    if !claim_room(inner, &room_id, self_id) {
        return None;
    }
    if replay::already_settled(rt, &room_id, ev.message_id) {
        tracing::debug!(connector = %inner.name, room = %room_id, message = ev.message_id, "already delivered");
        return None;
    }

    let segments = ev
        .message
        .as_ref()
        .map(|m| m.segments())
        .or_else(|| ev.raw_message.as_deref().map(super::cq::parse))
        .unwrap_or_default();
    let reply_to = segments
        .iter()
        .find(|s| s.kind == "reply")
        .and_then(|s| s.get("id"))
        .and_then(|id| id.parse::<i64>().ok());
    let quoted = match reply_to {
        Some(id) => fetch_quoted(inner, self_id, chat, id).await,
        None => None,
    };
    // In a group, a reply belongs to the chain of the message it quotes (QQ's threads); a
    // private chat is one conversation, with no threads.
    let root = match (chat, reply_to) {
        (Chat::Group(_), Some(id)) => {
            Some(chain_root(inner, self_id, chat, id, quoted.as_ref()).await)
        }
        _ => None,
    };
    let direct = matches!(chat, Chat::Private(_));
    let mentioned = segments
        .iter()
        .any(|s| s.kind == "at" && s.get("qq").as_deref() == Some(&self_id.to_string()));
    let replied_to_bot = match (reply_to, &quoted) {
        (Some(id), _) if inner.is_own(self_id, id) => true,
        (_, Some(q)) => q.sender_id == self_id,
        _ => false,
    };
    let addressed = direct || mentioned || replied_to_bot;
    // Whether this message can start a turn: only then is it worth downloads and a slot of the
    // sender's rate limit.
    let triggers = addressed || !cfg.require_mention;
    let sender = Sender {
        id: ev.user_id.to_string(),
        username: ev.user_id.to_string(),
        display_name: ev.sender.display_name(ev.user_id),
    };
    let room = RoomRef {
        id: room_id.clone(),
        name: match chat {
            Chat::Private(_) => format!("{} ({})", sender.display_name, ev.user_id),
            Chat::Group(_) => room_id.clone(),
        },
        kind: super::room_ref(chat).kind,
    };

    // Approval commands are never rate limited: an owner answering a permission prompt must
    // not be told to wait while a turn hangs on that answer.
    let approval = looks_like_approval(&render_plain(&segments, self_id, true).text);
    if triggers && !approval && rate_limited(inner, rt, &ev, &room_id, &sender, direct).await {
        return None;
    }

    let mut rendered = render(inner, self_id, &segments, true).await;
    let ts = if ev.time > 0 {
        crate::model::from_epoch_ms(ev.time as u64 * 1000)
    } else {
        SystemTime::now()
    };
    // A private message is only placed in its room (private chats have no chains): a quote
    // of it is then known to belong here.
    if let Chat::Private(_) = chat {
        inner
            .chains()
            .record(&room_id, ev.message_id, ev.message_id, None);
    }
    if let Chat::Group(_) = chat {
        inner.chains().record(
            &room_id,
            ev.message_id,
            root.unwrap_or(ev.message_id),
            Some(ThreadMessage {
                id: ev.message_id.to_string(),
                sender: sender.clone(),
                text: rendered.text.clone(),
                ts,
                own: false,
            }),
        );
    }
    // A reply that is a room command (`!stop` answering the bot's message) or an approval
    // (`approve a3k9` answering its prompt) stays one: a quote or context block before it
    // would hide it, and neither needs context.
    let command = approval
        || rendered
            .text
            .trim_start()
            .strip_prefix(['!', '/'])
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphabetic()));
    if let Some(q) = quoted.as_ref().filter(|_| !command) {
        rendered.text = format!(
            "[Quoted message from {}]\n{}\n[End of quote]\n{}",
            q.sender_name, q.text, rendered.text
        );
    }
    let (attachments, notes) = if triggers && !rendered.files.is_empty() {
        download_all(inner, rt, ev.message_id, &room_id, &rendered.files).await
    } else {
        (Vec::new(), Vec::new())
    };
    let mut text = rendered.text;
    if addressed && !command {
        if let (Chat::Group(gid), Some(gc)) = (chat, &cfg.group_context) {
            if let Some(block) = context::group_context(inner, rt, self_id, gid, &ev, gc).await {
                text = format!("{block}\n\n{text}");
            }
        }
    }
    let message = InboundMessage {
        connector: inner.name.clone(),
        room,
        id: ev.message_id.to_string(),
        thread: root.map(|r| r.to_string()),
        sender,
        text,
        addressed,
        attachments,
        notes,
        conversation: None,
        ts,
    };
    Some(message)
}

/// Applies the sender's rate limit; true when the message must not be delivered (the first
/// such message of a window gets a notice).
async fn rate_limited(
    inner: &Inner,
    rt: &Runtime,
    ev: &MessageEvent,
    room_id: &str,
    sender: &Sender,
    direct: bool,
) -> bool {
    let Some(limiter) = &inner.limiter else {
        return false;
    };
    let Verdict::Limited {
        notify,
        retry_after,
    } = limiter.check(ev.user_id, Instant::now())
    else {
        return false;
    };
    tracing::info!(connector = %inner.name, room = room_id, user = ev.user_id, notify, "rate limited");
    if notify {
        let to = ReplyTarget {
            room: room_id.to_string(),
            thread: None,
            reply_to: Some(ev.message_id.to_string()),
            mention: (!direct).then(|| sender.clone()),
        };
        let text = format!(
            "You are sending messages faster than I can take them. Please wait about {} s; messages until then are not processed.",
            retry_after.as_secs().max(1)
        );
        if let Err(e) = inner.post(&to, &text).await {
            tracing::warn!(connector = %inner.name, room = room_id, error = %e, "could not send the rate-limit notice");
        }
    }
    // Settled (refused with a notice): a replay after a reconnect must not revive it.
    replay::record(rt, room_id, ev.time, ev.message_id);
    true
}

/// Downloads a message's files; what could not be downloaded becomes a note for the agent.
async fn download_all(
    inner: &Inner,
    rt: &Runtime,
    message_id: i64,
    room_id: &str,
    files: &[Remote],
) -> (Vec<Attachment>, Vec<String>) {
    let mut attachments = Vec::new();
    let mut notes = Vec::new();
    let Some(limits) = &inner.cfg.attachments else {
        notes.push("Attachments are not downloaded on this connector.".into());
        return (attachments, notes);
    };
    for (i, remote) in files.iter().enumerate() {
        let prefix = format!("{message_id}-{i}");
        match inner
            .downloader
            .fetch(remote, &rt.attachments_dir, &prefix, limits)
            .await
        {
            Ok(a) => attachments.push(a),
            Err(e) => {
                tracing::warn!(connector = %inner.name, room = room_id, file = %remote.name, error = %e, "attachment skipped");
                notes.push(format!(
                    "Attachment '{}' was not downloaded: {e}",
                    remote.name
                ));
            }
        }
    }
    (attachments, notes)
}

/// Binds a room to the bot that serves it. A second bot in the same room stays quiet while
/// the first is connected (its copy of the message is a duplicate).
fn claim_room(inner: &Inner, room_id: &str, self_id: i64) -> bool {
    let mut rooms = inner.room_bot();
    match rooms.get(room_id) {
        Some(owner) if *owner == self_id => true,
        Some(owner) if inner.bots.get(*owner).is_some() => {
            tracing::debug!(connector = %inner.name, room = room_id, owner, self_id, "room served by another bot");
            false
        }
        _ => {
            rooms.insert(room_id.to_string(), self_id);
            true
        }
    }
}

pub struct Quoted {
    pub sender_id: i64,
    pub sender_name: String,
    pub text: String,
    /// The message it quotes in turn, if any.
    pub reply_to: Option<i64>,
    /// When it was sent (seconds since the epoch; 0 when not said).
    pub time: i64,
}

/// Longest reply chain walked up with `get_msg` to find its root.
const MAX_CHAIN_WALK: usize = 8;

/// The root of the reply chain that message `quoted_id` is in: remembered, or found by
/// walking up the quotes with `get_msg` (`first` is `quoted_id`'s own, already fetched). A
/// walk that cannot go on (a message that cannot be read in this room, a very long chain)
/// roots the chain where it stopped.
async fn chain_root(
    inner: &Inner,
    self_id: i64,
    chat: Chat,
    quoted_id: i64,
    first: Option<&Quoted>,
) -> i64 {
    // A quote that could not be read is not read again.
    let Some(first) = first else {
        return inner.chains().root_of(quoted_id).unwrap_or(quoted_id);
    };
    let mut id = quoted_id;
    let mut known_parent = Some(first.reply_to);
    let mut walked = Vec::new();
    let root = loop {
        if let Some(root) = inner.chains().root_of(id) {
            break root;
        }
        let parent = match known_parent.take() {
            Some(parent) => parent,
            None => match fetch_quoted(inner, self_id, chat, id).await {
                Some(q) => q.reply_to,
                None => break id,
            },
        };
        walked.push(id);
        match parent {
            Some(parent) if walked.len() < MAX_CHAIN_WALK => id = parent,
            Some(parent) => break parent,
            None => break id,
        }
    };
    // Remembered, so the next reply to any of them walks no further.
    let room = chat.room_id();
    let mut chains = inner.chains();
    for w in walked {
        chains.record(&room, w, root, None);
    }
    root
}

/// Message `message_id` as `get_msg` reads it, if it was said in `chat`: a reply segment is
/// only an id, and one naming another room's message (a forged or replayed segment) must not
/// bring that room's words here.
pub(super) async fn fetch_quoted(
    inner: &Inner,
    self_id: i64,
    chat: Chat,
    message_id: i64,
) -> Option<Quoted> {
    let room = chat.room_id();
    let known = inner.chains().room_of(message_id).map(|r| r == room);
    if known == Some(false) {
        tracing::warn!(connector = %inner.name, message_id, %room, "a reply quotes a message of another room; not shown");
        return None;
    }
    let link = inner.bots.get(self_id)?;
    let data = match link
        .call(
            "get_msg",
            json!({ "message_id": message_id }),
            inner.cfg.action_timeout,
        )
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(connector = %inner.name, message_id, error = %e, "get_msg for a quoted message failed");
            return None;
        }
    };
    let msg: GetMsgData = serde_json::from_value(data).ok()?;
    let sender_id = if msg.sender.user_id != 0 {
        msg.sender.user_id
    } else {
        msg.user_id
    };
    // Where the message was said: remembered, else what `get_msg` says. What cannot be
    // placed in this room is not shown (fail closed): a group message without `group_id`
    // that this connector never saw, a private message neither the peer's own nor the bot's
    // in this chat.
    let here = match known {
        Some(here) => here,
        None => match chat {
            Chat::Group(gid) => {
                msg.message_type != "private" && msg.group_id.is_some_and(|g| g == gid)
            }
            Chat::Private(peer) => msg.message_type != "group" && sender_id == peer,
        },
    };
    if !here {
        tracing::warn!(connector = %inner.name, message_id, room = %chat.room_id(), "a reply quotes a message that cannot be placed in this room; not shown");
        return None;
    }
    let segments = msg.message.map(|m| m.segments()).unwrap_or_default();
    let reply_to = segments
        .iter()
        .find(|s| s.kind == "reply")
        .and_then(|s| s.get("id"))
        .and_then(|id| id.parse::<i64>().ok());
    Some(Quoted {
        sender_id,
        sender_name: msg.sender.display_name(sender_id),
        text: render_plain(&segments, self_id, false).text,
        reply_to,
        time: msg.time,
    })
}

#[derive(Debug, Default)]
pub struct Rendered {
    pub text: String,
    pub files: Vec<Remote>,
}

/// Renders segments, expanding `forward` segments with `get_forward_msg` (one level).
async fn render(
    inner: &Inner,
    self_id: i64,
    segments: &[Segment],
    strip_leading: bool,
) -> Rendered {
    let mut out = render_plain(segments, self_id, strip_leading);
    for seg in segments.iter().filter(|s| s.kind == "forward") {
        let Some(id) = seg.get("id") else { continue };
        let Some(link) = inner.bots.get(self_id) else {
            continue;
        };
        let placeholder = format!("[forwarded messages {id}]");
        let data = link
            .call(
                "get_forward_msg",
                json!({ "id": id, "message_id": id }),
                inner.cfg.action_timeout,
            )
            .await;
        let expanded = match data.map(serde_json::from_value::<ForwardData>) {
            Ok(Ok(d)) => {
                let mut lines = vec![format!("[Forwarded messages ({})]", d.messages.len())];
                for node in d.messages.iter().take(FORWARD_NODES) {
                    let uid = if node.sender.user_id != 0 {
                        node.sender.user_id
                    } else {
                        node.user_id
                    };
                    let segs = node
                        .content
                        .as_ref()
                        .map(|c| c.segments())
                        .unwrap_or_default();
                    let r = render_plain(&segs, self_id, false);
                    out.files.extend(r.files);
                    lines.push(format!("{}: {}", node.sender.display_name(uid), r.text));
                }
                lines.push("[End of forwarded messages]".into());
                lines.join("\n")
            }
            Ok(Err(e)) => {
                tracing::warn!(connector = %inner.name, error = %e, "get_forward_msg answer not understood");
                continue;
            }
            Err(e) => {
                tracing::warn!(connector = %inner.name, error = %e, "get_forward_msg failed");
                continue;
            }
        };
        out.text = out.text.replacen(&placeholder, &expanded, 1);
    }
    out
}

/// Renders segments without network calls. With `strip_leading`, the leading `reply` and
/// `@bot` segments (and the whitespace after them) are dropped: they address the bot, they
/// are not part of what was said.
pub fn render_plain(segments: &[Segment], self_id: i64, strip_leading: bool) -> Rendered {
    let self_qq = self_id.to_string();
    let mut out = Rendered::default();
    let mut leading = strip_leading;
    for seg in segments {
        if leading {
            let is_self_at = seg.kind == "at" && seg.get("qq").as_deref() == Some(&self_qq);
            let is_blank =
                seg.kind == "text" && seg.get("text").unwrap_or_default().trim().is_empty();
            if seg.kind == "reply" || is_self_at || is_blank {
                continue;
            }
            leading = false;
        }
        let piece = match seg.kind.as_str() {
            "text" => seg.get("text").unwrap_or_default(),
            "at" => match seg.get("qq").as_deref() {
                Some("all") => "@all".to_string(),
                Some(q) if q == self_qq => "@bot".to_string(),
                Some(q) => match seg.get("name").filter(|n| !n.is_empty()) {
                    Some(name) => format!("@{name}({q})"),
                    None => format!("@{q}"),
                },
                None => "@?".to_string(),
            },
            // A reply segment that is not leading adds nothing: the quote is rendered apart.
            "reply" => String::new(),
            "face" => format!("[face:{}]", seg.get("id").unwrap_or_default()),
            "image" | "file" => {
                let name = ["name", "file"]
                    .iter()
                    .find_map(|k| {
                        seg.get(k)
                            .filter(|v| !v.is_empty() && !v.starts_with("base64://"))
                    })
                    .unwrap_or_else(|| format!("{}.bin", seg.kind));
                if let Some(url) = seg.get("url").filter(|u| !u.is_empty()) {
                    out.files.push(Remote {
                        name: name.clone(),
                        url,
                    });
                }
                format!(
                    "[{}: {}]",
                    seg.kind,
                    super::attach::sanitize_file_name(&name)
                )
            }
            "record" => "[voice message]".to_string(),
            "video" => "[video]".to_string(),
            "forward" => format!("[forwarded messages {}]", seg.get("id").unwrap_or_default()),
            other => format!("[unknown:{other}]"),
        };
        out.text.push_str(&piece);
    }
    if strip_leading {
        out.text = out.text.trim_start().to_string();
    }
    out
}

/// `approve <id>` / `deny <id>` (optionally `always`): the dispatcher's grammar, matched
/// loosely here only to exempt such messages from the rate limit.
fn looks_like_approval(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    matches!(words.len(), 2 | 3)
        && ["approve", "deny"].contains(&words[0].to_ascii_lowercase().as_str())
}

/// `[HH:MM]` (UTC) of an epoch second, for context lines.
pub fn hhmm(epoch_secs: i64) -> String {
    let secs_of_day = epoch_secs.rem_euclid(86_400);
    format!("{:02}:{:02}", secs_of_day / 3600, (secs_of_day % 3600) / 60)
}

/// Plain text of a history entry (for context lines).
pub fn history_text(value: &Value, self_id: i64) -> Option<(MessageEvent, String)> {
    let m: MessageEvent = serde_json::from_value(value.clone()).ok()?;
    let segments = m
        .message
        .as_ref()
        .map(|c| c.segments())
        .or_else(|| m.raw_message.as_deref().map(super::cq::parse))
        .unwrap_or_default();
    let text = render_plain(&segments, self_id, false).text;
    Some((m, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::onebot::cq;

    #[test]
    fn strips_leading_reply_and_at_bot_and_keeps_placeholders() {
        let segs = cq::parse("[CQ:reply,id=5][CQ:at,qq=10] hello [CQ:at,qq=22] [CQ:face,id=1][CQ:json,data=x][CQ:at,qq=all]");
        let r = render_plain(&segs, 10, true);
        assert_eq!(r.text, "hello @22 [face:1][unknown:json]@all");
    }

    #[test]
    fn images_become_downloads_with_safe_names() {
        let segs = vec![Segment::new(
            "image",
            &[
                ("file", json!("../../x.png")),
                ("url", json!("http://127.0.0.1/x.png")),
            ],
        )];
        let r = render_plain(&segs, 1, true);
        assert_eq!(r.text, "[image: x.png]");
        assert_eq!(
            r.files,
            vec![Remote {
                name: "../../x.png".into(),
                url: "http://127.0.0.1/x.png".into()
            }]
        );
    }

    #[test]
    fn admission_table() {
        let mut cfg = OneBotConfig::listening("127.0.0.1:1".parse().unwrap(), None);
        cfg.group_whitelist = [10, 20].into_iter().collect();
        cfg.user_whitelist = [7, 8].into_iter().collect();
        let watched: HashSet<String> = ["group:10".to_string(), "private:7".to_string()].into();
        let ev = |kind: &str, user: i64, group: Option<i64>| MessageEvent {
            self_id: 1,
            message_type: kind.into(),
            user_id: user,
            group_id: group,
            ..serde_json::from_value(json!({})).unwrap()
        };
        let cases: &[(MessageEvent, bool, Result<Chat, &str>)] = &[
            (ev("group", 7, Some(10)), false, Ok(Chat::Group(10))),
            (ev("private", 7, None), false, Ok(Chat::Private(7))),
            (ev("group", 1, Some(10)), false, Err("own message")),
            (ev("group", 0, Some(10)), false, Err("own message")),
            (
                ev("guild", 7, None),
                false,
                Err("not a private or group message"),
            ),
            (
                ev("group", 7, None),
                false,
                Err("not a private or group message"),
            ),
            (
                ev("group", 7, Some(30)),
                true,
                Err("group not in group_whitelist"),
            ),
            (
                ev("group", 9, Some(10)),
                true,
                Err("sender not in user_whitelist"),
            ),
            (
                ev("private", 9, None),
                true,
                Err("sender not in user_whitelist"),
            ),
            (ev("group", 8, Some(20)), false, Err("room not watched")),
            (ev("group", 8, Some(20)), true, Ok(Chat::Group(20))),
        ];
        for (event, watch_all, expected) in cases {
            assert_eq!(
                &admit(&cfg, *watch_all, &watched, event),
                expected,
                "{event:?}"
            );
        }
    }

    #[test]
    fn approval_commands_are_recognised() {
        assert!(looks_like_approval("approve a3k9"));
        assert!(looks_like_approval("Deny a3k9"));
        assert!(looks_like_approval("approve a3k9 always"));
        assert!(!looks_like_approval("approve"));
        assert!(!looks_like_approval("please approve this now"));
    }

    #[test]
    fn hhmm_formats_utc() {
        assert_eq!(hhmm(1_747_792_703), "01:58");
    }
}
