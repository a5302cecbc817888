//! The control socket server.
//!
//! Owns: binding the socket (0600, stale ones replaced), accepting only the daemon's own uid,
//! reading one request line per connection and answering it through the dispatcher.
//!
//! Agents run as the same uid (unless `run_as`), and on kernels before Landlock ABI 9 their
//! confinement cannot stop them connecting to a socket by path. So a peer whose process has
//! `no_new_privs` set while the daemon's has not — every confined agent and everything it
//! starts, since the flag is inherited and can never be cleared — is an agent: it may only
//! `send` (what `agent-chat-gateway send` from a tool call uses; the tool policy limits it to
//! the turn's own room). `approve`, `stop`, `pause` … from it are refused and logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::proto::{self, Request};
use super::MAX_REQUEST;
use crate::dispatch::ControlRequest;

/// A client has this long to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most answers are immediate; a reset waits for a running turn to stop.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another gateway is already answering on {0}")]
    InUse(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket, replacing a stale one and refusing a live one. Mode 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => return Err(BindError::InUse(path.to_path_buf())),
            Err(_) => {
                debug!(path = %path.display(), "removing stale control socket");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves until cancelled. `stop` fires the daemon's graceful shutdown.
pub async fn serve(
    listener: UnixListener,
    dispatcher: mpsc::Sender<ControlRequest>,
    stop: CancellationToken,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let my_uid = nix::unistd::getuid().as_raw();
    // Only a daemon without `no_new_privs` can tell its agents from its admins by that flag.
    let daemon_free = !has_no_new_privs("self");
    if !daemon_free {
        warn!(
            "the daemon runs with no_new_privs, so the control socket cannot tell confined \
             agents from admins: every same-user peer gets every request"
        );
    }
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(error = %e, "control accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = cancel.cancelled() => break,
                    }
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let confined = match stream.peer_cred() {
            Ok(cred) if cred.uid() == my_uid => daemon_free && peer_is_confined(cred.pid()),
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    "control connection from another user refused"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "cannot read control peer credentials; refused");
                continue;
            }
        };
        let dispatcher = dispatcher.clone();
        let stop = stop.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = handle(stream, dispatcher, stop, confined) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// `NoNewPrivs: 1` in `/proc/<pid>/status`; a peer whose status cannot be read counts as
/// confined (fail closed).
fn peer_is_confined(pid: Option<i32>) -> bool {
    match pid {
        Some(pid) => has_no_new_privs(&pid.to_string()),
        None => true,
    }
}

fn has_no_new_privs(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .find_map(|l| l.strip_prefix("NoNewPrivs:"))
            .is_none_or(|v| v.trim() != "0"),
        Err(_) => true,
    }
}

async fn handle(
    stream: UnixStream,
    dispatcher: mpsc::Sender<ControlRequest>,
    stop: CancellationToken,
    confined: bool,
) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let response =
        match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => proto::error("timed out waiting for the request line"),
            Ok(Err(e)) => proto::error(format!("cannot read the request: {e}")),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                proto::error(format!("request too large (limit {MAX_REQUEST} bytes)"))
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => proto::error(format!("bad request: {e}")),
                Ok(req) if confined && !matches!(req, Request::Send { .. }) => {
                    warn!(
                        ?req,
                        "control request from a confined agent process refused"
                    );
                    proto::error(
                        "refused: this connection comes from a confined agent process, which \
                         may only `send`",
                    )
                }
                Ok(req) => answer(req, &dispatcher, &stop).await,
            },
        };
    let mut out = response.to_string();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
    let _ = write.shutdown().await;
}

async fn answer(
    req: Request,
    dispatcher: &mpsc::Sender<ControlRequest>,
    stop: &CancellationToken,
) -> Value {
    match req {
        Request::Stop => {
            stop.cancel();
            proto::ok(json!({"message": "stopping"}))
        }
        Request::List => {
            ask(dispatcher, ControlRequest::List, |rows| {
                proto::ok(json!({ "watchers": rows }))
            })
            .await
        }
        Request::Status => {
            ask(dispatcher, ControlRequest::Status, |s| {
                proto::ok(serde_json::to_value(s).unwrap_or_default())
            })
            .await
        }
        Request::Pause { watcher } => {
            message(dispatcher, |tx| ControlRequest::Pause(watcher, tx)).await
        }
        Request::Resume { watcher } => {
            message(dispatcher, |tx| ControlRequest::Resume(watcher, tx)).await
        }
        Request::Reset { watcher } => {
            message(dispatcher, |tx| ControlRequest::Reset(watcher, tx)).await
        }
        Request::Send {
            room,
            text,
            attach,
            connector,
        } => {
            message(dispatcher, |reply| ControlRequest::Send {
                room,
                text,
                attach,
                connector,
                reply,
            })
            .await
        }
        Request::Approve { id, always } => {
            message(dispatcher, |reply| ControlRequest::Approve {
                id,
                approve: true,
                always,
                reply,
            })
            .await
        }
        Request::Deny { id } => {
            message(dispatcher, |reply| ControlRequest::Approve {
                id,
                approve: false,
                always: false,
                reply,
            })
            .await
        }
    }
}

async fn ask<T>(
    dispatcher: &mpsc::Sender<ControlRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
    render: impl FnOnce(T) -> Value,
) -> Value {
    let (tx, rx) = oneshot::channel();
    if dispatcher.send(make(tx)).await.is_err() {
        return proto::error("the gateway is shutting down");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(v)) => render(v),
        Ok(Err(_)) => proto::error("the gateway is shutting down"),
        Err(_) => proto::error("timed out waiting for the gateway"),
    }
}

async fn message(
    dispatcher: &mpsc::Sender<ControlRequest>,
    make: impl FnOnce(oneshot::Sender<Result<String, String>>) -> ControlRequest,
) -> Value {
    ask(dispatcher, make, |r| match r {
        Ok(m) => proto::ok(json!({ "message": m })),
        Err(e) => proto::error(e),
    })
    .await
}
