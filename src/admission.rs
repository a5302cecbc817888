//! Admission control for the gateway's HTTP listeners (the web chat, the OpenAI API, the admin
//! endpoint and the approval hook):
//! what a connection may hold, and for how long, before it has proved who sent it.
//!
//! Owns: [`Limits`] (header and body timeouts, caps), the bounded set of unauthenticated
//! connections, and the slots for authenticated work. When the unauthenticated set is full
//! the *oldest* member is closed to make room for the new one: a flood of idle or half-sent
//! connections then only ever displaces itself, and a legitimate client that sends its
//! request head at once is served (refusing the newest instead would lock it out until the
//! flood's header timeouts ran out).
//! Also the accept loop those listeners share ([`serve`]): admit, serve HTTP/1 with the
//! header timeout, close an evicted connection, back off on accept errors, and on cancel let
//! open connections finish gracefully for a bounded drain.
//! Knows nothing about: routes, tokens or secrets — each server decides, from a request's
//! head, whether it authenticates, and tells the connection's [`Ticket`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The bounds of one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The request head (request line and headers) must arrive within this time. hyper
    /// restarts the timer whenever a keep-alive connection waits for its next request, so
    /// this also bounds how long an idle connection stays open.
    pub header_timeout: Duration,
    /// The whole body of a request must arrive within this time (a trickled body is cut).
    pub body_timeout: Duration,
    /// Connections that have not sent an authenticated request yet.
    pub max_unauthenticated: usize,
    /// Authenticated requests being handled at once.
    pub max_work: usize,
    /// Open connections of any kind: a bound on file descriptors. Only connections that
    /// authenticated can fill it, as the unauthenticated ones are capped far below it.
    pub max_connections: usize,
}

/// The shared state of one listener's admission control.
pub struct Admission {
    limits: Limits,
    unauthenticated: Mutex<Unauthenticated>,
    work: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

#[derive(Default)]
struct Unauthenticated {
    next_id: u64,
    /// Oldest first; the token closes the connection.
    open: VecDeque<(u64, CancellationToken)>,
}

/// One accepted connection's standing. Dropped when the connection ends.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: CancellationToken,
    authenticated: AtomicBool,
    _connection: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            work: Arc::new(Semaphore::new(limits.max_work)),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            unauthenticated: Mutex::default(),
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn set(&self) -> std::sync::MutexGuard<'_, Unauthenticated> {
        self.unauthenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, counted as unauthenticated; closes the oldest unauthenticated one
    /// when their cap is reached. `None` when [`Limits::max_connections`] are open.
    pub fn admit(self: &Arc<Self>) -> Option<Arc<Ticket>> {
        let connection = self.connections.clone().try_acquire_owned().ok()?;
        let evicted = CancellationToken::new();
        let mut set = self.set();
        while set.open.len() >= self.limits.max_unauthenticated.max(1) {
            if let Some((_, oldest)) = set.open.pop_front() {
                tracing::debug!("unauthenticated connections at their cap; closing the oldest");
                oldest.cancel();
            }
        }
        let id = set.next_id;
        set.next_id += 1;
        set.open.push_back((id, evicted.clone()));
        drop(set);
        Some(Arc::new(Ticket {
            admission: self.clone(),
            id,
            evicted,
            authenticated: AtomicBool::new(false),
            _connection: connection,
        }))
    }

    /// A slot for one authenticated request, held while it is handled; `None` when all
    /// [`Limits::max_work`] are taken (the caller answers "busy").
    pub fn try_work(&self) -> Option<OwnedSemaphorePermit> {
        self.work.clone().try_acquire_owned().ok()
    }

    /// How many connections are unauthenticated now.
    pub fn unauthenticated(&self) -> usize {
        self.set().open.len()
    }

    /// An HTTP/1 connection builder with the header timeout.
    pub fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        builder
    }

    fn forget(&self, id: u64) {
        self.set().open.retain(|(i, _)| *i != id);
    }
}

impl Ticket {
    /// The connection sent an authenticated request: it leaves the unauthenticated set for
    /// good (it can no longer be closed to make room; its idle time is still bounded by the
    /// header timeout).
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            self.admission.forget(self.id);
        }
    }

    /// Resolves when the connection was closed to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.authenticated.load(Ordering::Acquire) {
            self.admission.forget(self.id);
        }
    }
}

/// How one listener is served by [`serve`].
pub struct Listener {
    /// Names the listener in logs ("web chat", "OpenAI API", "admin endpoint").
    pub name: &'static str,
    pub admission: Arc<Admission>,
    /// How long open connections may take to finish after `cancel` before they are cut.
    pub drain: Duration,
    pub cancel: CancellationToken,
}

/// Accepts and serves connections until `cancel`, each request answered by `handler` with
/// the connection's [`Ticket`] (which the handler marks authenticated). On cancel, open
/// connections are shut down gracefully (a response in flight is finished) for up to `drain`,
/// then cut.
pub async fn serve<H, Fut, B>(listener: TcpListener, how: Listener, handler: H)
where
    H: Fn(Arc<Ticket>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Listener {
        name,
        admission,
        drain,
        cancel,
    } = how;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "{name}: a connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(ticket) = admission.admit() else {
                        tracing::warn!(%peer, "{name}: too many connections; closing a new one");
                        continue;
                    };
                    let builder = admission.http1();
                    let (handler, cancel) = (handler.clone(), cancel.clone());
                    connections.spawn(async move {
                        let for_service = ticket.clone();
                        let service = service_fn(move |req| {
                            let response = handler(for_service.clone(), req);
                            async move { Ok::<_, Infallible>(response.await) }
                        });
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        let result = tokio::select! {
                            r = conn.as_mut() => r,
                            _ = ticket.evicted() => {
                                tracing::debug!("{name}: closed an unauthenticated connection to make room");
                                return;
                            }
                            _ = cancel.cancelled() => {
                                conn.as_mut().graceful_shutdown();
                                conn.as_mut().await
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "{name}: connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "{name}: accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "{name}: connections still open after the drain; closing them"
        );
        connections.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_unauthenticated: usize, max_connections: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_unauthenticated,
            max_work: 1,
            max_connections,
        }
    }

    #[test]
    fn the_oldest_unauthenticated_connection_makes_room() {
        let admission = Admission::new(limits(2, 10));
        let first = admission.admit().unwrap();
        let second = admission.admit().unwrap();
        assert!(!first.evicted.is_cancelled());
        let third = admission.admit().unwrap();
        assert!(first.evicted.is_cancelled(), "the oldest is closed");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!(admission.unauthenticated(), 2);
        // An authenticated connection is no longer a candidate.
        second.authenticated();
        assert_eq!(admission.unauthenticated(), 1);
        let _fourth = admission.admit().unwrap();
        let _fifth = admission.admit().unwrap();
        assert!(!second.evicted.is_cancelled());
        assert!(third.evicted.is_cancelled());
        drop(first);
        assert_eq!(admission.unauthenticated(), 2);
    }

    #[test]
    fn connections_and_work_are_capped() {
        let admission = Admission::new(limits(5, 2));
        let a = admission.admit().unwrap();
        let _b = admission.admit().unwrap();
        assert!(admission.admit().is_none(), "max_connections reached");
        drop(a);
        assert!(admission.admit().is_some());
        let work = admission.try_work().unwrap();
        assert!(admission.try_work().is_none());
        drop(work);
        assert!(admission.try_work().is_some());
    }
}
