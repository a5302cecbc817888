//! OneBot V11 wire types: frames on the socket (events, action calls, action responses) and
//! message segments. Only this file derives serde for OneBot; conversions into `model` types
//! are written by hand in `inbound.rs` and `outbound.rs`.
//!
//! Implementations disagree on small things (numbers sent as strings, `messages` vs
//! `message`, missing fields in history entries), so fields are lenient and defaulted.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One text frame, classified as the spec says: `post_type` → event, `echo` → response.
#[derive(Debug)]
pub enum Frame {
    Event(Event),
    Response(ActionResponse),
    /// Neither; logged at debug and dropped.
    Unknown(Value),
}

#[derive(Debug)]
pub enum Event {
    Heartbeat(Heartbeat),
    Lifecycle {
        self_id: i64,
        sub_type: String,
    },
    Message(MessageEvent),
    /// `message_sent` (NapCat `reportSelfMessage`), notices, requests, other meta events:
    /// ignored, kept for the debug log.
    Ignored {
        post_type: String,
        detail: String,
    },
}

#[derive(Debug, Deserialize)]
pub struct Heartbeat {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub self_id: i64,
    /// Milliseconds between heartbeats.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub interval: i64,
    #[serde(default)]
    pub status: Option<HeartbeatStatus>,
}

#[derive(Debug, Deserialize)]
pub struct HeartbeatStatus {
    #[serde(default)]
    pub online: Option<bool>,
    #[serde(default)]
    pub good: Option<bool>,
}

/// A message event, also the shape of `get_group_msg_history` entries.
#[derive(Clone, Debug, Deserialize)]
pub struct MessageEvent {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub self_id: i64,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub time: i64,
    #[serde(default)]
    pub message_type: String,
    #[serde(default)]
    pub sub_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub message_id: i64,
    /// NapCat's sequence number inside the conversation (what history paging takes).
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub message_seq: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub user_id: i64,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub group_id: Option<i64>,
    #[serde(default)]
    pub message: Option<MessageContent>,
    #[serde(default)]
    pub raw_message: Option<String>,
    #[serde(default)]
    pub sender: WireSender,
}

/// `message` is a segment array (`messagePostFormat: "array"`) or a CQ-code string.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Segments(Vec<Segment>),
    Text(String),
}

impl MessageContent {
    pub fn segments(&self) -> Vec<Segment> {
        match self {
            MessageContent::Segments(s) => s.clone(),
            MessageContent::Text(t) => super::cq::parse(t),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WireSender {
    #[serde(default, deserialize_with = "lenient_i64")]
    pub user_id: i64,
    #[serde(default)]
    pub nickname: Option<String>,
    /// Group nickname; empty when unset.
    #[serde(default)]
    pub card: Option<String>,
}

impl WireSender {
    /// The name a human would recognise: group card, then nickname, then the QQ number.
    pub fn display_name(&self, user_id: i64) -> String {
        [&self.card, &self.nickname]
            .into_iter()
            .flatten()
            .find(|s| !s.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| user_id.to_string())
    }
}

/// A message segment, kept generic (type + data) so unknown types survive and the same type
/// serves for sending.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Segment {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Map<String, Value>,
}

impl Segment {
    pub fn new(kind: &str, data: &[(&str, Value)]) -> Self {
        Segment {
            kind: kind.to_string(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    pub fn text(text: &str) -> Self {
        Segment::new("text", &[("text", Value::from(text))])
    }

    pub fn at(qq: &str) -> Self {
        Segment::new("at", &[("qq", Value::from(qq))])
    }

    pub fn reply(id: &str) -> Self {
        Segment::new("reply", &[("id", Value::from(id))])
    }

    /// A field as a string: implementations send ids both as strings and as numbers.
    pub fn get(&self, key: &str) -> Option<String> {
        match self.data.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ActionRequest<'a> {
    pub action: &'a str,
    pub params: &'a Value,
    pub echo: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct ActionResponse {
    #[serde(default)]
    pub status: String,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub retcode: i64,
    #[serde(default)]
    pub data: Value,
    /// NapCat: human-readable failure detail (often Chinese).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub wording: Option<String>,
    #[serde(default)]
    pub echo: Value,
}

/// `get_msg` answer: who sent a message (to detect replies to the bot) and what it said, and
/// where, when the implementation says (V11 has `message_type`; NapCat, Lagrange and
/// go-cqhttp add `group_id`).
#[derive(Debug, Deserialize)]
pub struct GetMsgData {
    #[serde(default)]
    pub sender: WireSender,
    #[serde(default)]
    pub message_type: String,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub group_id: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub user_id: i64,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub time: i64,
    #[serde(default)]
    pub message: Option<MessageContent>,
}

/// `get_group_msg_history` answer (NapCat #948: the field is `messages`).
#[derive(Debug, Default, Deserialize)]
pub struct HistoryData {
    #[serde(default, alias = "message")]
    pub messages: Vec<Value>,
}

/// `get_forward_msg` answer; some implementations say `message` instead of `messages`.
#[derive(Debug, Default, Deserialize)]
pub struct ForwardData {
    #[serde(default, alias = "message")]
    pub messages: Vec<ForwardNode>,
}

#[derive(Debug, Deserialize)]
pub struct ForwardNode {
    #[serde(default)]
    pub sender: WireSender,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub user_id: i64,
    #[serde(default, alias = "message")]
    pub content: Option<MessageContent>,
}

#[derive(Debug, Deserialize)]
pub struct LoginInfo {
    #[serde(deserialize_with = "lenient_i64")]
    pub user_id: i64,
}

/// Classifies and parses one text frame.
pub fn parse_frame(text: &str) -> Result<Frame, serde_json::Error> {
    let value: Value = serde_json::from_str(text)?;
    let Some(post_type) = value.get("post_type").and_then(Value::as_str) else {
        if value.get("echo").is_some() {
            return Ok(Frame::Response(serde_json::from_value(value)?));
        }
        return Ok(Frame::Unknown(value));
    };
    let post_type = post_type.to_string();
    let event = match post_type.as_str() {
        "meta_event" => match value.get("meta_event_type").and_then(Value::as_str) {
            Some("heartbeat") => Event::Heartbeat(serde_json::from_value(value)?),
            Some("lifecycle") => Event::Lifecycle {
                self_id: value.get("self_id").and_then(as_i64).unwrap_or(0),
                sub_type: value
                    .get("sub_type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            },
            other => Event::Ignored {
                post_type,
                detail: other.unwrap_or("?").to_string(),
            },
        },
        "message" => Event::Message(serde_json::from_value(value)?),
        _ => {
            let detail = ["notice_type", "request_type", "message_type"]
                .iter()
                .find_map(|k| value.get(*k).and_then(Value::as_str))
                .unwrap_or("?")
                .to_string();
            Event::Ignored { post_type, detail }
        }
    };
    Ok(Frame::Event(event))
}

/// A number or a numeric string as i64 (implementations differ).
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(lenient_opt_i64(d)?.unwrap_or(0))
}

fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(None),
        other => as_i64(&other)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_events_responses_and_noise() {
        let hb = r#"{"time":1,"self_id":"42","post_type":"meta_event","meta_event_type":"heartbeat","status":{"online":true,"good":true},"interval":30000}"#;
        match parse_frame(hb).unwrap() {
            Frame::Event(Event::Heartbeat(h)) => {
                assert_eq!((h.self_id, h.interval), (42, 30000));
            }
            other => panic!("{other:?}"),
        }
        let resp = r#"{"status":"failed","retcode":200,"data":null,"message":"timeout","wording":"超时","echo":"e1"}"#;
        match parse_frame(resp).unwrap() {
            Frame::Response(r) => {
                assert_eq!(r.retcode, 200);
                assert_eq!(r.message.as_deref(), Some("timeout"));
                assert_eq!(r.echo, Value::from("e1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_frame(r#"{"x":1}"#).unwrap(),
            Frame::Unknown(_)
        ));
        let notice = r#"{"post_type":"notice","notice_type":"group_recall","self_id":1}"#;
        match parse_frame(notice).unwrap() {
            Frame::Event(Event::Ignored { detail, .. }) => assert_eq!(detail, "group_recall"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn message_event_accepts_string_ids_and_cq_strings() {
        let ev = r#"{"post_type":"message","self_id":1,"message_type":"group","message_id":"77","user_id":"5","group_id":9,"message":"[CQ:at,qq=1] hi","sender":{"user_id":5,"nickname":"n","card":""}}"#;
        let Frame::Event(Event::Message(m)) = parse_frame(ev).unwrap() else {
            panic!("not a message")
        };
        assert_eq!((m.message_id, m.user_id, m.group_id), (77, 5, Some(9)));
        let segs = m.message.unwrap().segments();
        assert_eq!(segs[0].kind, "at");
        assert_eq!(segs[1].get("text").as_deref(), Some(" hi"));
        assert_eq!(m.sender.display_name(5), "n");
    }
}
