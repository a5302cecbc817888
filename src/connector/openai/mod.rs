//! The OpenAI-compatible API: any OpenAI client (the SDKs, LangChain, aider, `curl`) talks to
//! the gateway's agents at `http://<listen>/v1`, under per-key users, the connector's roles,
//! the agents' allow-lists and the gateway's approvals.
//!
//! Owns: the [`Connector`] implementation for `type: openai` — its config section
//! ([`config`]), the API's JSON shapes ([`wire`]), the HTTP server with keys, rate limits and
//! SSE ([`server`]), rendering requests into a turn's text ([`render`]), the JSON Schema
//! subset that checks structured answers ([`schema`]) and the book of resumable sessions
//! ([`sessions`]).
//!
//! Each request is one [`InboundMessage`] in a room of its own conversation: a model is a
//! watched room (a watcher's `room` names the model, its `agent` answers), and the room id
//! is `<model>/<user>/<session>` — a fresh `~<random>` room that is forgotten after its turn
//! for a stateless request, `c-<name>` for a sticky chat session, `r-<token>` for a chain of
//! Responses. The room's turn comes back through [`Connector::progress`] and
//! [`Connector::conclude`] (this platform [`answers_requests`](Connector::answers_requests))
//! to the waiting HTTP request, found by the message id in the reply target.
//! Must not import: `agent`, `room`, `dispatch`.

pub mod config;
pub mod render;
pub mod schema;
pub mod server;
pub mod sessions;
pub mod wire;

/// The `type:` of this platform's connector sections (`connector::registry`).
pub const TYPE: &str = "openai";

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::connector::{
    ApprovalPlace, Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent,
    RunError,
};
use crate::model::{AgentEvent, PostedMessage, ReplyTarget, RoomRef, TurnEnd};

pub use config::OpenaiConfig;

/// What reaches a waiting request from its room.
#[derive(Debug)]
pub enum Reply {
    Event(AgentEvent),
    End(TurnEnd),
    /// A notice the room posted (paused, an answer to `approve …`).
    Notice(String),
}

/// The requests waiting for their turn, by message id.
#[derive(Default)]
pub struct Waiters(Mutex<HashMap<String, mpsc::Sender<Reply>>>);

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Reply>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: String, tx: mpsc::Sender<Reply>) {
        self.lock().insert(id, tx);
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn sender(&self, to: &ReplyTarget) -> Option<mpsc::Sender<Reply>> {
        let id = to.reply_to.as_deref()?;
        self.lock().get(id).cloned()
    }

    /// Hands a reply to the request `to` answers; false when nobody waits for it.
    async fn send(&self, to: &ReplyTarget, reply: Reply) -> bool {
        match self.sender(to) {
            Some(tx) => tx.send(reply).await.is_ok(),
            None => false,
        }
    }
}

pub struct OpenaiConnector {
    name: Arc<str>,
    config: OpenaiConfig,
    listener: Mutex<Option<TcpListener>>,
    bound: OnceLock<SocketAddr>,
    waiters: Arc<Waiters>,
    limits: server::Limits,
}

impl OpenaiConnector {
    pub fn new(name: &str, config: &OpenaiConfig, _runtime_dir: &Path) -> anyhow::Result<Self> {
        Ok(OpenaiConnector {
            name: name.into(),
            config: config.clone(),
            listener: Mutex::new(None),
            bound: OnceLock::new(),
            waiters: Arc::default(),
            limits: server::Limits::default(),
        })
    }

    /// The address the server listens on: the real port once bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.get().copied().unwrap_or(self.config.listen)
    }

    async fn bind(&self) -> Result<TcpListener, RunError> {
        let listen = self.config.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| RunError::Listen {
                who: format!("OpenAI API {}", self.name),
                addr: listen,
                error,
            })?;
        let addr = listener.local_addr().map_err(|error| RunError::Io {
            what: "reading the bound address".into(),
            error,
        })?;
        let _ = self.bound.set(addr);
        Ok(listener)
    }

    fn lock_listener(&self) -> MutexGuard<'_, Option<TcpListener>> {
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Connector for OpenaiConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        // Answers are not chat messages: nothing is split or edited.
        Capabilities {
            threads: false,
            max_message_len: usize::MAX / 4,
            edit: false,
            edit_interval: Duration::ZERO,
        }
    }

    async fn prepare(&self) -> Result<(), RunError> {
        if self.lock_listener().is_some() {
            return Ok(());
        }
        let listener = self.bind().await?;
        *self.lock_listener() = Some(listener);
        tracing::info!(connector = %self.name, addr = %self.local_addr(), "OpenAI API listening");
        Ok(())
    }

    fn startup_notes(&self) -> Vec<String> {
        vec![format!(
            "OpenAI API {}: base_url http://{}/v1",
            self.name,
            self.local_addr()
        )]
    }

    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError> {
        let prepared = self.lock_listener().take();
        let listener = match prepared {
            Some(l) => l,
            None => self.bind().await?,
        };
        let models = server::Models::new(
            &ctx.watched,
            &self.config.aliases,
            &self.config.model_overrides,
        );
        let up = ConnectorEvent::Connection {
            connected: true,
            detail: format!("serving http://{}/v1", self.local_addr()),
        };
        tokio::select! {
            sent = ctx.events.send(up) => if !sent { return Ok(()) },
            _ = ctx.cancel.cancelled() => return Ok(()),
        }
        let shared = Arc::new(server::Shared::new(
            self.name.clone(),
            &self.config,
            models,
            ctx.events.clone(),
            ctx.cancel.clone(),
            self.waiters.clone(),
            sessions::Sessions::new(ctx.store.clone()),
            self.limits.clone(),
        ));
        server::serve(listener, shared).await;
        Ok(())
    }

    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        if self.waiters.send(to, Reply::Notice(text.to_string())).await {
            Ok(PostedMessage {
                id: to.reply_to.clone().unwrap_or_default(),
            })
        } else {
            // A refusal, not a transient fault: the caller is gone and will not come back.
            Err(ConnectorError::Rejected {
                platform: "OpenAI API",
                action: "a reply".into(),
                detail: "no request waits for it (the caller hung up)".into(),
            })
        }
    }

    async fn send_reply(&self, to: &ReplyTarget, text: &str) -> Result<(), ConnectorError> {
        self.post(to, text).await.map(|_| ())
    }

    fn answers_requests(&self) -> bool {
        true
    }

    async fn progress(&self, to: &ReplyTarget, event: &AgentEvent) {
        self.waiters.send(to, Reply::Event(event.clone())).await;
    }

    async fn conclude(&self, to: &ReplyTarget, end: TurnEnd) {
        if !self.waiters.send(to, Reply::End(end)).await {
            tracing::debug!(room = %to.room, "a turn ended after its caller hung up");
        }
    }

    fn approvals(&self) -> ApprovalPlace {
        self.config.approvals.clone()
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        let _ = spec;
        Err(ConnectorError::Unsupported(
            "sending to an API room (its rooms are its callers' requests)",
        ))
    }
}
