//! One WebSocket, whichever side opened it: frames in (responses routed to their callers,
//! events queued for the bot's event processor), action frames out, and the heartbeat
//! watchdog. The loop ends on shutdown (close 1001), replacement by a newer socket of the
//! same bot, heartbeat loss, or the peer going away; its pending calls fail with it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::inbound::{self, Work};
use super::link::Link;
use super::wire::{self, Event, Frame, LoginInfo};
use super::Inner;

/// `X-Client-Role`: which traffic a socket carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    Universal,
    /// Events only: never used for actions.
    Event,
    /// Actions only.
    Api,
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    Replaced,
    HeartbeatLost,
    /// The peer closed or the socket failed.
    Closed(String),
}

/// Events waiting for the processor; a full queue means the processor is stuck for minutes.
const EVENT_QUEUE: usize = 1024;

/// Serves one socket until it ends. `self_id` is known from `X-Self-ID` in reverse mode; in
/// forward mode it is learned with `get_login_info`.
pub async fn drive<S>(
    inner: Arc<Inner>,
    ws: WebSocketStream<S>,
    self_id: Option<i64>,
    role: ClientRole,
    cancel: CancellationToken,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    // Not a child of `cancel`: shutdown must not look like a replacement (close 1001, not 1000).
    let (link, mut out_rx) = Link::new(self_id.unwrap_or(0), CancellationToken::new());
    let (ev_tx, ev_rx) = mpsc::channel::<Work>(EVENT_QUEUE);
    tokio::spawn(inbound::process(inner.clone(), ev_rx, cancel.clone()));

    // The registered (action-capable) link: the same socket under the bot's self id.
    let mut registered: Option<Arc<Link>> = None;
    let register = |id: i64| -> Arc<Link> {
        let bound = link.rebind(id);
        inner.bots.insert(bound.clone());
        // Queued before any event this socket delivers, so the catch-up comes first.
        if ev_tx.try_send(Work::Replay(id)).is_err() {
            tracing::error!(connector = %inner.name, self_id = id, "event queue full; no catch-up replay");
        }
        bound
    };
    let mut identify: Option<tokio::task::JoinHandle<Result<i64, String>>> = None;
    match (self_id, role) {
        (Some(id), ClientRole::Universal | ClientRole::Api) => {
            registered = Some(register(id));
            inner
                .report_connection(format!("bot {id} connected ({role:?})"))
                .await;
        }
        (Some(id), ClientRole::Event) => {
            inner
                .report_connection(format!("bot {id} event socket connected"))
                .await;
        }
        (None, _) => {
            let link = link.clone();
            let timeout = inner.cfg.action_timeout;
            identify = Some(tokio::spawn(async move {
                let data = link
                    .call("get_login_info", Value::Null, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::from_value::<LoginInfo>(data)
                    .map(|l| l.user_id)
                    .map_err(|e| format!("get_login_info: {e}"))
            }));
        }
    }

    let replaced = link.replaced.clone();
    let mut watchdog = Watchdog::new(inner.cfg.heartbeat_timeout);
    // QQ login state from heartbeats; a change to offline is reported once.
    let mut qq_online: Option<bool> = None;
    let ended = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                close(&mut sink, CloseCode::Away, "gateway shutting down").await;
                break Ended::Shutdown;
            }
            _ = replaced.cancelled() => {
                close(&mut sink, CloseCode::Normal, "replaced by a newer connection").await;
                break Ended::Replaced;
            }
            _ = watchdog.expired() => {
                tracing::warn!(
                    connector = %inner.name, self_id = link_id(&registered, self_id),
                    silent_secs = watchdog.limit().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                    "no heartbeat from the OneBot implementation; closing the connection"
                );
                close(&mut sink, CloseCode::Away, "heartbeat timeout").await;
                break Ended::HeartbeatLost;
            }
            result = async { identify.as_mut().expect("guarded").await }, if identify.is_some() => {
                identify = None;
                match result {
                    Ok(Ok(id)) => {
                        registered = Some(register(id));
                        inner.report_connection(format!("bot {id} connected (forward)")).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(connector = %inner.name, error = %e, "cannot learn the bot's QQ number; closing");
                        close(&mut sink, CloseCode::Policy, "get_login_info failed").await;
                        break Ended::Closed(e);
                    }
                    Err(e) => break Ended::Closed(e.to_string()),
                }
            }
            frame = out_rx.recv() => {
                let Some(frame) = frame else { break Ended::Closed("link dropped".into()) };
                if let Err(e) = sink.send(Message::text(frame)).await {
                    break Ended::Closed(format!("send failed: {e}"));
                }
            }
            msg = stream.next() => {
                let text = match msg {
                    None => break Ended::Closed("peer went away".into()),
                    Some(Err(e)) => break Ended::Closed(e.to_string()),
                    Some(Ok(Message::Close(frame))) => {
                        break Ended::Closed(match frame {
                            Some(f) => format!("peer closed ({}: {})", u16::from(f.code), f.reason),
                            None => "peer closed".into(),
                        });
                    }
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(_)) => continue,
                };
                watchdog.saw_traffic();
                let bot_id = link_id(&registered, self_id);
                if let Some(online) = handle_frame(&inner, &link, &ev_tx, &mut watchdog, bot_id, &text) {
                    let before = qq_online.replace(online);
                    if before != Some(online) && (before.is_some() || !online) {
                        let state = if online { "back online" } else { "offline (logged out?)" };
                        tracing::warn!(connector = %inner.name, self_id = bot_id, "OneBot reports QQ {state}");
                        inner.report_connection(format!("bot {bot_id} reports QQ {state}")).await;
                    }
                }
            }
        }
    };
    if let Some(task) = identify {
        task.abort();
    }
    link.close();
    let id = link_id(&registered, self_id);
    if let Some(bound) = &registered {
        inner.bots.remove(bound);
    }
    if ended != Ended::Replaced {
        inner
            .report_connection(format!("bot {id} disconnected: {ended:?}"))
            .await;
    }
    tracing::info!(connector = %inner.name, self_id = id, reason = ?ended, "OneBot connection ended");
    ended
}

fn link_id(registered: &Option<Arc<Link>>, self_id: Option<i64>) -> i64 {
    registered
        .as_ref()
        .map(|l| l.self_id)
        .or(self_id)
        .unwrap_or(0)
}

/// Routes one frame. Returns the QQ online state when the frame was a heartbeat.
/// `bot_id` is the bot's QQ number when known (0 before `get_login_info` in forward mode).
fn handle_frame(
    inner: &Inner,
    link: &Link,
    events: &mpsc::Sender<Work>,
    watchdog: &mut Watchdog,
    bot_id: i64,
    text: &str,
) -> Option<bool> {
    let frame = match wire::parse_frame(text) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(connector = %inner.name, error = %e, "unparseable OneBot frame dropped");
            return None;
        }
    };
    match frame {
        Frame::Response(r) => {
            if !link.resolve(r) {
                tracing::debug!(connector = %inner.name, "action response nobody waits for (late or unknown echo)");
            }
        }
        Frame::Event(Event::Heartbeat(h)) => {
            watchdog.heartbeat(Duration::from_millis(h.interval.max(0) as u64));
            return Some(h.status.as_ref().and_then(|s| s.online) != Some(false));
        }
        Frame::Event(Event::Lifecycle { self_id, sub_type }) => {
            tracing::info!(connector = %inner.name, self_id, sub_type, "OneBot lifecycle event");
        }
        Frame::Event(Event::Message(mut m)) => {
            // The socket's identity (X-Self-ID / get_login_info) wins over a missing or
            // different `self_id` in the event: replies must go out through this bot.
            if bot_id != 0 && m.self_id != bot_id {
                if m.self_id != 0 {
                    tracing::debug!(connector = %inner.name, event_self_id = m.self_id, bot_id, "event self_id differs from the socket's bot");
                }
                m.self_id = bot_id;
            }
            if let Err(e) = events.try_send(Work::Event(Box::new(m))) {
                tracing::error!(connector = %inner.name, error = %e, "event queue full; message dropped");
            }
        }
        Frame::Event(Event::Ignored { post_type, detail }) => {
            tracing::debug!(connector = %inner.name, post_type, detail, "OneBot event ignored");
        }
        Frame::Unknown(v) => {
            tracing::debug!(connector = %inner.name, frame = %v, "unclassifiable OneBot frame dropped");
        }
    }
    None
}

async fn close<S>(sink: &mut S, code: CloseCode, reason: &'static str)
where
    S: SinkExt<Message> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // Best effort: the peer may already be gone.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Armed by the first heartbeat (implementations without heartbeats are never timed out);
/// any traffic resets it.
struct Watchdog {
    configured: Option<Duration>,
    limit: Option<Duration>,
    deadline: Option<Instant>,
}

impl Watchdog {
    fn new(configured: Option<Duration>) -> Self {
        Watchdog {
            configured,
            limit: None,
            deadline: None,
        }
    }

    fn limit(&self) -> Option<Duration> {
        self.limit
    }

    fn heartbeat(&mut self, interval: Duration) {
        let limit = self.configured.unwrap_or(interval * 3);
        if !limit.is_zero() {
            self.limit = Some(limit);
            self.deadline = Some(Instant::now() + limit);
        }
    }

    fn saw_traffic(&mut self) {
        if let Some(limit) = self.limit {
            self.deadline = Some(Instant::now() + limit);
        }
    }

    async fn expired(&self) {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    }
}
