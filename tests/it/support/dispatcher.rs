//! A connector run in process, with a test task standing in for the dispatcher: it records
//! what the connector delivers, answers each message with a scripted verdict (`Queued` unless
//! told otherwise) and keeps the other events (rooms resolved or failed, connection reports)
//! for the test to wait on.
//!
//! "Nothing was delivered" is never asserted by waiting: a test posts a marker message
//! afterwards and checks that the marker is the next delivery ([`ConnectorRun::expect_next`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agent_chat_gateway::connector::{
    Acceptance, Connector, ConnectorContext, ConnectorEvent, EventSink, RunError,
};
use agent_chat_gateway::model::InboundMessage;
use agent_chat_gateway::state::StateStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::within;

pub struct ConnectorRun<C> {
    pub connector: Arc<C>,
    /// The state file the connector keeps its replay state in.
    pub store: StateStore,
    cancel: CancellationToken,
    run: Option<JoinHandle<Result<(), RunError>>>,
    dispatcher: JoinHandle<()>,
    inbox: mpsc::UnboundedReceiver<InboundMessage>,
    others: mpsc::UnboundedReceiver<ConnectorEvent>,
    verdicts: Arc<Mutex<VecDeque<Acceptance>>>,
}

impl<C: Connector + 'static> ConnectorRun<C> {
    /// Runs `connector` (prepared already) as `name`, watching `watched`, with its state file
    /// in `state_dir` and downloads in `attachments_dir`.
    pub fn start(
        connector: Arc<C>,
        name: &str,
        watched: &[&str],
        state_dir: &Path,
        attachments_dir: PathBuf,
    ) -> ConnectorRun<C> {
        let (tx, mut rx) = mpsc::channel::<(Arc<str>, ConnectorEvent)>(64);
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (others_tx, others) = mpsc::unbounded_channel();
        let verdicts: Arc<Mutex<VecDeque<Acceptance>>> = Arc::default();
        let script = verdicts.clone();
        let expected: Arc<str> = name.into();
        let dispatcher = tokio::spawn(async move {
            while let Some((from, event)) = rx.recv().await {
                assert_eq!(from, expected);
                match event {
                    ConnectorEvent::Message { message, accepted } => {
                        let verdict = script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or(Acceptance::Queued);
                        let _ = inbox_tx.send(message);
                        if let Some(accepted) = accepted {
                            let _ = accepted.send(verdict);
                        }
                    }
                    other => {
                        let _ = others_tx.send(other);
                    }
                }
            }
        });
        let names: Vec<Arc<str>> = vec![name.into()];
        let (store, warnings) = StateStore::open(state_dir, &names);
        assert!(warnings.is_empty(), "{warnings:?}");
        let cancel = CancellationToken::new();
        let ctx = ConnectorContext {
            events: EventSink::new(name.into(), tx),
            cancel: cancel.clone(),
            watched: watched.iter().map(|s| s.to_string()).collect(),
            attachments_dir,
            store: store.connector_store(name.into()),
        };
        let run = tokio::spawn(connector.clone().run(ctx));
        ConnectorRun {
            connector,
            store,
            cancel,
            run: Some(run),
            dispatcher,
            inbox,
            others,
            verdicts,
        }
    }

    /// The verdict for the next message the connector delivers (after those already
    /// scripted); call it before the message is sent.
    pub fn answer_next(&self, verdict: Acceptance) {
        self.verdicts.lock().unwrap().push_back(verdict);
    }

    /// The next delivered message.
    pub async fn message(&mut self) -> InboundMessage {
        within("a delivered message", self.inbox.recv())
            .await
            .expect("the dispatcher stand-in ended")
    }

    /// The next message must be `id` (nothing else was delivered before it).
    pub async fn expect_next(&mut self, id: &str) -> InboundMessage {
        let m = self.message().await;
        assert_eq!(
            m.id, id,
            "unexpected delivery {:?} (text {:?})",
            m.id, m.text
        );
        m
    }

    /// Nothing delivered that the test has not taken yet.
    pub fn nothing_delivered(&mut self) {
        if let Ok(m) = self.inbox.try_recv() {
            panic!("unexpected delivery: {m:?}");
        }
    }

    /// The next event that is not a message.
    pub async fn other(&mut self) -> ConnectorEvent {
        within("a connector event", self.others.recv())
            .await
            .expect("the dispatcher stand-in ended")
    }

    /// Waits for a connection report (skipping other events) whose detail mentions `needle`;
    /// the detail.
    pub async fn connection(&mut self, connected: bool, needle: &str) -> String {
        loop {
            if let ConnectorEvent::Connection {
                connected: c,
                detail,
            } = self.other().await
            {
                if c == connected && detail.contains(needle) {
                    return detail;
                }
            }
        }
    }

    /// Waits until the connector reports it is connected.
    pub async fn connected(&mut self) {
        self.connection(true, "").await;
    }

    /// Waits until the connector reports it lost its connection; the detail.
    pub async fn disconnected(&mut self) -> String {
        self.connection(false, "").await
    }

    /// Cancels the run, which must end cleanly, and writes the state file.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let run = self.run.take().unwrap();
        within("the connector to stop", run).await.unwrap().unwrap();
        self.store.flush().unwrap();
        self.dispatcher.abort();
    }
}
