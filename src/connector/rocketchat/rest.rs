//! Rocket.Chat REST client: login (password or personal access token), the auth headers on
//! every call, one re-login on a 401, retries with backoff on 429/5xx honouring
//! `Retry-After`, and bounded file downloads.
//!
//! Owns: the current auth token (shared with the DDP login, which resumes with it). Never logs
//! a token or a password.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::config::RocketChatAuth;
use super::wire::{LoginResponse, WireMe};
pub use crate::connector::http::DownloadError;

/// Attempts for a call that keeps getting 429/5xx (or cannot connect at all).
const MAX_ATTEMPTS: u32 = 4;
/// Longest `Retry-After` we honour; a longer one fails the call instead of hanging a turn.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Auth {
    pub user_id: String,
    pub token: String,
    pub username: String,
}

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
    /// Whether the server said the thing asked for does not exist (unknown room or user).
    pub fn is_not_found(&self) -> bool {
        match self {
            RestError::Status { status, detail, .. } => {
                *status == 404
                    || (*status == 400
                        && (detail.contains("not-found")
                            || detail.contains("not found")
                            || detail.contains("invalid-channel")
                            || detail.contains("invalid-user")
                            || detail.contains("error-invalid-room")))
            }
            _ => false,
        }
    }

    /// Whether retrying later may help (server down, network fault).
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
    creds: RocketChatAuth,
    auth: Mutex<Option<Auth>>,
    /// One login at a time; others wait and reuse its token.
    login_lock: tokio::sync::Mutex<()>,
}

impl Rest {
    pub fn new(base: &str, creds: RocketChatAuth) -> anyhow::Result<Rest> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Rest {
            http,
            base: base.trim_end_matches('/').to_string(),
            creds,
            auth: Mutex::new(None),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn auth_slot(&self) -> MutexGuard<'_, Option<Auth>> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current credentials, logging in first if there are none.
    pub async fn auth(&self) -> Result<Auth, RestError> {
        if let Some(a) = self.auth_slot().clone() {
            return Ok(a);
        }
        self.relogin(None).await
    }

    /// Logs in again unless someone already replaced `stale` (the token that just failed).
    pub async fn relogin(&self, stale: Option<&str>) -> Result<Auth, RestError> {
        let _guard = self.login_lock.lock().await;
        if let Some(a) = self.auth_slot().clone() {
            if stale.is_none_or(|s| s != a.token) {
                return Ok(a);
            }
        }
        let auth = self.login().await?;
        *self.auth_slot() = Some(auth.clone());
        Ok(auth)
    }

    async fn login(&self) -> Result<Auth, RestError> {
        match &self.creds {
            RocketChatAuth::Password { username, password } => {
                let url = format!("{}/api/v1/login", self.base);
                // `{"username": …}` (or `{"email": …}`) is what rest-typings' `isLoginProps`
                // accepts; its `user` form must be an object.
                let key = if username.contains('@') {
                    "email"
                } else {
                    "username"
                };
                let body = json!({ key: username, "password": password });
                let resp = self
                    .send_once("login", self.http.post(&url).json(&body))
                    .await?;
                let login: LoginResponse = decode("login", resp)?;
                let name = login
                    .data
                    .me
                    .and_then(|m| m.username)
                    .unwrap_or_else(|| username.clone());
                Ok(Auth {
                    user_id: login.data.user_id,
                    token: login.data.auth_token,
                    username: name,
                })
            }
            RocketChatAuth::Token {
                user_id,
                auth_token,
            } => {
                let url = format!("{}/api/v1/me", self.base);
                let req = self
                    .http
                    .get(&url)
                    .header("X-User-Id", user_id)
                    .header("X-Auth-Token", auth_token);
                let me: WireMe = decode("me", self.send_once("me", req).await?)?;
                Ok(Auth {
                    user_id: me.id.unwrap_or_else(|| user_id.clone()),
                    token: auth_token.clone(),
                    username: me.username.ok_or_else(|| RestError::BadResponse {
                        action: "me".into(),
                        detail: "no username".into(),
                    })?,
                })
            }
        }
    }

    /// One request without retries; maps HTTP failures to [`RestError`].
    async fn send_once(&self, action: &str, req: RequestBuilder) -> Result<Value, RestError> {
        let resp = req.send().await.map_err(|e| RestError::Transport {
            action: action.to_string(),
            detail: transport_detail(&e),
        })?;
        classify(action, resp).await
    }

    /// An authenticated call with the retry rules: a 401 logs in again once (password
    /// logins only: a personal access token cannot be renewed); 429 and 5xx wait
    /// (`Retry-After` or 1 s, 2 s, 4 s) and retry; a connection that could not even be
    /// opened is retried the same way. Timeouts are not retried: the server may have acted.
    pub async fn call(
        &self,
        action: &str,
        build: impl Fn(&reqwest::Client, &Auth) -> RequestBuilder,
    ) -> Result<Value, RestError> {
        let mut auth = self.auth().await?;
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = build(&self.http, &auth)
                .header("X-User-Id", &auth.user_id)
                .header("X-Auth-Token", &auth.token);
            let resp = req.send().await;
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
            if status == StatusCode::UNAUTHORIZED
                && !relogged
                && matches!(self.creds, RocketChatAuth::Password { .. })
            {
                tracing::info!(action, "auth token rejected; logging in again");
                relogged = true;
                auth = self.relogin(Some(&auth.token)).await?;
                continue;
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < MAX_ATTEMPTS
            {
                let wait =
                    crate::connector::http::retry_after(&resp).unwrap_or_else(|| backoff(attempt));
                if wait <= MAX_RETRY_AFTER {
                    tracing::warn!(action, status = status.as_u16(), ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return classify(action, resp).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, RestError> {
        let url = self.url(path);
        let v = self
            .call(path, |http, _| http.get(&url).query(query))
            .await?;
        decode(path, v)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, RestError> {
        let url = self.url(path);
        let action = path.split('/').next().unwrap_or(path);
        let v = self
            .call(action, |http, _| {
                http.request(Method::POST, &url).json(body)
            })
            .await?;
        decode(action, v)
    }

    /// Multipart POST; `form` is rebuilt for each attempt.
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        path: &str,
        form: impl Fn() -> reqwest::multipart::Form,
    ) -> Result<T, RestError> {
        let url = self.url(path);
        let action = path.split('/').next().unwrap_or(path);
        let v = self
            .call(action, |http, _| http.post(&url).multipart(form()))
            .await?;
        decode(action, v)
    }

    /// `GET /api/info` (no auth): the server version, if it says.
    pub async fn server_version(&self) -> Result<Option<String>, RestError> {
        let url = format!("{}/api/info", self.base);
        let v = self.send_once("info", self.http.get(&url)).await?;
        let info: super::wire::InfoResponse = decode("info", v)?;
        Ok(info.version.or(info.info.and_then(|i| i.version)))
    }

    /// Streams `url_path` (a server-relative `/file-upload/…` link) into `dest`, failing when
    /// it grows past `limit` bytes. Writes a temporary file first and renames it, so a partial
    /// download never looks like a file.
    pub async fn download(
        &self,
        url_path: &str,
        dest: &Path,
        limit: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, DownloadError> {
        let url = if url_path.starts_with("http://") || url_path.starts_with("https://") {
            // Only our own server gets our token.
            if !url_path.starts_with(&format!("{}/", self.base)) {
                return Err(DownloadError::Failed(
                    "link points to another server".into(),
                ));
            }
            url_path.to_string()
        } else {
            format!("{}/{}", self.base, url_path.trim_start_matches('/'))
        };
        let request = async {
            let auth = self
                .auth()
                .await
                .map_err(|e| DownloadError::Failed(e.to_string()))?;
            self.http
                .get(&url)
                .header("X-User-Id", &auth.user_id)
                .header("X-Auth-Token", &auth.token)
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

/// The message of an error body (`{"error": …}` or `{"message": …}`), else the raw text cut
/// short. Bodies never contain our secrets (the server does not echo tokens).
fn error_detail(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        for k in ["error", "message", "reason"] {
            if let Some(s) = v.get(k).and_then(Value::as_str) {
                let kind = v.get("errorType").and_then(Value::as_str);
                return match kind {
                    Some(kind) if kind != s => format!("{s} ({kind})"),
                    _ => s.to_string(),
                };
            }
        }
    }
    crate::text::truncate(text.trim(), 200)
}

/// Maps a response to its JSON body or a [`RestError`]: 401 (and 403 on `login`) is
/// `Unauthorized`, other failures and `{"success": false}` bodies are `Status`.
async fn classify(action: &str, resp: reqwest::Response) -> Result<Value, RestError> {
    let status = resp.status();
    let text = resp.text().await.map_err(|e| RestError::Transport {
        action: action.to_string(),
        detail: transport_detail(&e),
    })?;
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN && action == "login" {
        return Err(RestError::Unauthorized {
            action: action.to_string(),
            detail: error_detail(&text),
        });
    }
    let failed = |status: StatusCode| RestError::Status {
        action: action.to_string(),
        status: status.as_u16(),
        detail: error_detail(&text),
    };
    if !status.is_success() {
        return Err(failed(status));
    }
    let value: Value = serde_json::from_str(&text).map_err(|e| RestError::BadResponse {
        action: action.to_string(),
        detail: e.to_string(),
    })?;
    if value.get("success") == Some(&Value::Bool(false)) {
        return Err(failed(status));
    }
    Ok(value)
}

/// reqwest's error text can include the URL; ours never carries secrets in the URL, but keep
/// it short and without the query string anyway.
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
