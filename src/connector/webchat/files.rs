//! Files the bot sends into the web chat (`Connector::upload`, `agent-chat-gateway send
//! --attach`): copied into `<runtime_dir>/webchat-<name>.files/` and served to signed-in users.
//!
//! Owns: the copies on disk (mode 0600, folder 0700; those of messages restored from the
//! history are kept across restarts, the rest removed at start), their bounds (size of one file, number
//! and total size of all; the oldest go first), the names shown for them, and the content type
//! they are served with.
//! Must not import: the HTTP server; it serves bytes the server asks for.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;

/// Bounds of the store.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_file: u64,
    pub max_total: u64,
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file: 25 * 1024 * 1024,
            max_total: 200 * 1024 * 1024,
            max_files: 200,
        }
    }
}

/// One stored file.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFile {
    /// Random and url-safe: the file's address under `/api/files/`.
    pub id: String,
    /// Name shown and offered for download (sanitised).
    pub name: String,
    pub size: u64,
    pub content_type: &'static str,
    path: PathBuf,
}

impl StoredFile {
    /// Images render in the page; anything else is only offered as a download.
    pub fn inline(&self) -> bool {
        self.content_type.starts_with("image/")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is {size} bytes; the web chat takes files up to {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

pub struct FileStore {
    dir: PathBuf,
    limits: Limits,
    /// Oldest first.
    files: Mutex<VecDeque<StoredFile>>,
}

impl FileStore {
    /// Opens the store with the files of an earlier run that `keep` names — `(id, name)` of
    /// the files of messages restored from the history, oldest first — and removes every
    /// other file in the folder (they belonged to messages that are gone).
    pub fn open(
        dir: PathBuf,
        limits: Limits,
        keep: &[(String, String)],
    ) -> Result<FileStore, FileError> {
        let io = |source| FileError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        // Only ids this store could have made: the journal is ours, but a damaged or edited
        // one must not name a path outside the folder.
        let wanted: std::collections::HashSet<&str> = keep
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| valid_id(id))
            .collect();
        for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
            let name = entry.file_name();
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file && name.to_str().is_some_and(|n| wanted.contains(n)) {
                continue;
            }
            let path = entry.path();
            let removed = if is_file {
                std::fs::remove_file(&path)
            } else {
                std::fs::remove_dir_all(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(file = %path.display(), error = %e, "web chat: removing an old file failed");
            }
        }
        let mut files = VecDeque::new();
        for (id, name) in keep.iter().filter(|(id, _)| wanted.contains(id.as_str())) {
            let path = dir.join(id);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if files.iter().any(|f: &StoredFile| &f.id == id) {
                continue;
            }
            // Cleaned like a new file's name: it goes into headers.
            let name = display_name(Path::new(name));
            files.push_back(StoredFile {
                id: id.clone(),
                content_type: content_type(&name),
                name,
                size: meta.len(),
                path,
            });
        }
        Ok(FileStore {
            dir,
            limits,
            files: Mutex::new(files),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<StoredFile>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies `source` into the store, dropping the oldest files beyond the bounds.
    pub async fn store(&self, source: &Path) -> Result<StoredFile, FileError> {
        let io = |e| FileError::Io {
            path: source.to_path_buf(),
            source: e,
        };
        let meta = tokio::fs::metadata(source).await.map_err(io)?;
        if !meta.is_file() {
            return Err(FileError::NotAFile {
                path: source.to_path_buf(),
            });
        }
        if meta.len() > self.limits.max_file {
            return Err(FileError::TooLarge {
                path: source.to_path_buf(),
                size: meta.len(),
                limit: self.limits.max_file,
            });
        }
        let id = random_id();
        let path = self.dir.join(&id);
        let size = tokio::fs::copy(source, &path).await.map_err(io)?;
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(io)?;
        let name = display_name(source);
        let file = StoredFile {
            id,
            content_type: content_type(&name),
            name,
            size,
            path,
        };
        let evicted = {
            let mut files = self.lock();
            files.push_back(file.clone());
            let mut evicted = Vec::new();
            let mut total: u64 = files.iter().map(|f| f.size).sum();
            while files.len() > 1
                && (files.len() > self.limits.max_files || total > self.limits.max_total)
            {
                let old = files.pop_front().expect("not empty");
                total -= old.size;
                evicted.push(old);
            }
            evicted
        };
        for old in evicted {
            if let Err(e) = tokio::fs::remove_file(&old.path).await {
                tracing::warn!(file = %old.path.display(), error = %e, "web chat: removing an old file failed");
            }
        }
        Ok(file)
    }

    pub fn get(&self, id: &str) -> Option<StoredFile> {
        self.lock().iter().find(|f| f.id == id).cloned()
    }

    /// The bytes of a stored file (bounded by `max_file`).
    pub async fn read(&self, file: &StoredFile) -> Result<Vec<u8>, FileError> {
        tokio::fs::read(&file.path)
            .await
            .map_err(|source| FileError::Io {
                path: file.path.clone(),
                source,
            })
    }
}

/// Files users sent (saved by the server as `<12 hex>-<name>` in the attachments folder) that
/// are older than `max_age`: removed at start so the folder does not grow forever. Younger
/// ones stay, as a message queued before a restart may still need its file. Returns how many
/// went; a file that cannot be removed is logged and skipped.
pub fn prune_attachments(dir: &Path, max_age: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.len() > 13
            && name.as_bytes()[12] == b'-'
            && name.bytes().take(12).all(|b| b.is_ascii_hexdigit());
        let old = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > max_age);
        if ours && old {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "web chat: removing an old attachment failed")
                }
            }
        }
    }
    removed
}

/// What [`random_id`] makes: 22 url-safe base64 characters.
fn valid_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The file's own name, reduced to characters that are safe in a header and on any file
/// system: it ends up in `Content-Disposition`.
pub fn display_name(path: &Path) -> String {
    let raw = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | ' ' | '(' | ')') {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let clean = clean.trim_matches(|c| c == '.' || c == ' ').to_string();
    if clean.is_empty() {
        "file".into()
    } else {
        clean
    }
}

/// By extension. SVG is deliberately not an image here: it can carry scripts.
fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" | "log" | "md" | "csv" | "diff" | "patch" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_for_headers() {
        assert_eq!(
            display_name(Path::new("/tmp/report (1).pdf")),
            "report (1).pdf"
        );
        assert_eq!(
            display_name(Path::new("/tmp/a\"b;c\r\n.txt")),
            "a_b_c__.txt"
        );
        assert_eq!(display_name(Path::new("/tmp/..")), "file");
        assert_eq!(display_name(Path::new("/tmp/résumé.md")), "r_sum_.md");
    }

    #[test]
    fn svg_is_not_served_as_an_image() {
        assert_eq!(content_type("x.svg"), "application/octet-stream");
        assert_eq!(content_type("X.PNG"), "image/png");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn only_old_attachments_of_ours_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let week = std::time::Duration::from_secs(7 * 24 * 3600);
        let make = |name: &str, age: std::time::Duration| {
            let p = dir.path().join(name);
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - age).unwrap();
            p
        };
        let old_ours = make("0123456789ab-log.txt", week * 2);
        let new_ours = make("0123456789ab-new.txt", week / 2);
        let old_other = make("someone-else.txt", week * 2);
        assert_eq!(prune_attachments(dir.path(), week), 1);
        assert!(!old_ours.exists());
        assert!(new_ours.exists());
        assert!(old_other.exists());
        assert_eq!(prune_attachments(&dir.path().join("missing"), week), 0);
    }

    #[tokio::test]
    async fn oldest_files_go_first_beyond_the_bounds() {
        let src = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_file: 10,
            max_total: 25,
            max_files: 2,
        };
        let store = FileStore::open(dir.path().join("files"), limits, &[]).unwrap();
        let write = |name: &str, len: usize| {
            let p = src.path().join(name);
            std::fs::write(&p, vec![b'x'; len]).unwrap();
            p
        };
        let a = store.store(&write("a.txt", 10)).await.unwrap();
        let b = store.store(&write("b.txt", 10)).await.unwrap();
        let c = store.store(&write("c.txt", 10)).await.unwrap();
        assert!(store.get(&a.id).is_none(), "count bound");
        assert!(!a.path.exists());
        assert_eq!(store.read(&b).await.unwrap().len(), 10);
        assert_eq!(store.get(&c.id).unwrap().name, "c.txt");
        let mode = std::fs::metadata(&c.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let big = store.store(&write("big.bin", 11)).await.unwrap_err();
        assert!(big.to_string().contains("up to 10 bytes"), "{big}");
        let not_file = store.store(src.path()).await.unwrap_err();
        assert!(matches!(not_file, FileError::NotAFile { .. }));

        // A new store keeps what the restored history names (here `c`, and an id that is not
        // one of ours, which is ignored) and removes the rest.
        std::fs::write(dir.path().join("outside"), "x").unwrap();
        let keep = [
            (c.id.clone(), c.name.clone()),
            ("../outside".to_string(), "x".to_string()),
        ];
        let again = FileStore::open(dir.path().join("files"), limits, &keep).unwrap();
        assert!(again.get(&b.id).is_none());
        assert_eq!(again.get(&c.id).unwrap().size, 10);
        assert_eq!(
            again.read(&again.get(&c.id).unwrap()).await.unwrap().len(),
            10
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("files")).unwrap().count(),
            1
        );
        assert!(dir.path().join("outside").exists());
        let empty = FileStore::open(dir.path().join("files"), limits, &[]).unwrap();
        assert!(empty.get(&c.id).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("files")).unwrap().count(),
            0
        );
    }
}
