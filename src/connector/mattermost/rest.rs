//! Mattermost REST API v4 client: the bearer token on every call, retries on 429 (waiting
//! for `X-Ratelimit-Reset`, the seconds until the limit resets, or `Retry-After`) and 5xx,
//! and bounded file downloads.
//!
//! Owns: the HTTP client and the token. Never logs the token.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::config::Token;
pub use crate::connector::http::DownloadError;

/// Attempts for a call that keeps getting 429/5xx (or cannot connect at all).
const MAX_ATTEMPTS: u32 = 4;
/// Longest rate-limit wait we honour; a longer one fails the call instead of hanging a turn.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("{action}: not authorised ({detail})")]
    Unauthorized { action: String, detail: String },
    #[error("{action}: HTTP {status}: {detail}")]
    Status {
        action: String,
        status: u16,
        detail: String,
    },
    #[error("{action}: {detail}")]
    Transport { action: String, detail: String },
    #[error("{action}: unexpected response: {detail}")]
    BadResponse { action: String, detail: String },
}

impl RestError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RestError::Status { status: 404, .. })
    }

    /// Whether retrying later may help (server down, network fault, rate limit).
    pub fn is_transient(&self) -> bool {
        match self {
            RestError::Transport { .. } => true,
            RestError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub struct Rest {
    http: reqwest::Client,
    base: String,
    token: Token,
}

impl Rest {
    pub fn new(base: &str, token: Token) -> anyhow::Result<Rest> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Rest {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub fn token(&self) -> &str {
        &self.token.0
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v4/{}", self.base, path.trim_start_matches('/'))
    }

    /// An authenticated call with the retry rules: 429 and 5xx wait (the rate-limit reset,
    /// else 1 s, 2 s, 4 s) and retry; a connection that could not even be opened is retried
    /// the same way. Timeouts are not retried: the server may have acted.
    async fn call(
        &self,
        action: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Value, RestError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = build(&self.http).bearer_auth(&self.token.0).send().await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) if e.is_connect() && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(RestError::Transport {
                        action: action.to_string(),
                        detail: transport_detail(&e),
                    })
                }
            };
            let status = resp.status();
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < MAX_ATTEMPTS
            {
                let wait = rate_limit_wait(&resp).unwrap_or_else(|| backoff(attempt));
                if wait <= MAX_RETRY_AFTER {
                    tracing::warn!(action, status = status.as_u16(), ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return classify(action, resp).await;
        }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, RestError> {
        let url = self.url(path);
        let v = self.call(path, |http| http.get(&url).query(query)).await?;
        decode(path, v)
    }

    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, RestError> {
        let url = self.url(path);
        let v = self
            .call(path, |http| http.request(method.clone(), &url).json(body))
            .await?;
        decode(path, v)
    }

    /// Multipart POST; `form` is rebuilt for each attempt.
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        path: &str,
        form: impl Fn() -> reqwest::multipart::Form,
    ) -> Result<T, RestError> {
        let url = self.url(path);
        let v = self
            .call(path, |http| http.post(&url).multipart(form()))
            .await?;
        decode(path, v)
    }

    /// Streams file `file_id` (`GET /files/{id}`) into `dest`, failing when it grows past
    /// `limit` bytes. Writes a temporary file first and renames it, so a partial download
    /// never looks like a file.
    pub async fn download(
        &self,
        file_id: &str,
        dest: &Path,
        limit: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, DownloadError> {
        let url = self.url(&format!("files/{file_id}"));
        let request = async {
            self.http
                .get(&url)
                .bearer_auth(&self.token.0)
                .send()
                .await
                .map_err(|e| DownloadError::Failed(transport_detail(&e)))
        };
        crate::connector::http::download(request, dest, limit, timeout, transport_detail).await
    }
}

fn decode<T: DeserializeOwned>(action: &str, v: Value) -> Result<T, RestError> {
    serde_json::from_value(v).map_err(|e| RestError::BadResponse {
        action: action.to_string(),
        detail: e.to_string(),
    })
}

fn backoff(attempt: u32) -> Duration {
    crate::connector::http::backoff(Duration::from_secs(1), attempt)
}

/// How long a 429 asks us to wait: Mattermost's rate limiter sends `X-Ratelimit-Reset`, the
/// seconds until the window resets (0 means "now": wait a little anyway); `Retry-After` is
/// honoured too, for proxies in front of the server.
fn rate_limit_wait(resp: &reqwest::Response) -> Option<Duration> {
    crate::connector::http::seconds_header(resp, "x-ratelimit-reset")
        .or_else(|| crate::connector::http::retry_after(resp))
        .map(|wait| wait.max(Duration::from_millis(100)))
}

/// The message of an `AppError` body (`{"id":…, "message":…}`), else the raw text cut short.
fn error_detail(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if v.get("message").is_some() || v.get("id").is_some() {
            return super::wire::app_error_text(&v);
        }
    }
    crate::text::truncate(text.trim(), 200)
}

/// Maps a response to its JSON body (`null` for an empty one) or a [`RestError`].
async fn classify(action: &str, resp: reqwest::Response) -> Result<Value, RestError> {
    let status = resp.status();
    let text = resp.text().await.map_err(|e| RestError::Transport {
        action: action.to_string(),
        detail: transport_detail(&e),
    })?;
    if status == StatusCode::UNAUTHORIZED {
        return Err(RestError::Unauthorized {
            action: action.to_string(),
            detail: error_detail(&text),
        });
    }
    if !status.is_success() {
        return Err(RestError::Status {
            action: action.to_string(),
            status: status.as_u16(),
            detail: error_detail(&text),
        });
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| RestError::BadResponse {
        action: action.to_string(),
        detail: e.to_string(),
    })
}

/// reqwest's error text can include the URL; keep it short and without the query string.
fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    match e.url() {
        Some(u) => format!("{kind} ({}{})", u.host_str().unwrap_or(""), u.path()),
        None => kind.to_string(),
    }
}
