//! Login tokens of the web chat: which user a bearer token belongs to.
//!
//! Owns: generating tokens for listed users that have none in the configuration, keeping them
//! in `<runtime_dir>/webchat-<name>.tokens.json` (mode 0600) so links keep working across
//! restarts, and the constant-time lookup of a presented token.
//! Must not import: the HTTP server or the dispatcher; it only maps strings to user names.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;

use super::wire::TokenFile;

/// 32 bytes from the OS CSPRNG: 43 url-safe characters.
const TOKEN_BYTES: usize = 32;

/// Every user's token, fixed for the life of the connector.
#[derive(Clone)]
pub struct Tokens {
    /// (user, token), sorted by user.
    entries: Vec<(String, String)>,
}

impl Tokens {
    /// Tokens from the configuration win; users without one get the token stored in the
    /// tokens file, or a fresh one that is written there. A corrupt file is moved aside (its
    /// tokens are regenerated and the new links printed at start) rather than stopping the
    /// daemon.
    pub fn load_or_generate(
        connector: &str,
        configured: &BTreeMap<String, String>,
        users: &[String],
        runtime_dir: &Path,
    ) -> anyhow::Result<Tokens> {
        let path = tokens_path(runtime_dir, connector);
        let mut stored = read_token_file(&path)?;
        let mut changed = false;
        let mut entries = Vec::new();
        for user in users {
            let token = match configured.get(user) {
                Some(t) => t.clone(),
                None => match stored.tokens.get(user) {
                    Some(t) if t.len() >= 32 => t.clone(),
                    _ => {
                        let t = generate_token();
                        stored.tokens.insert(user.clone(), t.clone());
                        changed = true;
                        t
                    }
                },
            };
            entries.push((user.clone(), token));
        }
        if changed {
            std::fs::create_dir_all(runtime_dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", runtime_dir.display()))?;
            let bytes = serde_json::to_vec_pretty(&stored).expect("token file serializes");
            crate::state::write_atomic(&path, &bytes)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        if path.exists() {
            // The file may predate us or have been copied with a looser mode: it holds
            // credentials, so only the owner may read it.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| anyhow::anyhow!("chmod 0600 {}: {e}", path.display()))?;
        }
        entries.sort();
        Ok(Tokens { entries })
    }

    /// The user a presented token belongs to. Compares against every token without an early
    /// exit, so the time taken says nothing about which token or how much of it matched.
    pub fn user_for(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (user, token) in &self.entries {
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                found = Some(user.as_str());
            }
        }
        found
    }

    /// (user, token) pairs, sorted by user.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}

pub fn tokens_path(runtime_dir: &Path, connector: &str) -> PathBuf {
    runtime_dir.join(format!("webchat-{connector}.tokens.json"))
}

fn read_token_file(path: &Path) -> anyhow::Result<TokenFile> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<TokenFile>(&bytes) {
            Ok(file) => Ok(file),
            Err(e) => {
                let aside = path.with_extension(format!(
                    "json.corrupt-{}",
                    crate::model::epoch_ms(std::time::SystemTime::now())
                ));
                std::fs::rename(path, &aside).map_err(|err| {
                    anyhow::anyhow!(
                        "{} is corrupt ({e}) and could not be moved aside: {err}",
                        path.display()
                    )
                })?;
                tracing::warn!(
                    file = %path.display(),
                    aside = %aside.display(),
                    error = %e,
                    "web chat tokens file is corrupt; moved it aside and generating new tokens"
                );
                Ok(TokenFile::default())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Equality whose running time depends only on the length of `presented`.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, &b) in presented.iter().enumerate() {
        let e = expected.get(i).copied().unwrap_or(0);
        diff |= usize::from(b ^ e);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        // A prefix padded with NULs must not match (the padding value of the loop).
        assert!(!constant_time_eq(b"abc\0", b"abc"));
    }

    #[test]
    fn generated_tokens_are_long_url_safe_and_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.len() >= 32, "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_tokens_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let path = tokens_path(dir.path(), "web");
        std::fs::write(&path, b"{broken").unwrap();
        let tokens =
            Tokens::load_or_generate("web", &BTreeMap::new(), &["alice".into()], dir.path())
                .unwrap();
        assert_eq!(tokens.entries().len(), 1);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .count();
        assert_eq!(aside, 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn configured_token_wins_and_lookup_finds_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let configured = BTreeMap::from([("bob".to_string(), "b".repeat(20))]);
        let tokens = Tokens::load_or_generate(
            "web",
            &configured,
            &["alice".into(), "bob".into()],
            dir.path(),
        )
        .unwrap();
        assert_eq!(tokens.user_for(&"b".repeat(20)), Some("bob"));
        let alice = &tokens.entries()[0];
        assert_eq!(alice.0, "alice");
        assert_eq!(tokens.user_for(&alice.1), Some("alice"));
        assert_eq!(tokens.user_for("nope"), None);
        // Only the generated token is stored; the configured one stays in the config.
        let stored: TokenFile =
            serde_json::from_slice(&std::fs::read(tokens_path(dir.path(), "web")).unwrap())
                .unwrap();
        assert_eq!(stored.tokens.keys().collect::<Vec<_>>(), ["alice"]);
    }
}
