//! Incoming images and files: downloaded from the URL the implementation gives, with a size
//! cap and a timeout, under a sanitised name inside the connector's attachments folder.
//!
//! agentgate wrote QQ file names straight to disk (path traversal); here a name from chat
//! never contributes a path separator, a leading dot or a control character.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::config::AttachmentLimits;
use crate::model::Attachment;

/// An image or file segment worth downloading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub name: String,
    pub url: String,
}

/// Two clients: QQ's CDN may need the operator's proxy, but a URL served by the
/// implementation on this machine must not go through it.
pub struct Downloader {
    proxied: reqwest::Client,
    direct: reqwest::Client,
}

impl Downloader {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Downloader {
            proxied: reqwest::Client::builder().build()?,
            direct: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    /// Downloads `remote` into `dir` as `<prefix>-<sanitised name>`.
    pub async fn fetch(
        &self,
        remote: &Remote,
        dir: &Path,
        prefix: &str,
        limits: &AttachmentLimits,
    ) -> Result<Attachment, String> {
        let url = reqwest::Url::parse(&remote.url).map_err(|e| format!("bad URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("unsupported URL scheme '{}'", url.scheme()));
        }
        let client = match url.host_str() {
            Some("localhost" | "127.0.0.1" | "[::1]" | "::1") => &self.direct,
            _ => &self.proxied,
        };
        let name = sanitize_file_name(&remote.name);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(format!("{prefix}-{name}"));
        let work = download(client, url, &path, limits.max_bytes);
        match tokio::time::timeout(limits.download_timeout, work).await {
            Ok(Ok(())) => Ok(Attachment { name, path }),
            Ok(Err(e)) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(format!(
                    "download timed out after {}s",
                    limits.download_timeout.as_secs()
                ))
            }
        }
    }
}

async fn download(
    client: &reqwest::Client,
    url: reqwest::Url,
    path: &PathBuf,
    max_bytes: u64,
) -> Result<(), String> {
    let too_big = || format!("larger than the {} MB limit", max_bytes / (1024 * 1024));
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("download failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("download failed: HTTP {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_big());
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let mut written: u64 = 0;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("download failed: {e}"))?;
        written += chunk.len() as u64;
        // The header may lie or be absent: count what actually arrives.
        if written > max_bytes {
            return Err(too_big());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A file name safe to join onto a folder: the last component only, no control characters,
/// no leading dots, only letters, digits and `._-+ ` kept, at most 80 characters (the
/// extension survives the cut). Never empty.
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim().to_string();
    let cleaned = if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "file".to_string()
    } else {
        cleaned
    };
    const MAX: usize = 80;
    if cleaned.chars().count() <= MAX {
        return cleaned;
    }
    let ext: String = match cleaned.rfind('.') {
        Some(i) if cleaned.len() - i <= 10 => cleaned[i..].to_string(),
        _ => String::new(),
    };
    let stem: String = cleaned.chars().take(MAX - ext.chars().count()).collect();
    format!("{stem}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises_hostile_names() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\x.bat"), "x.bat");
        assert_eq!(sanitize_file_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name(""), "file");
        assert_eq!(sanitize_file_name("a\u{0}b\nc.txt"), "a_b_c.txt");
        assert_eq!(sanitize_file_name("报告 v2.pdf"), "报告 v2.pdf");
        let long = format!("{}.tar.gz", "x".repeat(200));
        let s = sanitize_file_name(&long);
        assert_eq!(s.chars().count(), 80);
        assert!(s.ends_with(".gz"));
    }

    proptest::proptest! {
        #[test]
        fn sanitised_names_stay_inside_the_folder(name in ".{0,120}") {
            let s = sanitize_file_name(&name);
            proptest::prop_assert!(!s.is_empty() && !s.starts_with('.'));
            proptest::prop_assert!(!s.contains('/') && !s.contains('\\'));
            proptest::prop_assert!(s.chars().all(|c| !c.is_control()));
            let joined = Path::new("/base").join(&s);
            proptest::prop_assert_eq!(joined.parent(), Some(Path::new("/base")));
        }
    }
}
