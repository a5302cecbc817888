//! The daemon's log file: always `gateway.log` (so `tail -f` and scripts keep working),
//! rotated by size to `gateway.log.1` … `gateway.log.<keep>`, the oldest dropped. Rotation
//! happens on the logging thread (`tracing_appender::non_blocking`), between lines, never
//! in a request path. Under systemd the daemon logs to the journal instead.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file that rotates itself once it has grown past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    keep: usize,
}

impl RotatingFile {
    /// Opens (appending, 0600) `path`, counting what it already holds.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes: max_bytes.max(1),
            keep,
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(self.numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
            self.file = open_append(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Write for RotatingFile {
    /// `non_blocking` hands over one formatted event per call, so a rotation falls between
    /// lines.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.max_bytes {
            // A failed rotation must not lose the line: keep writing to the current file.
            if let Err(e) = self.rotate() {
                let _ = writeln!(self.file, "log rotation failed: {e}");
            }
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.log");
        let mut log = RotatingFile::open(&path, 10, 2).unwrap();
        for line in ["one 12345\n", "two 12345\n", "three 123\n", "four 1234\n"] {
            log.write_all(line.as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&path), "four 1234\n");
        assert_eq!(read(&dir.path().join("gateway.log.1")), "three 123\n");
        assert_eq!(read(&dir.path().join("gateway.log.2")), "two 12345\n");
        assert!(
            !dir.path().join("gateway.log.3").exists(),
            "only `keep` old files"
        );
        // Reopened, it counts what the file already holds.
        let mut log = RotatingFile::open(&path, 10, 2).unwrap();
        log.write_all(b"five 1234\n").unwrap();
        assert_eq!(read(&path), "five 1234\n");
        assert_eq!(read(&dir.path().join("gateway.log.1")), "four 1234\n");
    }
}
