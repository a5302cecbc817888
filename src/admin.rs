//! The admin HTTP endpoint (`admin: {listen: …}`, off by default, loopback by default):
//! `GET /healthz` (the daemon answers), `GET /readyz` (every connector is connected),
//! `GET /metrics` (Prometheus text, `metrics.rs`). Read-only and without secrets, so it
//! takes no credentials; what it reports comes from the dispatcher over the same channel as
//! the control socket's `status` and `list`.
//! Knows nothing about: platforms, agents, how metrics are counted.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Admission};
use crate::dispatch::{ControlRequest, StatusReport, WatcherRow};
use crate::metrics;

/// How long the dispatcher may take to answer a probe before it counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapers and probes: few connections, small requests, no bodies.
fn limits() -> admission::Limits {
    admission::Limits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        max_unauthenticated: 16,
        max_work: 8,
        max_connections: 32,
    }
}

/// Binds the endpoint (at start-up, so a taken port fails the start).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin endpoint: cannot listen on {addr}: {e}"))
}

/// Serves until `cancel`.
pub async fn serve(
    listener: TcpListener,
    dispatcher: mpsc::Sender<ControlRequest>,
    cancel: CancellationToken,
) {
    let admission = Admission::new(limits());
    let how = admission::Listener {
        name: "admin endpoint",
        admission: admission.clone(),
        drain: Duration::from_secs(1),
        cancel,
    };
    admission::serve(listener, how, move |ticket, req| {
        // Nothing here is secret: every request counts as authenticated, and the caps bound it.
        ticket.authenticated();
        let (dispatcher, admission) = (dispatcher.clone(), admission.clone());
        async move { handle(&dispatcher, &admission, req).await }
    })
    .await
}

async fn handle(
    dispatcher: &mpsc::Sender<ControlRequest>,
    admission: &Admission,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(_work) = admission.try_work() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "busy\n");
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        resp.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match status(dispatcher).await {
            Some(report) => {
                let down: Vec<String> = report
                    .connectors
                    .iter()
                    .filter(|c| !c.connected)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                if down.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: {}\n", down.join("; ")),
                    )
                }
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the dispatcher does not answer\n",
            ),
        },
        "/metrics" => {
            let snapshot = snapshot(dispatcher).await;
            let mut resp = text(StatusCode::OK, &metrics::render(&snapshot));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /healthz, /readyz, /metrics)\n",
        ),
    }
}

async fn ask<T>(
    dispatcher: &mpsc::Sender<ControlRequest>,
    request: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    dispatcher.send(request(tx)).await.ok()?;
    tokio::time::timeout(PROBE_TIMEOUT, rx).await.ok()?.ok()
}

async fn status(dispatcher: &mpsc::Sender<ControlRequest>) -> Option<StatusReport> {
    ask(dispatcher, ControlRequest::Status).await
}

/// The gauges' values now; a dispatcher that does not answer leaves them at zero (the
/// counters still tell what happened).
async fn snapshot(dispatcher: &mpsc::Sender<ControlRequest>) -> metrics::Snapshot {
    let mut snapshot = metrics::Snapshot {
        resident_bytes: metrics::resident_bytes(std::process::id()).unwrap_or(0),
        ..metrics::Snapshot::default()
    };
    if let Some(report) = status(dispatcher).await {
        snapshot.connectors = report
            .connectors
            .into_iter()
            .map(|c| (c.name, c.connected))
            .collect();
        snapshot.rooms = report.rooms;
        snapshot.pending_approvals = report.pending_approvals;
    }
    let rows: Vec<WatcherRow> = ask(dispatcher, ControlRequest::List)
        .await
        .unwrap_or_default();
    snapshot.queued = rows.iter().map(|r| r.queued).sum();
    snapshot.busy_rooms = rows.iter().filter(|r| r.busy).count();
    snapshot
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
