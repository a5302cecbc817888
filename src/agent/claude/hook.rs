//! The HTTP endpoint Claude Code's `type: "http"` PreToolUse hook posts to: a thin adapter
//! from the hook's wire format onto the gateway's [`ToolGate`]. 127.0.0.1 only, bounded
//! bodies, one explicit `allow`/`deny` answer per call in the `hookSpecificOutput` form (the
//! legacy top-level `{"decision":"allow"}` is not a decision in current CLIs).
//!
//! Owns: parsing the hook body into a neutral [`ToolCall`], the secret header, the answer's
//! shape, and the listener's bounds ([`crate::admission`]): the secret header is checked against
//! the live turns as soon as the request head is in, before anything scarce is held. A call
//! with a live secret takes one of [`Limits::max_work`](crate::admission::Limits) slots (it
//! may hold it for the whole approval wait) and may send up to [`MAX_BODY`]; anything else
//! stays in the small capped set of unauthenticated connections (oldest closed to make room),
//! may send at most [`MAX_UNAUTHENTICATED_BODY`], and is denied and audited in short. Heads
//! and bodies must arrive within their timeouts. Every refusal is a deny.
//! Knows nothing about: the policy, owners, rooms — all of that is behind the gate.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::wire::PreToolUseCall;
use crate::admission::{self, Admission, Ticket};
use crate::agent::gate::{self, ToolGate};
use crate::model::{Decision, ToolCall};

/// Header carrying the per-run secret: written into the per-run settings file's hook
/// `headers` and read back here (header names are case-insensitive).
pub const SECRET_HEADER: &str = "X-ACG-Secret";
/// Tool inputs can be large (a Write of a big file) but not unbounded.
pub const MAX_BODY: usize = 10 * 1024 * 1024;
/// A call without a live secret is denied whatever it says; it is read only to be audited (in
/// short), so it gets far less.
pub const MAX_UNAUTHENTICATED_BODY: usize = 64 * 1024;

/// The hook listener's bounds in production.
pub fn default_limits() -> admission::Limits {
    admission::Limits {
        // The CLI sends its head at once on a local socket.
        header_timeout: Duration::from_secs(10),
        // A 10 MiB Write over loopback takes milliseconds; this only cuts a trickle.
        body_timeout: Duration::from_secs(30),
        max_unauthenticated: 16,
        // Each tool call holds a slot while it waits for an owner; far more than the agents
        // can have in flight.
        max_work: 256,
        max_connections: 512,
    }
}

/// The neutral call of a PreToolUse body.
fn tool_call(body: PreToolUseCall) -> ToolCall {
    ToolCall {
        tool: body.tool_name,
        input: body.tool_input,
        cwd: PathBuf::from(body.cwd),
    }
}

/// Binds the hook listener on 127.0.0.1 with a random port. Synchronous, so an agent type's
/// `build` can start its endpoint; must be called inside the tokio runtime.
pub fn bind() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((TcpListener::from_std(listener)?, addr))
}

/// Serves hook calls until cancelled, with the [default limits](default_limits).
pub async fn serve(
    listener: TcpListener,
    gate: Arc<dyn ToolGate>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    serve_with_limits(listener, gate, tracker, cancel, default_limits()).await
}

/// Serves hook calls until cancelled.
pub async fn serve_with_limits(
    listener: TcpListener,
    gate: Arc<dyn ToolGate>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    limits: admission::Limits,
) {
    let admission = Admission::new(limits);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(error = %e, "hook accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = cancel.cancelled() => break,
                    }
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let Some(ticket) = admission.admit() else {
            warn!("too many hook connections; closing a new one");
            continue;
        };
        let (gate, admission, cancel) = (gate.clone(), admission.clone(), cancel.clone());
        tracker.spawn(async move {
            let builder = admission.http1();
            let for_service = ticket.clone();
            let service = service_fn(move |req| {
                handle(
                    gate.clone(),
                    admission.clone(),
                    for_service.clone(),
                    req,
                )
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "hook connection ended") },
                _ = ticket.evicted() => debug!("closed an unauthenticated hook connection to make room"),
                _ = cancel.cancelled() => {}
            }
        });
    }
}

async fn handle(
    gate: Arc<dyn ToolGate>,
    admission: Arc<Admission>,
    ticket: Arc<Ticket>,
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
    // Checked from the head: only a live turn's call may hold a work slot or send a big body.
    let live = secret.as_deref().is_some_and(|s| gate.is_live(s));
    let (_work, limit) = if live {
        ticket.authenticated();
        let Some(slot) = admission.try_work() else {
            warn!("all hook work slots are taken; denying a call");
            // 200: an explicit deny the CLI honours, not an error it might fall through.
            return Ok(respond(
                StatusCode::OK,
                deny_body("blocked: too many tool calls in flight at the gateway"),
            ));
        };
        (Some(slot), MAX_BODY)
    } else {
        (None, MAX_UNAUTHENTICATED_BODY)
    };
    let collect = Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(admission.limits().body_timeout, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Ok(respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                deny_body("blocked: hook body too large"),
            ))
        }
        Err(_) => {
            debug!("a hook body did not arrive in time");
            let mut resp = respond(
                StatusCode::REQUEST_TIMEOUT,
                deny_body("blocked: the hook body did not arrive in time"),
            );
            resp.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return Ok(resp);
        }
    };
    let call = match serde_json::from_slice::<PreToolUseCall>(&body) {
        Ok(c) => tool_call(c),
        Err(e) => {
            // Not logged per call when unauthenticated: that would be a flood of its own.
            if live {
                warn!(error = %e, "malformed hook body denied");
            } else {
                debug!(error = %e, "malformed unauthenticated hook body denied");
            }
            return Ok(respond(
                StatusCode::OK,
                deny_body("blocked: malformed hook body — tool denied as a safe default"),
            ));
        }
    };
    // Fail closed: a gate that fails instead of answering is an explicit deny, not a broken
    // connection the CLI might treat as a non-blocking hook error.
    let asked = AssertUnwindSafe(gate.decide(secret.as_deref(), call))
        .catch_unwind()
        .await;
    let decision = asked.unwrap_or_else(|_| {
        warn!("the tool gate failed while deciding a call; denying");
        Decision::Deny {
            reason: "blocked: the gateway could not decide this tool call".into(),
        }
    });
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

/// The answer Claude Code honours in every permission mode. Ask never leaves the gate: it
/// was turned into allow or deny by an owner or a timeout (and would be a deny here).
pub fn decision_body(decision: &Decision) -> serde_json::Value {
    let word = if gate::allows(decision) {
        "allow"
    } else {
        "deny"
    };
    serde_json::json!({
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": word,
            "permissionDecisionReason": decision.reason(),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use serde_json::{json, Value};

    use super::*;

    /// Records the neutral calls it is asked; allows `ls`, leaks an Ask for anything else
    /// (which the adapter must still answer as a deny), and panics on `boom`.
    #[derive(Default)]
    struct FakeGate {
        calls: Mutex<Vec<(Option<String>, ToolCall)>>,
    }

    #[async_trait]
    impl ToolGate for FakeGate {
        fn is_live(&self, secret: &str) -> bool {
            secret == "live"
        }

        async fn decide(&self, secret: Option<&str>, call: ToolCall) -> Decision {
            self.calls
                .lock()
                .unwrap()
                .push((secret.map(str::to_string), call.clone()));
            match call.input["command"].as_str() {
                Some("ls") => Decision::Allow {
                    reason: "listed".into(),
                },
                Some("boom") => panic!("the gate broke"),
                _ => Decision::Ask {
                    reason: "would ask".into(),
                },
            }
        }
    }

    async fn ask(base: &str, command: &str) -> Value {
        let body = json!({"session_id": "s", "cwd": "/w", "hook_event_name": "PreToolUse",
            "tool_name": "Bash", "tool_input": {"command": command}});
        reqwest::Client::new()
            .post(format!("{base}/hook"))
            // Another case than the constant: header names are case-insensitive.
            .header(SECRET_HEADER.to_ascii_lowercase(), "live")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn word(answer: &Value) -> &str {
        answer["hookSpecificOutput"]["permissionDecision"]
            .as_str()
            .unwrap()
    }

    #[tokio::test]
    async fn the_hook_maps_a_body_onto_the_gate_and_its_answer_back() {
        let gate = Arc::new(FakeGate::default());
        let (listener, addr) = bind().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            gate.clone(),
            TaskTracker::new(),
            cancel.clone(),
        ));
        let base = format!("http://{addr}");
        assert_eq!(word(&ask(&base, "ls").await), "allow");
        assert_eq!(word(&ask(&base, "rm x").await), "deny", "an Ask is a deny");
        let broken = ask(&base, "boom").await;
        assert_eq!(word(&broken), "deny");
        assert_eq!(
            broken["hookSpecificOutput"]["permissionDecisionReason"],
            "blocked: the gateway could not decide this tool call"
        );
        let calls = gate.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3);
        assert_eq!(
            calls[0],
            (
                Some("live".to_string()),
                ToolCall {
                    tool: "Bash".into(),
                    input: json!({"command": "ls"}),
                    cwd: PathBuf::from("/w"),
                }
            )
        );
        cancel.cancel();
    }
}
