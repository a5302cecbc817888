//! Replay after a reconnect: how long the Rocket.Chat connector takes to catch up on 1,000
//! messages posted while it was away (REST history paging, dedup, delivery one by one to a
//! dispatcher that queues each), and the process's peak memory meanwhile.
//!
//! Runs against the in-process fake Rocket.Chat server over real 127.0.0.1 sockets. Prints one
//! JSON object: `{"bench":"rc_replay","messages":1000,"replay_ms":…,"per_message_us":…,
//! "peak_rss_kib":…,"rss_before_kib":…}`. Usage: `cargo bench --bench rc_replay`
//! (`RC_REPLAY_MESSAGES=N` changes the count).

// The tests' fake server, of which this bench uses a small part.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_rocketchat.rs"]
mod fake_rocketchat;
// The fake server takes its port from here (`super::ports`).
#[path = "../tests/it/support/ports.rs"]
mod ports;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_chat_gateway::connector::rocketchat::config::{RocketChatAuth, RocketChatConfig};
use agent_chat_gateway::connector::rocketchat::{RocketChatConnector, RocketChatTimings};
use agent_chat_gateway::connector::{
    Acceptance, Connector, ConnectorContext, ConnectorEvent, EventSink,
};
use agent_chat_gateway::state::StateStore;
use fake_rocketchat::{FakeRocketChat, BOT_PASSWORD, BOT_USER};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NAME: &str = "rc";

/// `VmHWM` / `VmRSS` from /proc/self/status, in KiB.
fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

struct Running {
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), agent_chat_gateway::connector::RunError>>,
    /// Message ids delivered, and "connected" notices.
    messages: mpsc::UnboundedReceiver<String>,
    connected: mpsc::UnboundedReceiver<()>,
    store: StateStore,
}

fn start(fake: &FakeRocketChat, dir: &std::path::Path) -> Running {
    let cfg = RocketChatConfig {
        server: fake.url(),
        auth: RocketChatAuth::Password {
            username: BOT_USER.into(),
            password: BOT_PASSWORD.into(),
        },
        mention_all: false,
        reply_in_thread: false,
        require_mention: true,
        max_file_size: None,
        download_timeout: Duration::from_secs(10),
        edit_interval: Duration::from_secs(1),
    };
    let conn = Arc::new(
        RocketChatConnector::new(NAME, &cfg, dir)
            .unwrap()
            .with_timings(RocketChatTimings::default()),
    );
    let (tx, mut rx) = mpsc::channel::<(Arc<str>, ConnectorEvent)>(64);
    let (msg_tx, messages) = mpsc::unbounded_channel();
    let (conn_tx, connected) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((_, event)) = rx.recv().await {
            match event {
                ConnectorEvent::Message { message, accepted } => {
                    let _ = msg_tx.send(message.id);
                    if let Some(a) = accepted {
                        let _ = a.send(Acceptance::Queued);
                    }
                }
                ConnectorEvent::Connection {
                    connected: true, ..
                } => {
                    let _ = conn_tx.send(());
                }
                _ => {}
            }
        }
    });
    let (store, _) = StateStore::open(dir, &[NAME.into()]);
    let cancel = CancellationToken::new();
    let ctx = ConnectorContext {
        events: EventSink::new(NAME.into(), tx),
        cancel: cancel.clone(),
        watched: vec!["#general".into()],
        attachments_dir: dir.join("attachments"),
        store: store.connector_store(NAME.into()),
    };
    let run = tokio::spawn(conn.run(ctx));
    Running {
        cancel,
        run,
        messages,
        connected,
        store,
    }
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        self.run.await.unwrap().unwrap();
        self.store.flush().unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::var("RC_REPLAY_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let fake = FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();

    // First start: establishes the room's watermark.
    let mut first = start(&fake, dir.path());
    first.connected.recv().await.expect("connected");
    first.stop().await;

    let text = "@bot a message of ordinary length, with a few words in it to parse";
    let ids: Vec<String> = (0..count)
        .map(|_| fake.post("GENERAL", "alice", text))
        .collect();
    let rss_before = proc_status_kib("VmRSS:");

    let began = Instant::now();
    let mut again = start(&fake, dir.path());
    let mut delivered = 0usize;
    while delivered < count {
        let id = again.messages.recv().await.expect("delivered");
        assert_eq!(id, ids[delivered], "replay is in order and exactly once");
        delivered += 1;
    }
    let elapsed = began.elapsed();
    again.stop().await;

    let report = serde_json::json!({
        "bench": "rc_replay",
        "messages": count,
        "replay_ms": elapsed.as_secs_f64() * 1000.0,
        "per_message_us": elapsed.as_secs_f64() * 1e6 / count as f64,
        "rss_before_kib": rss_before,
        "peak_rss_kib": proc_status_kib("VmHWM:"),
    });
    println!("{report}");
}
