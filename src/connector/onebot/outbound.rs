//! Replies out: quote + @ on the first part in groups, splitting on line and code-fence
//! boundaries, a merged-forward message for very long replies (falling back to plain parts),
//! images as `base64://` image segments and other files through `upload_*_file`.
//!
//! Every failed send is returned as an error (with NapCat's `message`/`wording` in the log);
//! nothing is swallowed. A send waits up to `action_timeout` for the room's bot to reconnect,
//! so a reply finished while NapCat reconnects still arrives.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::link::{ActionError, Link};
use super::wire::Segment;
use super::{Chat, Inner};
use crate::connector::ConnectorError;
use crate::model::{PostedMessage, ReplyTarget};
use crate::text::split_message;

/// Largest file `upload` sends (base64 in one WebSocket frame: NapCat handles tens of MB).
const MAX_UPLOAD_BYTES: u64 = 30 * 1024 * 1024;

/// Pause between the parts of a split reply: QQ's risk control punishes bursts, and NapCat
/// users add such a delay (openclaw-napcat README); it also keeps the parts in order.
const PART_DELAY: Duration = Duration::from_millis(300);

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "webp", "bmp"];

impl Inner {
    /// The link of the bot serving `room` (or any bot for a room no bot has seen yet).
    async fn link_for(&self, room: &str) -> Result<Arc<Link>, ConnectorError> {
        let owner = self.room_bot().get(room).copied();
        let wait = self.cfg.action_timeout;
        match owner {
            Some(id) => self
                .bots
                .wait_for(id, wait)
                .await
                .map_err(|e| self.action_error("send", e)),
            None => self.bots.wait_any(wait).await.ok_or_else(|| {
                ConnectorError::NotConnected(format!("{} (no QQ bot connected)", self.name))
            }),
        }
    }

    fn action_error(&self, action: &str, e: ActionError) -> ConnectorError {
        tracing::warn!(connector = %self.name, action, error = %e, "OneBot action failed");
        match e {
            ActionError::NotConnected(id) => {
                ConnectorError::NotConnected(format!("{} (bot {id})", self.name))
            }
            ActionError::Failed {
                action,
                retcode,
                detail,
                ..
            } => ConnectorError::Rejected {
                platform: "onebot",
                action,
                detail: format!("retcode {retcode}{detail}"),
            },
            ActionError::Timeout { action, secs } => ConnectorError::Other(format!(
                "QQ did not confirm {action} within {secs:.0}s (the message may still arrive)"
            )),
            ActionError::Closed { action } => ConnectorError::Other(format!(
                "the QQ connection closed during {action} (the message may or may not have arrived)"
            )),
        }
    }

    fn chat(room: &str) -> Result<Chat, ConnectorError> {
        Chat::parse(room).ok_or_else(|| ConnectorError::RoomNotFound(room.to_string()))
    }

    /// Sends segments to `to`'s room; returns the new message id (remembered as the bot's,
    /// and as part of `to`'s reply chain).
    async fn send_segments(
        &self,
        to: &ReplyTarget,
        segments: Vec<Segment>,
    ) -> Result<i64, ConnectorError> {
        let room = to.room.as_str();
        let chat = Self::chat(room)?;
        let link = self.link_for(room).await?;
        let (action, params) = match chat {
            Chat::Group(id) => (
                "send_group_msg",
                json!({ "group_id": id, "message": segments }),
            ),
            Chat::Private(id) => (
                "send_private_msg",
                json!({ "user_id": id, "message": segments }),
            ),
        };
        let data = link
            .call(action, params, self.cfg.action_timeout)
            .await
            .map_err(|e| self.action_error(action, e))?;
        let id = data
            .get("message_id")
            .and_then(super::wire::as_i64)
            .unwrap_or(0);
        if id != 0 {
            self.remember_own(link.self_id, id);
            self.remember_in_chain(to, id);
        }
        Ok(id)
    }

    /// A reply to a message of a chain (the thread is its root) continues the chain: a
    /// person answering the bot's message is in the same thread. Any other message of the
    /// bot roots its own, and is placed in its room either way (a quote of it is shown there).
    fn remember_in_chain(&self, to: &ReplyTarget, id: i64) {
        let root = to
            .thread
            .as_deref()
            .or(to.reply_to.as_deref())
            .and_then(|r| r.parse::<i64>().ok());
        let mut chains = self.chains();
        let root = match root {
            Some(root) => chains.root_of(root).unwrap_or(root),
            None => id,
        };
        chains.record(&to.room, id, root, None);
    }

    /// Quote and @ that start a reply, as `ReplyTarget` asks (the @ only in groups).
    fn reply_prefix(to: &ReplyTarget, chat: Chat) -> Vec<Segment> {
        let mut segs = Vec::new();
        if let Some(id) = to
            .reply_to
            .as_deref()
            .filter(|id| id.parse::<i64>().is_ok())
        {
            segs.push(Segment::reply(id));
        }
        if let (Chat::Group(_), Some(who)) = (chat, &to.mention) {
            if who.id.parse::<i64>().is_ok() {
                segs.push(Segment::at(&who.id));
                segs.push(Segment::text(" "));
            }
        }
        segs
    }

    pub(super) async fn post(
        &self,
        to: &ReplyTarget,
        text: &str,
    ) -> Result<PostedMessage, ConnectorError> {
        let chat = Self::chat(&to.room)?;
        let mut segs = Self::reply_prefix(to, chat);
        segs.push(Segment::text(text));
        let id = self.send_segments(to, segs).await?;
        Ok(PostedMessage { id: id.to_string() })
    }

    pub(super) async fn send_reply(
        &self,
        to: &ReplyTarget,
        text: &str,
    ) -> Result<(), ConnectorError> {
        let parts = split_message(text, self.cfg.max_message_length);
        if parts.len() > 1 && text.chars().count() > self.cfg.forward_threshold {
            match self.send_forward(to, &parts).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // NapCat's SsoSendLongMsg may time out and still deliver later (NapCat
                    // #1147); the plain parts are the lesser evil than no answer at all.
                    tracing::warn!(
                        connector = %self.name, room = %to.room, parts = parts.len(), error = %e,
                        "forward message failed; sending the reply as plain messages (it may appear twice if the forward arrives late)"
                    );
                }
            }
        }
        let rest = ReplyTarget {
            room: to.room.clone(),
            thread: to.thread.clone(),
            reply_to: None,
            mention: None,
        };
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(PART_DELAY).await;
            }
            self.post(if i == 0 { to } else { &rest }, part).await?;
        }
        Ok(())
    }

    async fn send_forward(&self, to: &ReplyTarget, parts: &[String]) -> Result<(), ConnectorError> {
        let chat = Self::chat(&to.room)?;
        let link = self.link_for(&to.room).await?;
        let nodes: Vec<Value> = parts
            .iter()
            .map(|p| {
                // go-cqhttp documents `name`/`uin`, NoneBot and NapCat's own types use
                // `nickname`/`user_id`: send both so every implementation finds its keys.
                json!({"type": "node", "data": {
                    "name": "Agent",
                    "uin": link.self_id.to_string(),
                    "nickname": "Agent",
                    "user_id": link.self_id.to_string(),
                    "content": [Segment::text(p)],
                }})
            })
            .collect();
        let (action, params) = match chat {
            Chat::Group(id) => (
                "send_group_forward_msg",
                json!({ "group_id": id, "messages": nodes }),
            ),
            Chat::Private(id) => (
                "send_private_forward_msg",
                json!({ "user_id": id, "messages": nodes }),
            ),
        };
        let data = link
            .call(action, params, self.cfg.action_timeout)
            .await
            .map_err(|e| self.action_error(action, e))?;
        if let Some(id) = data.get("message_id").and_then(super::wire::as_i64) {
            self.remember_own(link.self_id, id);
            self.remember_in_chain(to, id);
        }
        Ok(())
    }

    pub(super) async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        let chat = Self::chat(&to.room)?;
        let io = |source| ConnectorError::Attachment {
            path: path.to_path_buf(),
            source,
        };
        let meta = tokio::fs::metadata(path).await.map_err(io)?;
        if meta.len() > MAX_UPLOAD_BYTES {
            return Err(ConnectorError::Other(format!(
                "{} is {} MB; files over {} MB are not sent to QQ",
                path.display(),
                meta.len() / (1024 * 1024),
                MAX_UPLOAD_BYTES / (1024 * 1024)
            )));
        }
        let bytes = tokio::fs::read(path).await.map_err(io)?;
        let b64 = format!(
            "base64://{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image {
            let mut segs = Self::reply_prefix(to, chat);
            if let Some(c) = caption.filter(|c| !c.is_empty()) {
                segs.push(Segment::text(&format!("{c}\n")));
            }
            segs.push(Segment::new("image", &[("file", Value::from(b64))]));
            self.send_segments(to, segs).await?;
            return Ok(());
        }
        let link = self.link_for(&to.room).await?;
        // NapCat resolves `base64://` in upload_*_file like in image segments, so this works
        // when the implementation runs in another container.
        let (action, params) = match chat {
            Chat::Group(id) => (
                "upload_group_file",
                json!({ "group_id": id, "file": b64, "name": name }),
            ),
            Chat::Private(id) => (
                "upload_private_file",
                json!({ "user_id": id, "file": b64, "name": name }),
            ),
        };
        link.call(action, params, self.cfg.action_timeout)
            .await
            .map_err(|e| self.action_error(action, e))?;
        if let Some(c) = caption.filter(|c| !c.is_empty()) {
            self.post(to, c).await?;
        }
        Ok(())
    }
}
