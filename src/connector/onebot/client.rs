//! Forward WebSocket mode: the gateway connects to the implementation's WebSocket server
//! (`url`), learns the bot's QQ number with `get_login_info`, and reconnects with exponential
//! backoff (0.5 s doubling to 60 s; reset after a connection that lived a minute) whenever
//! the socket closes or heartbeats stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::session::{self, ClientRole, Ended};
use super::Inner;
use crate::connector::replay::Backoff;

/// The URL without its query string, for logs (a token may have been put there).
pub(super) fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that lasted this long was healthy: the next retry starts from the beginning.
const STABLE_AFTER: Duration = Duration::from_secs(60);

pub async fn connect_loop(inner: Arc<Inner>, url: String, cancel: CancellationToken) {
    let mut backoff = Backoff::exact(FIRST_BACKOFF, MAX_BACKOFF);
    let shown = redact(&url);
    loop {
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(connector = %inner.name, error = %e, "invalid OneBot url; not connecting");
                return;
            }
        };
        if let Some(token) = &inner.cfg.access_token {
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(v) => {
                    request.headers_mut().insert("Authorization", v);
                }
                Err(_) => {
                    tracing::error!(connector = %inner.name, "access_token is not a valid header value; not connecting");
                    return;
                }
            }
        }
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)) => r,
        };
        match attempt {
            Ok(Ok((ws, _response))) => {
                tracing::info!(connector = %inner.name, url = %shown, "connected to the OneBot implementation");
                let started = Instant::now();
                let ended = session::drive(
                    inner.clone(),
                    ws,
                    None,
                    ClientRole::Universal,
                    cancel.clone(),
                )
                .await;
                if ended == Ended::Shutdown {
                    return;
                }
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(connector = %inner.name, url = %shown, error = %e, retry_in = ?backoff.upcoming(), "cannot connect to the OneBot implementation");
            }
            Err(_) => {
                tracing::warn!(connector = %inner.name, url = %shown, retry_in = ?backoff.upcoming(), "connecting to the OneBot implementation timed out");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.step()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_drops_the_query() {
        assert_eq!(super::redact("ws://h:1/x?access_token=s"), "ws://h:1/x?…");
        assert_eq!(super::redact("ws://h:1/x"), "ws://h:1/x");
    }
}
