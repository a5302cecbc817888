//! Reverse WebSocket server: NapCat & co. connect to `ws://<listen><path>`.
//!
//! The handshake is checked before the upgrade completes: wrong path 404; token missing 401,
//! wrong 403 (compared in constant time; `Authorization: Bearer …`, the older `Token …`, or
//! the `access_token` query parameter); `X-Self-ID` required (400); `X-Client-Role`
//! `Universal` (default), `Event` or `API`, anything else 400.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::{self, ClientRole};
use super::Inner;

/// A client that opens TCP but never finishes the handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a valid handshake told us.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    pub self_id: i64,
    pub role: ClientRole,
}

/// Accepts connections until cancelled, then waits for every session to close.
pub async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    path: String,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let path: Arc<str> = path.into();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(handle(inner.clone(), stream, peer, path.clone(), cancel.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: keep serving the sockets we have.
                    tracing::warn!(connector = %inner.name, error = %e, "accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

// The callback's `Result<Response, ErrorResponse>` is tungstenite's `Callback` signature.
#[allow(clippy::result_large_err)]
async fn handle(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    path: Arc<str>,
    cancel: CancellationToken,
) {
    let mut hello = None;
    let token = inner.cfg.access_token.clone();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match check_handshake(req, &path, token.as_deref()) {
            Ok(h) => {
                hello = Some(h);
                Ok(resp)
            }
            Err((status, reason)) => {
                tracing::warn!(%peer, %status, reason, "OneBot handshake rejected");
                let mut r = ErrorResponse::new(Some(reason.to_string()));
                *r.status_mut() = status;
                Err(r)
            }
        }
    };
    let accepted = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::accept_hdr_async(stream, callback)) => r,
    };
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let Some(hello) = hello else { return };
    tracing::info!(connector = %inner.name, %peer, self_id = hello.self_id, role = ?hello.role, "OneBot implementation connected");
    session::drive(inner, ws, Some(hello.self_id), hello.role, cancel).await;
}

/// Validates the upgrade request.
pub fn check_handshake(
    req: &Request,
    path: &str,
    token: Option<&str>,
) -> Result<Hello, (StatusCode, &'static str)> {
    if req.uri().path() != path {
        return Err((StatusCode::NOT_FOUND, "unknown path"));
    }
    if let Some(expected) = token {
        let offered = bearer_token(req).or_else(|| query_token(req.uri().query()));
        match offered {
            None => return Err((StatusCode::UNAUTHORIZED, "missing access token")),
            Some(t) if !constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
                return Err((StatusCode::FORBIDDEN, "wrong access token"));
            }
            Some(_) => {}
        }
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let self_id = header("x-self-id")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or((
            StatusCode::BAD_REQUEST,
            "missing or invalid X-Self-ID header",
        ))?;
    let role = match header("x-client-role").map(|r| r.trim().to_ascii_lowercase()) {
        None => ClientRole::Universal,
        Some(r) => match r.as_str() {
            "universal" | "" => ClientRole::Universal,
            "event" => ClientRole::Event,
            "api" => ClientRole::Api,
            _ => return Err((StatusCode::BAD_REQUEST, "unknown X-Client-Role")),
        },
    };
    Ok(Hello { self_id, role })
}

/// `Authorization: Bearer <t>` or `Token <t>` (scheme case-insensitive, as NoneBot accepts).
fn bearer_token(req: &Request) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let scheme = scheme.to_ascii_lowercase();
    (scheme == "bearer" || scheme == "token").then(|| token.trim().to_string())
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess was
/// right. (The length of the secret is not protected; it is not the secret.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const P: &str = "/onebot/v11/ws";

    #[test]
    fn accepts_every_token_form() {
        for (uri, headers) in [
            (P, vec![("Authorization", "Bearer s3cret")]),
            (P, vec![("authorization", "token s3cret")]),
            ("/onebot/v11/ws?access_token=s3cret", vec![]),
            ("/onebot/v11/ws?x=1&access_token=s3%63ret", vec![]),
        ] {
            let mut h = headers.clone();
            h.push(("X-Self-ID", "42"));
            let hello = check_handshake(&request(uri, &h), P, Some("s3cret")).unwrap();
            assert_eq!(
                hello,
                Hello {
                    self_id: 42,
                    role: ClientRole::Universal
                }
            );
        }
    }

    #[test]
    fn rejects_missing_wrong_and_malformed() {
        let id = ("X-Self-ID", "42");
        let check = |uri: &str, h: &[(&str, &str)], tok: Option<&str>| {
            check_handshake(&request(uri, h), P, tok).map_err(|e| e.0)
        };
        assert_eq!(check(P, &[id], Some("t")), Err(StatusCode::UNAUTHORIZED));
        assert_eq!(
            check(P, &[id, ("Authorization", "Bearer x")], Some("t")),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            check(P, &[id, ("Authorization", "Basic t")], Some("t")),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(check("/other", &[id], None), Err(StatusCode::NOT_FOUND));
        assert_eq!(check(P, &[], None), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            check(P, &[("X-Self-ID", "abc")], None),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check(P, &[id, ("X-Client-Role", "Admin")], None),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            check(P, &[id, ("X-Client-Role", "API")], None).map(|h| h.role),
            Ok(ClientRole::Api)
        );
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        // Lengths differing by a multiple of 256 must still differ.
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }
}
