//! Action calls over a bot's socket, and the registry of connected bots.
//!
//! A [`Link`] is the sending half of one WebSocket: it writes action frames and correlates
//! answers by `echo`. Calls time out, and every pending call fails at once when its socket
//! closes (the pending map is dropped with the link's session). The [`Bots`] registry maps a
//! bot's QQ number (self id) to its current link; a reconnecting bot replaces its old one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::wire::{ActionRequest, ActionResponse};

/// Why an action failed. Shown in logs; users get a generic error.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("bot {0} is not connected")]
    NotConnected(i64),
    #[error("{action} timed out after {secs:.1}s")]
    Timeout { action: String, secs: f64 },
    #[error("connection closed before {action} was answered")]
    Closed { action: String },
    #[error("{action} failed: status {status}, retcode {retcode}{detail}")]
    Failed {
        action: String,
        status: String,
        retcode: i64,
        /// NapCat's `message`/`wording`, prefixed with ": " when present.
        detail: String,
    },
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<ActionResponse>>>>;

/// The sending half of one connection.
pub struct Link {
    /// Unique per connection, so a closing session removes only its own registry entry.
    pub id: u64,
    pub self_id: i64,
    out: mpsc::Sender<String>,
    pending: Pending,
    /// Cancelled when a newer connection of the same bot replaces this one.
    pub replaced: CancellationToken,
}

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_ECHO: AtomicU64 = AtomicU64::new(1);

impl Link {
    /// A link and the receiver its session drains into the socket.
    pub fn new(self_id: i64, replaced: CancellationToken) -> (Arc<Link>, mpsc::Receiver<String>) {
        let (out, rx) = mpsc::channel(64);
        let link = Link {
            id: NEXT_LINK_ID.fetch_add(1, Ordering::Relaxed),
            self_id,
            out,
            pending: Arc::default(),
            replaced,
        };
        (Arc::new(link), rx)
    }

    /// The same socket under a (newly learned) self id; shares the pending calls.
    pub fn rebind(&self, self_id: i64) -> Arc<Link> {
        Arc::new(Link {
            id: self.id,
            self_id,
            out: self.out.clone(),
            pending: self.pending.clone(),
            replaced: self.replaced.clone(),
        })
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<ActionResponse>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes an action response to its caller; false when nobody waits for that echo (a
    /// late answer after a timeout).
    pub fn resolve(&self, response: ActionResponse) -> bool {
        let key = match &response.echo {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.pending().remove(&key) {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }

    /// Fails every pending call (the socket closed).
    pub fn close(&self) {
        self.pending().clear();
    }

    /// Calls an action and returns its `data`. `status: "async"` counts as success with
    /// null data (accepted, result unknown).
    pub async fn call(
        &self,
        action: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, ActionError> {
        let echo = format!("acg-{}", NEXT_ECHO.fetch_add(1, Ordering::Relaxed));
        let frame = serde_json::to_string(&ActionRequest {
            action,
            params: &params,
            echo: &echo,
        })
        .expect("action frames serialize");
        let (tx, rx) = oneshot::channel();
        self.pending().insert(echo.clone(), tx);
        let closed = || ActionError::Closed {
            action: action.to_string(),
        };
        let result = tokio::time::timeout(timeout, async {
            self.out.send(frame).await.map_err(|_| closed())?;
            rx.await.map_err(|_| closed())
        })
        .await;
        let response = match result {
            Ok(r) => r,
            Err(_) => {
                self.pending().remove(&echo);
                return Err(ActionError::Timeout {
                    action: action.to_string(),
                    secs: timeout.as_secs_f64(),
                });
            }
        }?;
        match response.status.as_str() {
            "ok" if response.retcode == 0 => Ok(response.data),
            "async" => Ok(Value::Null),
            _ => {
                let detail = [response.message.as_deref(), response.wording.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" / ");
                Err(ActionError::Failed {
                    action: action.to_string(),
                    status: response.status,
                    retcode: response.retcode,
                    detail: if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    },
                })
            }
        }
    }
}

/// Connected bots by self id. Only sockets that may carry actions (`Universal`, `API`) are
/// registered.
#[derive(Default)]
pub struct Bots {
    links: Mutex<HashMap<i64, Arc<Link>>>,
    /// Bumped on every change, so senders can wait for a bot to (re)connect.
    changed: watch::Sender<u64>,
}

impl Bots {
    fn links(&self) -> MutexGuard<'_, HashMap<i64, Arc<Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a link, replacing (and cancelling) an older one of the same bot.
    pub fn insert(&self, link: Arc<Link>) {
        let old = self.links().insert(link.self_id, link.clone());
        if let Some(old) = old {
            tracing::info!(
                self_id = link.self_id,
                "bot reconnected; closing its previous connection"
            );
            old.replaced.cancel();
            old.close();
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Removes a link if it is still the bot's current one.
    pub fn remove(&self, link: &Link) {
        let mut links = self.links();
        if links.get(&link.self_id).is_some_and(|l| l.id == link.id) {
            links.remove(&link.self_id);
            drop(links);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn get(&self, self_id: i64) -> Option<Arc<Link>> {
        self.links().get(&self_id).cloned()
    }

    pub fn connected(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.links().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The bot's link, waiting up to `wait` for it to (re)connect: a reply finished while
    /// NapCat reconnects still goes out.
    pub async fn wait_for(&self, self_id: i64, wait: Duration) -> Result<Arc<Link>, ActionError> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(link) = self.get(self_id) {
                return Ok(link);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(ActionError::NotConnected(self_id)),
            }
        }
    }

    /// Any connected bot (the lowest self id), waiting like [`Bots::wait_for`].
    pub async fn wait_any(&self, wait: Duration) -> Option<Arc<Link>> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(id) = self.connected().first() {
                return self.get(*id);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(echo: &str, status: &str, retcode: i64) -> ActionResponse {
        serde_json::from_value(serde_json::json!({
            "status": status, "retcode": retcode, "data": {"message_id": 5},
            "message": "发送失败", "echo": echo
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn call_correlates_by_echo_and_surfaces_failures() {
        let (link, mut rx) = Link::new(1, CancellationToken::new());
        let l2 = link.clone();
        let answer = tokio::spawn(async move {
            for status in ["ok", "failed"] {
                let frame: Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
                let echo = frame["echo"].as_str().unwrap().to_string();
                let code = if status == "ok" { 0 } else { 200 };
                assert!(l2.resolve(response(&echo, status, code)));
            }
        });
        let ok = link
            .call("send_private_msg", Value::Null, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ok["message_id"], 5);
        let err = link
            .call("send_private_msg", Value::Null, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("retcode 200: 发送失败"), "{err}");
        answer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn call_times_out_and_late_answers_are_dropped() {
        let (link, mut rx) = Link::new(1, CancellationToken::new());
        let err = link
            .call("get_msg", Value::Null, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, ActionError::Timeout { .. }));
        let frame: Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
        assert!(!link.resolve(response(frame["echo"].as_str().unwrap(), "ok", 0)));
    }

    #[tokio::test]
    async fn closing_fails_pending_calls() {
        let (link, mut rx) = Link::new(1, CancellationToken::new());
        let l2 = link.clone();
        let call = tokio::spawn(async move {
            l2.call("get_msg", Value::Null, Duration::from_secs(30))
                .await
        });
        // The frame is written after the call registered its echo.
        rx.recv().await.unwrap();
        link.close();
        assert!(matches!(
            call.await.unwrap(),
            Err(ActionError::Closed { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_bot_cancels_the_old_link_and_wakes_waiters() {
        let bots = Arc::new(Bots::default());
        let waiter = {
            let bots = bots.clone();
            tokio::spawn(async move { bots.wait_for(7, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        let (first, _r1) = Link::new(7, CancellationToken::new());
        bots.insert(first.clone());
        assert_eq!(waiter.await.unwrap().unwrap().id, first.id);
        let (second, _r2) = Link::new(7, CancellationToken::new());
        bots.insert(second.clone());
        assert!(first.replaced.is_cancelled());
        bots.remove(&first);
        assert_eq!(bots.get(7).unwrap().id, second.id);
        bots.remove(&second);
        assert!(bots.wait_for(7, Duration::from_secs(1)).await.is_err());
    }
}
