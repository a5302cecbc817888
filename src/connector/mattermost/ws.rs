//! The Mattermost WebSocket (`/api/v4/websocket`): connect, the `authentication_challenge`
//! with the bot's token, then events handed to the connector while the socket task keeps
//! the connection honest.
//!
//! Owns: the socket task. It sends a `ping` action every interval and declares the socket
//! dead when the previous one got no reply (a half-open TCP connection otherwise looks alive
//! forever); it answers WebSocket pings (tungstenite does). When the task ends the event
//! channel closes: that is how the connector learns the session is over. Nothing is resumed
//! across sockets; the connector replays from REST instead.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::wire::{app_error_text, WsEvent, WsFrame};

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("websocket: {0}")]
    Socket(String),
    #[error("websocket closed during the handshake")]
    Closed,
    #[error("no answer to the authentication challenge within {0:?}")]
    Timeout(Duration),
    /// The server refused the token: retrying cannot help.
    #[error("the server refused the token: {0}")]
    Refused(String),
}

/// Heartbeat and wait limits. The defaults suit production; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct WsTimings {
    /// How often we ping; a ping still unanswered at the next tick means a dead socket.
    pub ping_interval: Duration,
    /// Limit for connecting and authenticating.
    pub handshake_timeout: Duration,
}

impl Default for WsTimings {
    fn default() -> Self {
        WsTimings {
            ping_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
        }
    }
}

/// Why the socket task ended.
#[derive(Debug)]
pub enum Closed {
    Cancelled,
    Dead(String),
}

/// Opens the socket and authenticates. Returns the event receiver (closed when the session
/// ends; events that arrived during the handshake are in it already) and the socket task.
pub async fn connect(
    url: &str,
    token: &str,
    timings: WsTimings,
    cancel: CancellationToken,
) -> Result<
    (
        mpsc::UnboundedReceiver<WsEvent>,
        tokio::task::JoinHandle<Closed>,
    ),
    WsError,
> {
    // Unbounded on purpose: the socket task must never block on a slow consumer, or it would
    // stop answering pings and the server would drop us. The server's send rate bounds it.
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let handshake = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| WsError::Socket(e.to_string()))?;
        let challenge = json!({"seq": 1, "action": "authentication_challenge",
            "data": {"token": token}});
        ws.send(Message::text(challenge.to_string()))
            .await
            .map_err(|e| WsError::Socket(e.to_string()))?;
        loop {
            let Some(frame) = ws.next().await else {
                return Err(WsError::Closed);
            };
            let frame = frame.map_err(|e| WsError::Socket(e.to_string()))?;
            let Message::Text(text) = frame else { continue };
            match WsFrame::parse(text.as_str()) {
                Ok(WsFrame::Reply {
                    seq_reply: 1,
                    ok: true,
                    ..
                }) => return Ok(ws),
                Ok(WsFrame::Reply {
                    seq_reply: 1,
                    error,
                    ..
                }) => {
                    let why = error
                        .as_ref()
                        .map(app_error_text)
                        .unwrap_or_else(|| "authentication failed".into());
                    return Err(WsError::Refused(why));
                }
                Ok(WsFrame::Event(e)) => {
                    let _ = events_tx.send(e);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "skipping a malformed frame"),
            }
        }
    };
    let ws = tokio::select! {
        r = tokio::time::timeout(timings.handshake_timeout, handshake) => {
            r.map_err(|_| WsError::Timeout(timings.handshake_timeout))??
        }
        _ = cancel.cancelled() => return Err(WsError::Closed),
    };
    let task = tokio::spawn(socket_task(ws, events_tx, timings, cancel));
    Ok((events_rx, task))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket_task(
    mut ws: Socket,
    events: mpsc::UnboundedSender<WsEvent>,
    timings: WsTimings,
    cancel: CancellationToken,
) -> Closed {
    let mut seq: u64 = 1;
    let mut unanswered: Option<u64> = None;
    let mut ticker = tokio::time::interval(timings.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = ws.close(None).await;
                return Closed::Cancelled;
            }
            _ = ticker.tick() => {
                if let Some(s) = unanswered {
                    return Closed::Dead(format!("ping {s} unanswered for {:?}", timings.ping_interval));
                }
                seq += 1;
                let ping = json!({"seq": seq, "action": "ping"}).to_string();
                if let Err(e) = ws.send(Message::text(ping)).await {
                    return Closed::Dead(e.to_string());
                }
                unanswered = Some(seq);
            }
            frame = ws.next() => {
                let text = match frame {
                    None => return Closed::Dead("closed by the server".into()),
                    Some(Err(e)) => return Closed::Dead(e.to_string()),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => return Closed::Dead("closed by the server".into()),
                    Some(Ok(_)) => continue,
                };
                match WsFrame::parse(text.as_str()) {
                    Ok(WsFrame::Event(e)) => {
                        if events.send(e).is_err() {
                            return Closed::Cancelled;
                        }
                    }
                    Ok(WsFrame::Reply { seq_reply, .. }) => {
                        if unanswered == Some(seq_reply) {
                            unanswered = None;
                        }
                    }
                    Ok(WsFrame::Other(v)) => tracing::debug!(frame = %v, "ignored frame"),
                    Err(e) => tracing::debug!(error = %e, "skipping a malformed frame"),
                }
            }
        }
    }
}
