//! The host side of ACP's file callbacks (`fs/read_text_file`, `fs/write_text_file`): where
//! the agent may reach, and the reads and writes themselves.
//!
//! Owns: confining a callback's path to the session's working directory (absolute, every
//! symlink resolved, the file's parent for a write) and the bounded read (1-based `line`,
//! `limit` lines) and the write.
//! Knows nothing about: the policy: a callback reaches here only after the same gate question
//! as a tool call (`Read {file_path}` / `Write {file_path, content}`), asked by the session.
//!
//! Terminals (`terminal/*`) are not offered: the agent runs its own commands, which its
//! permission requests cover.

use std::io;
use std::path::{Path, PathBuf};

/// Largest file a read callback returns: a bigger one is refused, not cut.
pub const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// Why a callback was refused; the text goes back to the agent.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0} is outside the working directory")]
    Outside(PathBuf),
    #[error("the path must be absolute: {0}")]
    Relative(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is larger than {MAX_READ_BYTES} bytes")]
    TooLarge(PathBuf),
}

/// The real path `path` names, if it is inside `root` (itself a real path). For a file that
/// does not exist yet (`for_write`), its parent must exist and be inside.
pub fn confine(root: &Path, path: &Path, for_write: bool) -> Result<PathBuf, HostError> {
    if !path.is_absolute() {
        return Err(HostError::Relative(path.to_path_buf()));
    }
    let io_err = |source| HostError::Io {
        path: path.to_path_buf(),
        source,
    };
    let real = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if for_write && e.kind() == io::ErrorKind::NotFound => {
            // A new file: its name must be a plain final component (no `..`), in a real dir.
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(HostError::Outside(path.to_path_buf()));
            };
            if path.ends_with("..") {
                return Err(HostError::Outside(path.to_path_buf()));
            }
            std::fs::canonicalize(parent).map_err(io_err)?.join(name)
        }
        Err(e) => return Err(io_err(e)),
    };
    if real.starts_with(root) {
        Ok(real)
    } else {
        Err(HostError::Outside(path.to_path_buf()))
    }
}

/// The text of `path` (already confined), from 1-based `line`, at most `limit` lines.
pub fn read(path: &Path, line: Option<u32>, limit: Option<u32>) -> Result<String, HostError> {
    let io_err = |source| HostError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.len() > MAX_READ_BYTES {
        return Err(HostError::TooLarge(path.to_path_buf()));
    }
    let text = std::fs::read_to_string(path).map_err(io_err)?;
    if line.is_none() && limit.is_none() {
        return Ok(text);
    }
    let skip = line.map_or(0, |l| l.saturating_sub(1) as usize);
    let take = limit.map_or(usize::MAX, |l| l as usize);
    Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
}

/// Writes `content` to `path` (already confined), replacing it.
pub fn write(path: &Path, content: &str) -> Result<(), HostError> {
    std::fs::write(path, content).map_err(|source| HostError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_stay_inside_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("a.txt"), "one\ntwo\nthree\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();

        assert_eq!(
            confine(&root, &root.join("a.txt"), false).unwrap(),
            root.join("a.txt")
        );
        assert_eq!(
            confine(&root, &root.join("sub/new.txt"), true).unwrap(),
            root.join("sub/new.txt")
        );
        for outside in [
            PathBuf::from("/etc/passwd"),
            root.join("link"),
            root.join("../x"),
            root.join("sub/../../x"),
        ] {
            assert!(
                matches!(
                    confine(&root, &outside, true),
                    Err(HostError::Outside(_) | HostError::Io { .. })
                ),
                "{outside:?}"
            );
        }
        assert!(matches!(
            confine(&root, Path::new("a.txt"), false),
            Err(HostError::Relative(_))
        ));
        // A new file in a directory that does not exist is not created either.
        assert!(confine(&root, &root.join("nope/x"), true).is_err());
    }

    #[test]
    fn reads_honour_line_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "one\ntwo\nthree\n").unwrap();
        assert_eq!(read(&f, None, None).unwrap(), "one\ntwo\nthree\n");
        assert_eq!(read(&f, Some(2), Some(1)).unwrap(), "two\n");
        assert_eq!(read(&f, Some(3), None).unwrap(), "three\n");
    }
}
