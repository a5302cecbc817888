//! A DDP client over one WebSocket: connect handshake, method calls and subscriptions matched
//! to their answers by id, heartbeats both ways, and stream events handed to the connector.
//!
//! Owns: the socket task. It answers server pings at once (even while a login or subscription
//! is pending, because the caller waits on a channel, not on the socket), sends its own pings
//! and declares the socket dead when a pong does not come back within one ping interval
//! (a half-open TCP connection otherwise looks alive forever). When the task ends, every
//! pending call fails and the event channel closes: that is how the connector learns the
//! session is over. DDP sessions are never resumed; the connector logs in and subscribes
//! again on each new socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::wire::{meteor_error_text, ServerFrame};

#[derive(Debug, thiserror::Error)]
pub enum DdpError {
    #[error("websocket: {0}")]
    Socket(String),
    #[error("DDP connection closed")]
    Closed,
    #[error("no answer to {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Refused(String),
}

/// Heartbeat and wait limits. Defaults follow the Python gateway; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct DdpTimings {
    /// How often we ping; a ping still unanswered at the next tick means a dead socket.
    pub ping_interval: Duration,
    /// Limit for the handshake, a method call or a subscription's `ready`.
    pub call_timeout: Duration,
}

impl Default for DdpTimings {
    fn default() -> Self {
        DdpTimings {
            ping_interval: Duration::from_secs(25),
            call_timeout: Duration::from_secs(15),
        }
    }
}

/// A stream event (`changed` frame) from a subscription.
#[derive(Debug)]
pub struct StreamEvent {
    pub collection: String,
    pub event_name: String,
    pub args: Vec<Value>,
}

enum Command {
    Call {
        id: String,
        frame: String,
        reply: oneshot::Sender<Result<Value, DdpError>>,
    },
    Sub {
        id: String,
        frame: String,
        reply: oneshot::Sender<Result<(), DdpError>>,
    },
}

/// Handle to a live DDP session; cheap to clone. Calls fail with [`DdpError::Closed`] once
/// the socket is gone.
#[derive(Clone)]
pub struct DdpClient {
    commands: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    timings: DdpTimings,
}

/// Why the socket task ended.
#[derive(Debug)]
pub enum Closed {
    Cancelled,
    Dead(String),
}

impl DdpClient {
    /// Opens the socket and completes the DDP handshake. Returns the handle, the stream-event
    /// receiver (closed when the session ends) and the socket task.
    pub async fn connect(
        url: &str,
        timings: DdpTimings,
        cancel: CancellationToken,
    ) -> Result<
        (
            DdpClient,
            mpsc::UnboundedReceiver<StreamEvent>,
            tokio::task::JoinHandle<Closed>,
        ),
        DdpError,
    > {
        let handshake = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| DdpError::Socket(e.to_string()))?;
            let connect = json!({"msg": "connect", "version": "1", "support": ["1"]});
            ws.send(Message::text(connect.to_string()))
                .await
                .map_err(|e| DdpError::Socket(e.to_string()))?;
            loop {
                let Some(frame) = ws.next().await else {
                    return Err(DdpError::Closed);
                };
                let frame = frame.map_err(|e| DdpError::Socket(e.to_string()))?;
                let Message::Text(text) = frame else { continue };
                match ServerFrame::parse(text.as_str()) {
                    Ok(ServerFrame::Connected) => return Ok(ws),
                    Ok(ServerFrame::Failed) => {
                        return Err(DdpError::Refused("server refused DDP version 1".into()))
                    }
                    Ok(ServerFrame::Ping { id }) => {
                        ws.send(Message::text(pong(id)))
                            .await
                            .map_err(|e| DdpError::Socket(e.to_string()))?;
                    }
                    _ => {}
                }
            }
        };
        let ws = tokio::select! {
            r = tokio::time::timeout(timings.call_timeout, handshake) => {
                r.map_err(|_| DdpError::Timeout("connect".into(), timings.call_timeout))??
            }
            _ = cancel.cancelled() => return Err(DdpError::Closed),
        };
        let (commands, command_rx) = mpsc::channel(64);
        // Unbounded on purpose: the socket task must never block on a slow consumer, or it
        // would stop answering pings and the server would drop us. The server's own send rate
        // bounds it in practice.
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(socket_task(ws, command_rx, events_tx, timings, cancel));
        Ok((
            DdpClient {
                commands,
                next_id: Arc::new(AtomicU64::new(1)),
                timings,
            },
            events_rx,
            task,
        ))
    }

    fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Calls a method and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, DdpError> {
        let id = self.new_id("m");
        let frame = json!({"msg": "method", "method": method, "id": id, "params": params});
        self.round_trip(method, |reply| Command::Call {
            id,
            frame: frame.to_string(),
            reply,
        })
        .await
    }

    /// Subscribes to a stream key and waits for `ready` (or `nosub`).
    pub async fn subscribe(&self, stream: &str, key: &str) -> Result<(), DdpError> {
        let id = self.new_id("s");
        // The official ddp-client's parameter form (reference §1.4).
        let frame = json!({"msg": "sub", "id": id, "name": stream,
            "params": [key, {"useCollection": false, "args": []}]});
        self.round_trip(&format!("{stream} {key}"), |reply| Command::Sub {
            id,
            frame: frame.to_string(),
            reply,
        })
        .await
    }

    /// Hands a command to the session task and waits for its answer within the call timeout;
    /// `what` names it in a timeout error.
    async fn round_trip<T>(
        &self,
        what: &str,
        command: impl FnOnce(oneshot::Sender<Result<T, DdpError>>) -> Command,
    ) -> Result<T, DdpError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| DdpError::Closed)?;
        match tokio::time::timeout(self.timings.call_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(DdpError::Closed),
            Err(_) => Err(DdpError::Timeout(
                what.to_string(),
                self.timings.call_timeout,
            )),
        }
    }
}

fn pong(id: Option<String>) -> String {
    match id {
        Some(id) => json!({"msg": "pong", "id": id}).to_string(),
        None => json!({"msg": "pong"}).to_string(),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket_task(
    ws: Ws,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<StreamEvent>,
    timings: DdpTimings,
    cancel: CancellationToken,
) -> Closed {
    let (mut sink, mut stream) = ws.split();
    let mut calls: HashMap<String, oneshot::Sender<Result<Value, DdpError>>> = HashMap::new();
    let mut subs: HashMap<String, oneshot::Sender<Result<(), DdpError>>> = HashMap::new();
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + timings.ping_interval,
        timings.ping_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut awaiting_pong = false;
    let mut ping_seq = 0u64;
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                break Closed::Cancelled;
            }
            _ = heartbeat.tick() => {
                if awaiting_pong {
                    break Closed::Dead(format!("no pong within {:?}", timings.ping_interval));
                }
                ping_seq += 1;
                let ping = json!({"msg": "ping", "id": format!("p{ping_seq}")}).to_string();
                if let Err(e) = sink.send(Message::text(ping)).await {
                    break Closed::Dead(e.to_string());
                }
                awaiting_pong = true;
            }
            command = commands.recv() => {
                let Some(command) = command else {
                    // Every handle was dropped: nobody can use this session any more.
                    let _ = sink.send(Message::Close(None)).await;
                    break Closed::Cancelled;
                };
                let (frame, id) = match command {
                    Command::Call { id, frame, reply } => { calls.insert(id.clone(), reply); (frame, id) }
                    Command::Sub { id, frame, reply } => { subs.insert(id.clone(), reply); (frame, id) }
                };
                if let Err(e) = sink.send(Message::text(frame)).await {
                    tracing::debug!(id, "send failed");
                    break Closed::Dead(e.to_string());
                }
            }
            frame = stream.next() => {
                let text = match frame {
                    None => break Closed::Dead("server closed the socket".into()),
                    Some(Err(e)) => break Closed::Dead(e.to_string()),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) => break Closed::Dead("server closed the socket".into()),
                    // Websocket-level ping/pong are answered by tungstenite; binary is not DDP.
                    Some(Ok(_)) => continue,
                };
                let frame = match ServerFrame::parse(text.as_str()) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a malformed DDP frame");
                        continue;
                    }
                };
                match frame {
                    ServerFrame::Ping { id } => {
                        if let Err(e) = sink.send(Message::text(pong(id))).await {
                            break Closed::Dead(e.to_string());
                        }
                    }
                    ServerFrame::Pong => awaiting_pong = false,
                    ServerFrame::Result { id, outcome } => {
                        if let Some(reply) = calls.remove(&id) {
                            let _ = reply.send(outcome.map_err(|e| DdpError::Refused(meteor_error_text(&e))));
                        }
                    }
                    ServerFrame::Ready { subs: ready } => {
                        for id in ready {
                            if let Some(reply) = subs.remove(&id) {
                                let _ = reply.send(Ok(()));
                            }
                        }
                    }
                    ServerFrame::NoSub { id, error } => {
                        if let Some(reply) = subs.remove(&id) {
                            let why = error.as_ref().map(meteor_error_text).unwrap_or_else(|| "subscription ended".into());
                            let _ = reply.send(Err(DdpError::Refused(why)));
                        } else {
                            tracing::warn!(sub = %id, "server ended a subscription");
                        }
                    }
                    ServerFrame::Changed { collection, event_name, args } => {
                        let _ = events.send(StreamEvent { collection, event_name, args });
                    }
                    ServerFrame::Connected | ServerFrame::Failed => {}
                    ServerFrame::Other(v) => tracing::trace!(frame = %v, "ignored DDP frame"),
                }
            }
        }
    };
    // Dropping `calls` and `subs` fails every pending waiter with `Closed`.
    outcome
}
