//! What the platforms' REST clients (Rocket.Chat, Mattermost, Matrix) share: the wait before
//! a retry (the doubling backoff, the wait a server names in a header), a bounded download
//! of an attachment into a file, and a file read for an upload (`Upload`).
//!
//! Owns: those rules only. Each client keeps its own retry loop and its own request (URL,
//! credentials), since what may be retried and how a session is renewed differ per platform.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// A file the agent sends, read for an upload: its bytes, its name and its MIME type.
pub struct Upload {
    pub data: Vec<u8>,
    pub name: String,
    pub mime: &'static str,
}

impl Upload {
    pub async fn read(path: &Path) -> Result<Upload, crate::connector::ConnectorError> {
        let data = tokio::fs::read(path).await.map_err(|source| {
            crate::connector::ConnectorError::Attachment {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
            .to_string();
        Ok(Upload {
            data,
            name,
            mime: crate::connector::files::guess_mime(path),
        })
    }
}

/// Why an attachment was not saved.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0} bytes exceeds the limit")]
    TooLarge(u64),
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Failed(String),
}

/// Saves the body of the response `request` gets into `dest`, failing when it is or grows
/// past `limit` bytes, or when the whole exchange takes longer than `timeout`. The body goes
/// to `<dest>.part` first and is renamed at the end, so a partial download never looks like
/// a file (the part is removed on any failure). `transport` words a reqwest error without
/// what must not reach a log (a URL's query). The bytes written.
pub async fn download(
    request: impl Future<Output = Result<reqwest::Response, DownloadError>>,
    dest: &Path,
    limit: Option<u64>,
    timeout: Duration,
    transport: impl Fn(&reqwest::Error) -> String,
) -> Result<u64, DownloadError> {
    let failed = |e: std::io::Error| DownloadError::Failed(e.to_string());
    let tmp = dest.with_extension("part");
    let work = async {
        let mut resp = request.await?;
        if !resp.status().is_success() {
            return Err(DownloadError::Failed(format!(
                "HTTP {}",
                resp.status().as_u16()
            )));
        }
        if let (Some(limit), Some(len)) = (limit, resp.content_length()) {
            if len > limit {
                return Err(DownloadError::TooLarge(len));
            }
        }
        let mut file = tokio::fs::File::create(&tmp).await.map_err(failed)?;
        let mut written = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DownloadError::Failed(transport(&e)))?
        {
            written += chunk.len() as u64;
            if limit.is_some_and(|l| written > l) {
                return Err(DownloadError::TooLarge(written));
            }
            file.write_all(&chunk).await.map_err(failed)?;
        }
        file.flush().await.map_err(failed)?;
        drop(file);
        tokio::fs::rename(&tmp, dest).await.map_err(failed)?;
        Ok(written)
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(DownloadError::TimedOut),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// The wait before retry `attempt` (1-based) when the server named none: `first`, doubling,
/// at most 32 times `first`.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    first * (1 << attempt.saturating_sub(1).min(5))
}

/// A header holding whole seconds (`Retry-After`'s delay form, Mattermost's
/// `X-Ratelimit-Reset`); `None` when absent or not a number (an HTTP date is not honoured:
/// the caller backs off instead).
pub fn seconds_header(resp: &reqwest::Response, name: &str) -> Option<Duration> {
    let v = resp.headers().get(name)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `Retry-After` in seconds.
pub fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    seconds_header(resp, reqwest::header::RETRY_AFTER.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8).map(|a| backoff(s, a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(
            backoff(Duration::from_millis(500), 2),
            Duration::from_secs(1)
        );
    }
}
