//! The outbox: what room workers need of a platform to answer in a room — its capabilities,
//! and posting, editing, typing, uploading and sending a long reply (or, for a platform that
//! answers requests, a turn's progress and end as data), and reading a thread's earlier
//! messages. Nothing about receiving, resolving rooms or connection lifetimes.
//!
//! Owns: the [`Outbox`] trait, and [`of`], which sees any connector as one.
//! Knows nothing about: any particular platform, agents, rooms.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::connector::{Capabilities, Connector, ConnectorError};
use crate::model::{AgentEvent, PostedMessage, ReplyTarget, ThreadMessage, TurnEnd};

/// Where a room's replies go. Same meaning as the [`Connector`] methods of the same names.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError>;

    async fn edit(
        &self,
        to: &ReplyTarget,
        message: &PostedMessage,
        text: &str,
    ) -> Result<(), ConnectorError>;

    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError>;

    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError>;

    async fn send_reply(&self, to: &ReplyTarget, text: &str) -> Result<(), ConnectorError>;

    fn answers_requests(&self) -> bool {
        false
    }

    async fn progress(&self, to: &ReplyTarget, event: &AgentEvent) {
        let _ = (to, event);
    }

    async fn conclude(&self, to: &ReplyTarget, end: TurnEnd) {
        let _ = (to, end);
    }

    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError>;
}

/// A connector's outbox. (A wrapper rather than `Arc<dyn Connector> as Arc<dyn Outbox>`:
/// trait upcasting needs Rust 1.86 and the crate supports 1.85.)
pub fn of(connector: Arc<dyn Connector>) -> Arc<dyn Outbox> {
    Arc::new(ConnectorOutbox(connector))
}

struct ConnectorOutbox(Arc<dyn Connector>);

#[async_trait]
impl Outbox for ConnectorOutbox {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    async fn post(&self, to: &ReplyTarget, text: &str) -> Result<PostedMessage, ConnectorError> {
        self.0.post(to, text).await
    }

    async fn edit(
        &self,
        to: &ReplyTarget,
        message: &PostedMessage,
        text: &str,
    ) -> Result<(), ConnectorError> {
        self.0.edit(to, message, text).await
    }

    async fn typing(&self, to: &ReplyTarget, on: bool) -> Result<(), ConnectorError> {
        self.0.typing(to, on).await
    }

    async fn upload(
        &self,
        to: &ReplyTarget,
        path: &Path,
        caption: Option<&str>,
    ) -> Result<(), ConnectorError> {
        self.0.upload(to, path, caption).await
    }

    async fn send_reply(&self, to: &ReplyTarget, text: &str) -> Result<(), ConnectorError> {
        self.0.send_reply(to, text).await
    }

    fn answers_requests(&self) -> bool {
        self.0.answers_requests()
    }

    async fn progress(&self, to: &ReplyTarget, event: &AgentEvent) {
        self.0.progress(to, event).await
    }

    async fn conclude(&self, to: &ReplyTarget, end: TurnEnd) {
        self.0.conclude(to, end).await
    }

    async fn thread_history(
        &self,
        room: &str,
        thread: &str,
        limit: usize,
    ) -> Result<Vec<ThreadMessage>, ConnectorError> {
        self.0.thread_history(room, thread, limit).await
    }
}
