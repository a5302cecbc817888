//! A web chat user talking to the gateway over its JSON API, and the room's event stream
//! (Server-Sent Events), which tests wait on instead of sleeping.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

/// A web chat user talking to the gateway over its JSON API and SSE.
pub struct WebClient {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

/// One message as the web chat API returns it.
#[derive(Clone, Debug)]
pub struct WebMessage {
    pub id: String,
    pub from: String,
    pub text: String,
    pub done: bool,
    /// The thread's root; `None` at the top level.
    pub thread: Option<String>,
}

impl WebClient {
    pub fn new(port: u16, token: &str) -> WebClient {
        WebClient {
            base: format!("http://127.0.0.1:{port}"),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The same user with no pooled connections (after a daemon restart, the old ones are
    /// dead and the first request on one of them could fail).
    pub fn fresh(&self) -> WebClient {
        WebClient {
            base: self.base.clone(),
            token: self.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn post(&self, room: &str, text: &str) -> (u16, Value) {
        self.post_in(room, text, None).await
    }

    /// Posts `text` at the top level, or in the thread of message `thread`.
    pub async fn post_in(&self, room: &str, text: &str, thread: Option<&str>) -> (u16, Value) {
        let mut body = json!({ "text": text });
        if let Some(thread) = thread {
            body["thread"] = json!(thread);
        }
        let r = self
            .http
            .post(format!("{}/api/rooms/{room}/messages", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn messages(&self, room: &str) -> Vec<WebMessage> {
        let v: Value = self
            .http
            .get(format!("{}/api/rooms/{room}/messages", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| WebMessage {
                id: m["id"].as_str().unwrap().to_string(),
                from: m["from"].as_str().unwrap().to_string(),
                text: m["text"].as_str().unwrap().to_string(),
                done: m["done"].as_bool().unwrap(),
                thread: m["thread"].as_str().map(str::to_string),
            })
            .collect()
    }

    /// Opens the room's event stream (before posting, so nothing is missed).
    pub async fn events(&self, room: &str) -> EventStream {
        let r = self
            .http
            .get(format!("{}/api/rooms/{room}/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        EventStream::of(r)
    }

    /// Posts `text` and waits for the turn it starts to end; returns the bot's messages that
    /// came after it, in order.
    pub async fn ask(&self, room: &str, text: &str) -> Vec<WebMessage> {
        let mut events = self.events(room).await;
        let (status, body) = self.post(room, text).await;
        assert_eq!(status, 202, "{body}");
        let my_id = body["id"].as_str().unwrap().to_string();
        events.turn_end().await;
        self.bot_messages_after(room, &my_id).await
    }

    pub async fn bot_messages_after(&self, room: &str, id: &str) -> Vec<WebMessage> {
        let all = self.messages(room).await;
        let start = all.iter().position(|m| m.id == id).map_or(0, |i| i + 1);
        all[start..]
            .iter()
            .filter(|m| m.from == "bot")
            .cloned()
            .collect()
    }
}

pub struct EventStream {
    inner:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl EventStream {
    /// Reads `response` (a `text/event-stream`) event by event.
    pub fn of(response: reqwest::Response) -> EventStream {
        EventStream {
            inner: Box::pin(response.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event, which must be `name`: its data. Fails after [`super::WAIT`].
    pub async fn expect(&mut self, name: &str) -> Value {
        let (event, data) = super::within(&format!("a {name} event"), self.next())
            .await
            .expect("event stream ended");
        assert_eq!(event, name, "{data}");
        data
    }

    /// The next `(event, data)`; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            let chunk = self.inner.next().await?.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits for a turn to start and end (typing on, then off). The stream opens with the
    /// current typing state, which does not count.
    pub async fn turn_end(&mut self) {
        let mut started = false;
        self.until(Duration::from_secs(90), |e, d| {
            if e == "typing" && d["typing"] == true {
                started = true;
            }
            started && e == "typing" && d["typing"] == false
        })
        .await;
    }

    /// Reads events until `stop` holds for one; panics after `timeout`.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&str, &Value) -> bool,
    ) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let result = tokio::time::timeout(timeout, async {
            while let Some((e, d)) = self.next().await {
                let done = stop(&e, &d);
                seen.push((e, d));
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(result, Ok(true)),
            "event not seen within {timeout:?}; saw {seen:?}"
        );
        seen
    }
}
