//! Mattermost wire shapes: WebSocket frames (events and action replies) and the API v4 types
//! the connector reads (`Post`, `PostList`, `User`, `Channel`, `FileInfo`), after
//! `server/public/model/{post,websocket_message,user,channel,file_info}.go` and the OpenAPI
//! spec (`api/v4/source/posts.yaml`). Only this file derives serde for Mattermost.
//!
//! Quirk: the `posted` and `post_edited` events carry the post as a JSON *string* in
//! `data.post`, and `posted` carries the mentioned user ids as another JSON string in
//! `data.mentions` (absent when nobody is mentioned).

use serde::Deserialize;
use serde_json::Value;

/// A server → client WebSocket frame. Unknown shapes are kept as values (logged, skipped).
#[derive(Debug)]
pub enum WsFrame {
    Event(WsEvent),
    /// The answer to an action we sent (`authentication_challenge`, `ping`, `user_typing`).
    Reply {
        seq_reply: u64,
        ok: bool,
        error: Option<Value>,
    },
    Other(Value),
}

#[derive(Debug, Deserialize)]
pub struct WsEvent {
    pub event: String,
    #[serde(default)]
    pub data: serde_json::Map<String, Value>,
}

impl WsFrame {
    pub fn parse(text: &str) -> Result<WsFrame, serde_json::Error> {
        let v: Value = serde_json::from_str(text)?;
        if v.get("event").and_then(Value::as_str).is_some() {
            return Ok(WsFrame::Event(serde_json::from_value(v)?));
        }
        if let Some(seq_reply) = v.get("seq_reply").and_then(Value::as_u64) {
            let ok = v.get("status").and_then(Value::as_str) == Some("OK");
            return Ok(WsFrame::Reply {
                seq_reply,
                ok,
                error: v.get("error").filter(|e| !e.is_null()).cloned(),
            });
        }
        Ok(WsFrame::Other(v))
    }
}

impl WsEvent {
    fn str_field(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }

    /// The post of a `posted` / `post_edited` event (a JSON string inside the JSON).
    pub fn post(&self) -> Option<Result<Post, serde_json::Error>> {
        self.str_field("post").map(serde_json::from_str)
    }

    /// `O` open, `P` private, `D` direct, `G` group message.
    pub fn channel_type(&self) -> Option<&str> {
        self.str_field("channel_type")
    }

    pub fn channel_name(&self) -> Option<&str> {
        self.str_field("channel_name")
    }

    /// The user ids the server found mentioned (`data.mentions`, a JSON string array).
    pub fn mentions(&self) -> Vec<String> {
        self.str_field("mentions")
            .and_then(|m| serde_json::from_str::<Vec<String>>(m).ok())
            .unwrap_or_default()
    }
}

/// Short text for an `AppError` (`{"id":…, "message":…, "status_code":…}`).
pub fn app_error_text(e: &Value) -> String {
    e.get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .or_else(|| e.get("id").and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// The parts of `model.Post` the gateway reads.
#[derive(Clone, Debug, Deserialize)]
pub struct Post {
    pub id: String,
    pub create_at: u64,
    /// When it was last edited (0 = never).
    #[serde(default)]
    pub edit_at: u64,
    #[serde(default)]
    pub delete_at: u64,
    pub user_id: String,
    pub channel_id: String,
    /// The thread's root post; empty for a top-level post.
    #[serde(default)]
    pub root_id: String,
    #[serde(default)]
    pub message: String,
    /// System post type (`system_join_channel`, …); empty for a user's post.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub file_ids: Vec<String>,
    #[serde(default)]
    pub metadata: Option<PostMetadata>,
}

impl Post {
    pub fn thread(&self) -> Option<&str> {
        Some(self.root_id.as_str()).filter(|r| !r.is_empty())
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PostMetadata {
    #[serde(default)]
    pub files: Vec<FileInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FileInfo {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub size: Option<u64>,
}

/// `GET /channels/{id}/posts`: ids in `order` (newest first), posts by id.
#[derive(Debug, Default, Deserialize)]
pub struct PostList {
    #[serde(default)]
    pub order: Vec<String>,
    #[serde(default)]
    pub posts: std::collections::HashMap<String, Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    #[serde(default)]
    pub nickname: String,
}

impl User {
    /// "First Last", else the nickname, else the username.
    pub fn display_name(&self) -> String {
        let full = format!("{} {}", self.first_name, self.last_name);
        let full = full.trim();
        if !full.is_empty() {
            full.to_string()
        } else if !self.nickname.is_empty() {
            self.nickname.clone()
        } else {
            self.username.clone()
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `O` open, `P` private, `D` direct, `G` group message.
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
pub struct Team {
    pub id: String,
}

/// `POST /files`.
#[derive(Debug, Deserialize)]
pub struct FileUploadResponse {
    #[serde(default)]
    pub file_infos: Vec<FileInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames in the shapes a Mattermost server sends (tests/fixtures/mattermost/
    /// ws_frames.jsonl): each parses to its kind, and every post in them parses.
    #[test]
    fn fixture_frames_parse_to_their_kinds() {
        let fixture = include_str!("../../../tests/fixtures/mattermost/ws_frames.jsonl");
        let mut posts = 0;
        for line in fixture.lines().filter(|l| !l.trim().is_empty()) {
            let case: Value = serde_json::from_str(line).unwrap();
            let frame = WsFrame::parse(&case["frame"].to_string()).unwrap();
            let kind = match &frame {
                WsFrame::Event(e) => e.event.clone(),
                WsFrame::Reply { ok: true, .. } => "reply_ok".into(),
                WsFrame::Reply { ok: false, .. } => "reply_err".into(),
                WsFrame::Other(_) => "other".into(),
            };
            assert_eq!(kind, case["kind"], "{line}");
            if let WsFrame::Event(e) = &frame {
                if let Some(post) = e.post() {
                    let post = post.unwrap();
                    assert!(post.create_at > 0 && !post.user_id.is_empty(), "{line}");
                    posts += 1;
                }
            }
        }
        assert_eq!(posts, 3);
    }

    #[test]
    fn posted_event_carries_post_and_mentions_as_strings() {
        let frame = WsFrame::parse(r#"{"event":"posted","data":{"channel_type":"O","channel_name":"town-square","mentions":"[\"botid\"]","post":"{\"id\":\"p1\",\"create_at\":5,\"user_id\":\"u1\",\"channel_id\":\"c1\",\"root_id\":\"r1\",\"message\":\"@bot hi\",\"type\":\"\"}","sender_name":"@alice"},"broadcast":{"channel_id":"c1"},"seq":4}"#).unwrap();
        let WsFrame::Event(e) = frame else { panic!() };
        assert_eq!(e.mentions(), ["botid"]);
        assert_eq!(e.channel_type(), Some("O"));
        let p = e.post().unwrap().unwrap();
        assert_eq!((p.id.as_str(), p.thread()), ("p1", Some("r1")));
        let WsFrame::Reply { seq_reply, ok, error } =
            WsFrame::parse(r#"{"status":"FAIL","seq_reply":1,"error":{"id":"api.web_socket_router.not_authenticated.app_error","message":"","status_code":401}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((seq_reply, ok), (1, false));
        assert_eq!(
            app_error_text(&error.unwrap()),
            "api.web_socket_router.not_authenticated.app_error"
        );
    }
}
