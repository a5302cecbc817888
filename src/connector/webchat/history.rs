//! The web chat's history on disk, so a restart keeps what the page showed.
//!
//! Owns: the journal file (`webchat-<name>.history.jsonl` in the runtime dir, mode 0600), one
//! JSON line per *finished* message (a streaming bot message is written once its turn ends; a
//! later line with the same id replaces the earlier one), loading it within the hub's bounds
//! (a torn last line from a crash is skipped), and the writer thread that appends lines and
//! rewrites the file compacted when the hub asks.
//! Must not import: the HTTP server or the dispatcher; the hub calls into it.
//!
//! Why a writer thread: the hub is called under its lock from async tasks; disk I/O there
//! would stall them. Lines go through a bounded channel instead; if the disk cannot keep up
//! the line is dropped from the journal (never from the page) and a warning logged.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::hub::{FileRef, Message};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// One finished message, as stored.
#[derive(Serialize, Deserialize)]
struct Record {
    room: String,
    id: u64,
    from: String,
    text: String,
    /// Milliseconds since the Unix epoch.
    ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<FileRecord>,
}

#[derive(Serialize, Deserialize)]
struct FileRecord {
    id: String,
    name: String,
    size: u64,
    inline: bool,
}

/// The JSON line for a finished message of `room`.
pub fn line(room: &str, m: &Message) -> String {
    let record = Record {
        room: room.to_string(),
        id: m.id,
        from: m.from.clone(),
        text: m.text.clone(),
        ts: crate::model::epoch_ms(m.ts),
        file: m.file.as_ref().map(|f| FileRecord {
            id: f.id.clone(),
            name: f.name.clone(),
            size: f.size,
            inline: f.inline,
        }),
    };
    // A record of strings and integers always serialises.
    serde_json::to_string(&record).unwrap_or_default()
}

/// What a journal held, cut to the hub's bounds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rooms with their messages (oldest first), the most recently active room last.
    pub rooms: Vec<(String, Vec<Message>)>,
    /// The largest message id seen (new ids must come after it).
    pub max_id: u64,
    /// Lines that could not be read (a torn last line after a crash, or damage).
    pub skipped: usize,
}

/// Reads the journal at `path` (a missing file is an empty history), keeping the last
/// `history_limit` messages of each of the `max_rooms` most recently active rooms.
pub fn load(path: &Path, history_limit: usize, max_rooms: usize) -> io::Result<Loaded> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let mut rooms: HashMap<String, VecDeque<Message>> = HashMap::new();
    let mut loaded = Loaded::default();
    for raw in BufReader::new(file).split(b'\n') {
        let raw = raw?;
        if raw.is_empty() {
            continue;
        }
        let Ok(r) = serde_json::from_slice::<Record>(&raw) else {
            loaded.skipped += 1;
            continue;
        };
        loaded.max_id = loaded.max_id.max(r.id);
        let message = Message {
            id: r.id,
            from: r.from,
            text: r.text,
            done: true,
            ts: UNIX_EPOCH + Duration::from_millis(r.ts),
            file: r.file.map(|f| FileRef {
                id: f.id,
                name: f.name,
                size: f.size,
                inline: f.inline,
            }),
        };
        let messages = rooms.entry(r.room).or_default();
        // Ids grow, so a line is either a new message or a rewrite of one kept already.
        match messages.back() {
            Some(last) if last.id >= message.id => {
                if let Some(kept) = messages.iter_mut().find(|m| m.id == message.id) {
                    *kept = message;
                }
            }
            _ => {
                messages.push_back(message);
                if messages.len() > history_limit {
                    messages.pop_front();
                }
            }
        }
    }
    let mut rooms: Vec<(String, Vec<Message>)> = rooms
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(name, m)| (name, Vec::from(m)))
        .collect();
    rooms.sort_by_key(|(_, m)| m.last().map(|m| m.id));
    let excess = rooms.len().saturating_sub(max_rooms);
    rooms.drain(..excess);
    loaded.rooms = rooms;
    Ok(loaded)
}

enum Op {
    Append(String),
    /// Replace the whole file with these lines.
    Rewrite(Vec<String>),
    /// Answered once everything before it is on disk.
    Sync(oneshot::Sender<()>),
}

/// The writer thread's handle. Dropping it lets the thread write what is queued and end.
pub struct Journal {
    tx: SyncSender<Op>,
    dropped: AtomicU64,
}

impl Journal {
    /// Opens (creating, mode 0600) the journal for appending and starts its writer thread.
    pub fn start(path: PathBuf) -> io::Result<Journal> {
        let file = open_append(&path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("webchat-history".into())
            .spawn(move || Writer { path, file }.run(rx))?;
        Ok(Journal {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn append(&self, line: String) {
        self.send(Op::Append(line));
    }

    pub fn rewrite(&self, lines: Vec<String>) {
        self.send(Op::Rewrite(lines));
    }

    /// Waits until everything handed over so far is written.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.try_send(Op::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Warn on the first loss and then every thousandth, not on each.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n % 1000 == 0 {
                    tracing::warn!(
                        dropped = n + 1,
                        "web chat history: the disk is not keeping up; lines left out of the journal"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn open_append(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    Ok(BufWriter::new(file))
}

struct Writer {
    path: PathBuf,
    file: BufWriter<File>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        // Write everything that is queued, then flush once: one write(2) per burst.
        while let Ok(op) = rx.recv() {
            let mut acks = Vec::new();
            self.handle(op, &mut acks);
            while let Ok(op) = rx.try_recv() {
                self.handle(op, &mut acks);
            }
            if let Err(e) = self.file.flush() {
                tracing::warn!(path = %self.path.display(), error = %e, "web chat history: write failed");
            }
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    fn handle(&mut self, op: Op, acks: &mut Vec<oneshot::Sender<()>>) {
        let result = match op {
            Op::Append(line) => writeln!(self.file, "{line}"),
            Op::Rewrite(lines) => self.rewrite(&lines),
            Op::Sync(ack) => {
                acks.push(ack);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "web chat history: write failed");
        }
    }

    /// Writes the lines to a temporary file and renames it over the journal, so a crash
    /// leaves either the old journal or the new one.
    fn rewrite(&mut self, lines: &[String]) -> io::Result<()> {
        self.file.flush()?;
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = BufWriter::new(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?,
        );
        for line in lines {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn message(id: u64, text: &str) -> Message {
        Message {
            id,
            from: "bot".into(),
            text: text.into(),
            done: true,
            ts: SystemTime::now(),
            file: None,
        }
    }

    #[test]
    fn later_lines_replace_earlier_ones_and_rooms_are_bounded_by_recency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let lines = [
            line("old", &message(1, "a")),
            line("mid", &message(2, "b")),
            line("new", &message(3, "c")),
            // An edit of a final message: same id, new text.
            line("mid", &message(2, "b edited")),
            "not json".to_string(),
            line("new", &message(4, "d")),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let loaded = load(&path, 10, 2).unwrap();
        assert_eq!(loaded.skipped, 1);
        assert_eq!(loaded.max_id, 4);
        let rooms: Vec<(&str, Vec<&str>)> = loaded
            .rooms
            .iter()
            .map(|(n, m)| (n.as_str(), m.iter().map(|m| m.text.as_str()).collect()))
            .collect();
        // Two rooms at most: the least recently active ("old") is left out.
        assert_eq!(rooms, [("mid", vec!["b edited"]), ("new", vec!["c", "d"])]);
        assert!(load(&dir.path().join("missing"), 10, 2)
            .unwrap()
            .rooms
            .is_empty());
    }
}
