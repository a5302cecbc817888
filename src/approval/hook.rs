//! The HTTP endpoint Claude Code's `type: "http"` PreToolUse hook posts to: 127.0.0.1 only,
//! bounded bodies, one explicit `allow`/`deny` answer per call in the `hookSpecificOutput`
//! form (the legacy top-level `{"decision":"allow"}` is not a decision in current CLIs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::Approvals;
use crate::model::Decision;

/// Header carrying the per-run secret (`$ACG_HOOK_SECRET` in the generated settings).
pub const SECRET_HEADER: &str = "x-acg-secret";
/// Tool inputs can be large (a Write of a big file) but not unbounded.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 256;
/// A client that does not send its request head within this time is dropped.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The fields of a PreToolUse body the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    pub tool_name: String,
    #[serde(default)]
    pub tool_input: serde_json::Value,
    #[serde(default)]
    pub cwd: PathBuf,
    #[serde(default)]
    pub session_id: String,
}

/// Binds the hook listener on 127.0.0.1 with a random port.
pub async fn bind() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves hook calls until cancelled.
pub async fn serve(
    listener: TcpListener,
    approvals: Arc<Approvals>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    // Each tool call holds a connection while it waits for an owner; far more than the
    // agents can have in flight means something else is connecting, and it is turned away.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(error = %e, "hook accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                        _ = cancel.cancelled() => break,
                    }
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!("too many hook connections; closing a new one");
            continue;
        };
        let approvals = approvals.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| handle(approvals.clone(), req));
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "hook connection ended") },
                _ = cancel.cancelled() => {}
            }
        });
    }
}

async fn handle(
    approvals: Arc<Approvals>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() != hyper::Method::POST || req.uri().path() != "/hook" {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            deny_body("blocked: unknown hook endpoint"),
        ));
    }
    let secret = req
        .headers()
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                deny_body("blocked: hook body too large"),
            ))
        }
    };
    let call: ToolCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "malformed hook body denied");
            return Ok(respond(
                StatusCode::OK,
                deny_body("blocked: malformed hook body — tool denied as a safe default"),
            ));
        }
    };
    let decision = approvals.decide(secret.as_deref(), call).await;
    Ok(respond(StatusCode::OK, decision_body(&decision)))
}

fn respond(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

fn deny_body(reason: &str) -> serde_json::Value {
    decision_body(&Decision::Deny {
        reason: reason.to_string(),
    })
}

/// The answer Claude Code honours in every permission mode. Ask never leaves the gateway: it
/// was turned into allow or deny by an owner or a timeout.
pub fn decision_body(decision: &Decision) -> serde_json::Value {
    let word = match decision {
        Decision::Allow { .. } => "allow",
        Decision::Ask { .. } | Decision::Deny { .. } => "deny",
    };
    serde_json::json!({
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": word,
            "permissionDecisionReason": decision.reason(),
        }
    })
}
