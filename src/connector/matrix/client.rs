//! Matrix client-server API over reqwest: the access token on every call (a password login
//! renews it once on a 401), rate limits (`M_LIMIT_EXCEEDED` with `retry_after_ms`) and 5xx
//! retried, transaction ids reused across retries so a retried send is never a second event,
//! and bounded media downloads.
//!
//! Owns: the current access token. Never logs a token or a password.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::config::MatrixAuth;
use super::wire::{
    ErrorBody, EventIdResponse, JoinedMembers, LoginResponse, MessagesResponse, Profile,
    RoomIdResponse, SyncResponse, UploadResponse, WhoAmI,
};
pub use crate::connector::http::DownloadError;

/// Attempts for a call that keeps getting rate-limited, 5xx, or cannot connect at all.
const MAX_ATTEMPTS: u32 = 5;
/// Longest wait a rate limit may ask for; a longer one fails the call instead of hanging a
/// turn.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Ordinary calls; `/sync` gets its long-poll timeout on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("{action}: not authorised ({detail})")]
    Unauthorized { action: String, detail: String },
    #[error("{action}: HTTP {status} {errcode}: {detail}")]
    Status {
        action: String,
        status: u16,
        errcode: String,
        detail: String,
    },
    #[error("{action}: {detail}")]
    Transport { action: String, detail: String },
    #[error("{action}: unexpected response: {detail}")]
    BadResponse { action: String, detail: String },
}

impl MatrixError {
    /// The server says the thing asked for does not exist (unknown room, alias or event).
    pub fn is_not_found(&self) -> bool {
        matches!(self, MatrixError::Status { status: 404, .. })
            || matches!(self, MatrixError::Status { errcode, .. } if errcode == "M_NOT_FOUND")
    }

    /// Whether retrying later may help (server down, network fault, overload).
    pub fn is_transient(&self) -> bool {
        match self {
            MatrixError::Transport { .. } => true,
            MatrixError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A request body, rebuilt for each attempt.
#[derive(Clone)]
pub enum Body {
    None,
    Json(Value),
    Bytes { data: bytes::Bytes, mime: String },
}

/// One API call and how it may be retried.
pub struct Call<'a> {
    pub action: &'a str,
    pub method: Method,
    /// From the server root: `/_matrix/client/v3/...`.
    pub path: &'a str,
    pub query: &'a [(&'a str, String)],
    pub body: Body,
    pub timeout: Duration,
    /// Safe to repeat after a timeout (the server may have acted on the first attempt).
    pub idempotent: bool,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    user_id: String,
    auth: MatrixAuth,
    token: Mutex<Option<String>>,
    /// One login at a time; others wait and reuse its token.
    login_lock: tokio::sync::Mutex<()>,
}

/// Percent-encodes one path segment (room ids hold `!` and `:`, aliases `#`, event ids `$`).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(base: &str, user_id: &str, auth: MatrixAuth) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let token = match &auth {
            MatrixAuth::Token(t) => Some(t.clone()),
            MatrixAuth::Password(_) => None,
        };
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            user_id: user_id.to_string(),
            auth,
            token: Mutex::new(token),
            login_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn token_slot(&self) -> MutexGuard<'_, Option<String>> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn token(&self) -> Result<String, MatrixError> {
        if let Some(t) = self.token_slot().clone() {
            return Ok(t);
        }
        self.relogin(None).await
    }

    /// Logs in with the password unless someone already replaced `stale`.
    async fn relogin(&self, stale: Option<&str>) -> Result<String, MatrixError> {
        let MatrixAuth::Password(password) = &self.auth else {
            return Err(MatrixError::Unauthorized {
                action: "login".into(),
                detail: "the access token was rejected".into(),
            });
        };
        let _guard = self.login_lock.lock().await;
        if let Some(t) = self.token_slot().clone() {
            if stale.is_none_or(|s| s != t) {
                return Ok(t);
            }
        }
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.user_id},
            "password": password,
            "initial_device_display_name": "agent-chat-gateway",
        });
        let url = format!("{}/_matrix/client/v3/login", self.base);
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport("login", &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| transport("login", &e))?;
        if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            return Err(MatrixError::Unauthorized {
                action: "login".into(),
                detail: error_body(&text).error,
            });
        }
        let login: LoginResponse = decode("login", status_ok("login", status, &text)?)?;
        if login.user_id != self.user_id {
            tracing::warn!(configured = %self.user_id, got = %login.user_id, "login returned another user id");
        }
        *self.token_slot() = Some(login.access_token.clone());
        Ok(login.access_token)
    }

    /// An authenticated call with the retry rules: a 401 logs in again once (password
    /// only); 429 waits `retry_after_ms` (or `Retry-After`), 5xx and refused connections
    /// back off; then retry, up to [`MAX_ATTEMPTS`]. Timeouts are not retried unless
    /// `idempotent`: the server may have acted.
    pub async fn call<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, MatrixError> {
        let Call {
            action,
            method,
            path,
            query,
            body,
            timeout,
            idempotent,
        } = call;
        let url = format!("{}{path}", self.base);
        let mut token = self.token().await?;
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .query(query)
                .bearer_auth(&token)
                .timeout(timeout);
            req = match &body {
                Body::None => req,
                Body::Json(v) => req.json(v),
                Body::Bytes { data, mime } => req
                    .header(reqwest::header::CONTENT_TYPE, mime)
                    .body(data.clone()),
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if (e.is_connect() || idempotent) && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(transport(action, &e)),
            };
            let status = resp.status();
            let header_wait = crate::connector::http::retry_after(&resp);
            let text = resp.text().await.map_err(|e| transport(action, &e))?;
            if status == StatusCode::UNAUTHORIZED {
                if !relogged && matches!(self.auth, MatrixAuth::Password(_)) {
                    tracing::info!(action, "access token rejected; logging in again");
                    relogged = true;
                    token = self.relogin(Some(&token)).await?;
                    continue;
                }
                return Err(MatrixError::Unauthorized {
                    action: action.to_string(),
                    detail: error_body(&text).error,
                });
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < MAX_ATTEMPTS
            {
                let wait = error_body(&text)
                    .retry_after_ms
                    .map(Duration::from_millis)
                    .or(header_wait)
                    .unwrap_or_else(|| backoff(attempt));
                if wait <= MAX_RETRY_AFTER {
                    tracing::warn!(action, status = status.as_u16(), ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return decode(action, status_ok(action, status, &text)?);
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        action: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, MatrixError> {
        self.call(Call {
            action,
            method: Method::GET,
            path,
            query,
            body: Body::None,
            timeout: CALL_TIMEOUT,
            idempotent: true,
        })
        .await
    }

    pub async fn whoami(&self) -> Result<String, MatrixError> {
        let w: WhoAmI = self
            .get("whoami", "/_matrix/client/v3/account/whoami", &[])
            .await?;
        Ok(w.user_id)
    }

    pub async fn display_name(&self, user_id: &str) -> Result<Option<String>, MatrixError> {
        let path = format!("/_matrix/client/v3/profile/{}", enc(user_id));
        let p: Profile = self.get("profile", &path, &[]).await?;
        Ok(p.displayname)
    }

    /// One `/sync`: long-polls up to `timeout` for news after `since`. Not retried here: the
    /// session loop reconnects with its backoff.
    pub async fn sync(
        &self,
        since: Option<&str>,
        filter: &str,
        timeout: Duration,
    ) -> Result<SyncResponse, MatrixError> {
        let mut q = vec![
            ("filter", filter.to_string()),
            ("timeout", timeout.as_millis().to_string()),
        ];
        if let Some(s) = since {
            q.push(("since", s.to_string()));
        }
        self.call(Call {
            action: "sync",
            method: Method::GET,
            path: "/_matrix/client/v3/sync",
            query: &q,
            body: Body::None,
            timeout: timeout + Duration::from_secs(30),
            idempotent: false,
        })
        .await
    }

    /// Older events of `room` from `from` backwards (`dir=b`), newest first.
    pub async fn messages_before(
        &self,
        room: &str,
        from: &str,
        limit: usize,
    ) -> Result<MessagesResponse, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/messages", enc(room));
        let q = [
            ("from", from.to_string()),
            ("dir", "b".to_string()),
            ("limit", limit.to_string()),
        ];
        self.get("messages", &path, &q).await
    }

    /// Thread `root` of `room`: the root event, and the latest `limit` events of the thread
    /// (`/relations/{root}/m.thread`, newest first).
    pub async fn thread(
        &self,
        room: &str,
        root: &str,
        limit: usize,
    ) -> Result<(Value, Vec<Value>), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(root));
        let root_event: Value = self.get("event", &path, &[]).await?;
        let path = format!(
            "/_matrix/client/v1/rooms/{}/relations/{}/m.thread",
            enc(room),
            enc(root)
        );
        let q = [("dir", "b".to_string()), ("limit", limit.to_string())];
        let replies: MessagesResponse = self.get("relations", &path, &q).await?;
        Ok((root_event, replies.chunk))
    }

    /// Sends one room event; `txn` makes a retried send the same event.
    pub async fn send(
        &self,
        room: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<String, MatrixError> {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{}/{txn}",
            enc(room),
            enc(event_type)
        );
        let r: EventIdResponse = self
            .call(Call {
                action: "send",
                method: Method::PUT,
                path: &path,
                query: &[],
                body: Body::Json(content.clone()),
                timeout: CALL_TIMEOUT,
                idempotent: true,
            })
            .await?;
        Ok(r.event_id)
    }

    pub async fn typing(&self, room: &str, on: bool) -> Result<(), MatrixError> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}",
            enc(room),
            enc(&self.user_id)
        );
        let body = if on {
            json!({"typing": true, "timeout": 30_000})
        } else {
            json!({"typing": false})
        };
        let _: Value = self
            .call(Call {
                action: "typing",
                method: Method::PUT,
                path: &path,
                query: &[],
                body: Body::Json(body),
                timeout: Duration::from_secs(5),
                idempotent: true,
            })
            .await?;
        Ok(())
    }

    /// Joins a room by id or alias (also accepts an invite); the room id.
    pub async fn join(&self, room: &str) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/join/{}", enc(room));
        let r: RoomIdResponse = self
            .call(Call {
                action: "join",
                method: Method::POST,
                path: &path,
                query: &[],
                body: Body::Json(json!({})),
                timeout: CALL_TIMEOUT,
                idempotent: true,
            })
            .await?;
        Ok(r.room_id)
    }

    pub async fn resolve_alias(&self, alias: &str) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/directory/room/{}", enc(alias));
        let r: RoomIdResponse = self.get("directory", &path, &[]).await?;
        Ok(r.room_id)
    }

    pub async fn joined_member_count(&self, room: &str) -> Result<usize, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room));
        let m: JoinedMembers = self.get("joined_members", &path, &[]).await?;
        Ok(m.joined.len())
    }

    /// The room's `m.room.name`, if it has one.
    pub async fn room_name(&self, room: &str) -> Result<Option<String>, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(room));
        match self.get::<Value>("room name", &path, &[]).await {
            Ok(v) => Ok(v.get("name").and_then(Value::as_str).map(str::to_string)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads a file to the media repository; its `mxc://` URI.
    pub async fn upload(
        &self,
        name: &str,
        mime: &str,
        data: bytes::Bytes,
    ) -> Result<String, MatrixError> {
        let r: UploadResponse = self
            .call(Call {
                action: "upload",
                method: Method::POST,
                path: "/_matrix/media/v3/upload",
                query: &[("filename", name.to_string())],
                body: Body::Bytes {
                    data,
                    mime: mime.to_string(),
                },
                timeout: Duration::from_secs(300),
                idempotent: false,
            })
            .await?;
        Ok(r.content_uri)
    }

    /// Streams the media `mxc://server/id` into `dest` through the authenticated media API
    /// (spec 1.11; Synapse refuses unauthenticated downloads of new media), failing when it
    /// grows past `limit` bytes. A temporary file is renamed at the end, so a partial
    /// download never looks like a file.
    pub async fn download(
        &self,
        mxc: &str,
        dest: &Path,
        limit: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, DownloadError> {
        let (server, media) = mxc
            .strip_prefix("mxc://")
            .and_then(|r| r.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
            .ok_or_else(|| DownloadError::Failed(format!("not an mxc:// URI: {mxc}")))?;
        let url = format!(
            "{}/_matrix/client/v1/media/download/{}/{}",
            self.base,
            enc(server),
            enc(media)
        );
        let request = async {
            let token = self
                .token()
                .await
                .map_err(|e| DownloadError::Failed(e.to_string()))?;
            self.http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| DownloadError::Failed(transport("download", &e).to_string()))
        };
        crate::connector::http::download(request, dest, limit, timeout, |e| {
            transport("download", e).to_string()
        })
        .await
    }
}

fn decode<T: DeserializeOwned>(action: &str, v: Value) -> Result<T, MatrixError> {
    serde_json::from_value(v).map_err(|e| MatrixError::BadResponse {
        action: action.to_string(),
        detail: e.to_string(),
    })
}

fn error_body(text: &str) -> ErrorBody {
    serde_json::from_str(text).unwrap_or_else(|_| ErrorBody {
        error: crate::text::truncate(text.trim(), 200),
        ..Default::default()
    })
}

fn status_ok(action: &str, status: StatusCode, text: &str) -> Result<Value, MatrixError> {
    if !status.is_success() {
        let body = error_body(text);
        return Err(MatrixError::Status {
            action: action.to_string(),
            status: status.as_u16(),
            errcode: body.errcode,
            detail: body.error,
        });
    }
    serde_json::from_str(text).map_err(|e| MatrixError::BadResponse {
        action: action.to_string(),
        detail: e.to_string(),
    })
}

fn backoff(attempt: u32) -> Duration {
    crate::connector::http::backoff(Duration::from_millis(500), attempt)
}

/// reqwest's error text includes the URL, whose query may hold a sync token: keep the kind,
/// host and path only.
fn transport(action: &str, e: &reqwest::Error) -> MatrixError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let detail = match e.url() {
        Some(u) => format!("{kind} ({}{})", u.host_str().unwrap_or(""), u.path()),
        None => kind.to_string(),
    };
    MatrixError::Transport {
        action: action.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("!abc:localhost"), "%21abc%3Alocalhost");
        assert_eq!(enc("#room:x"), "%23room%3Ax");
    }

    #[test]
    fn rate_limit_bodies_carry_their_wait() {
        let b = error_body(
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many","retry_after_ms":1500}"#,
        );
        assert_eq!(b.errcode, "M_LIMIT_EXCEEDED");
        assert_eq!(b.retry_after_ms, Some(1500));
        let e = status_ok(
            "send",
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"x"}"#,
        )
        .unwrap_err();
        assert!(e.is_transient());
        assert!(!e.is_not_found());
    }
}
