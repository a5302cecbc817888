//! The web chat's history on disk, so a restart keeps what the page showed.
//!
//! Owns: the journal file (`webchat-<name>.history.jsonl` in the runtime dir, mode 0600), one
//! JSON line per *finished* message (a streaming bot message is written once its turn ends; a
//! later line with the same id replaces the earlier one; a reply carries its thread's root, so
//! threads survive a restart), loading it within the hub's bounds
//! (a torn last line from a crash is skipped), and the writer thread that appends lines and
//! rewrites the file compacted when the hub asks.
//! Must not import: the HTTP server or the dispatcher; the hub calls into it.
//!
//! Why a writer thread: the hub is called under its lock from async tasks; disk I/O there
//! would stall them. Lines go through a bounded channel instead; if the disk cannot keep up
//! the line is dropped from the journal (never from the page) and a warning logged.

use std::collections::{BTreeMap, HashMap};
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
    /// The thread's root; absent at the top level (and in journals from before threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thread: Option<u64>,
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
        thread: m.thread,
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
/// `history_limit` messages of each of the `max_rooms` most recently active rooms. A read
/// error ends the reading (what was read is kept, the rest counted as skipped).
pub fn load(path: &Path, history_limit: usize, max_rooms: usize) -> io::Result<Loaded> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    // Ids are made from the clock (ms × 1000, see `Hub::new`); one far in the future is
    // damage, and trusting it could run the id counter to its end.
    let id_ceiling = crate::model::epoch_ms(std::time::SystemTime::now())
        .saturating_add(24 * 3600 * 1000)
        .saturating_mul(1000);
    // By id, not by line: a streamed answer is written when its turn ends, after messages
    // that were posted while it streamed but have larger ids.
    let mut rooms: HashMap<String, BTreeMap<u64, Message>> = HashMap::new();
    let mut loaded = Loaded::default();
    for raw in BufReader::new(file).split(b'\n') {
        let Ok(raw) = raw else {
            loaded.skipped += 1;
            break;
        };
        if raw.is_empty() {
            continue;
        }
        let record = serde_json::from_slice::<Record>(&raw)
            .ok()
            .filter(|r| r.id <= id_ceiling);
        let Some(r) = record else {
            loaded.skipped += 1;
            continue;
        };
        loaded.max_id = loaded.max_id.max(r.id);
        let messages = rooms.entry(r.room).or_default();
        if messages.len() >= history_limit
            && messages
                .first_key_value()
                .is_some_and(|(&oldest, _)| r.id < oldest)
        {
            // Older than everything kept: it would be cut anyway.
            continue;
        }
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
            thread: r.thread,
        };
        // A later line with the same id (an edit of a final message) replaces the earlier.
        messages.insert(message.id, message);
        if messages.len() > history_limit {
            messages.pop_first();
        }
    }
    let mut rooms: Vec<(String, Vec<Message>)> = rooms
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(name, m)| (name, m.into_values().collect()))
        .collect();
    rooms.sort_by_key(|(_, m): &(String, Vec<Message>)| m.last().map(|m| m.id));
    let excess = rooms.len().saturating_sub(max_rooms);
    rooms.drain(..excess);
    loaded.rooms = rooms;
    Ok(loaded)
}

/// The journal lines of what was loaded, oldest id first.
fn lines_of(loaded: &Loaded) -> Vec<String> {
    let mut all: Vec<(u64, String)> = loaded
        .rooms
        .iter()
        .flat_map(|(room, messages)| messages.iter().map(move |m| (m.id, line(room, m))))
        .collect();
    all.sort_unstable_by_key(|(id, _)| *id);
    all.into_iter().map(|(_, line)| line).collect()
}

enum Op {
    Append(String),
    /// Answered once everything before it is on disk.
    Sync(oneshot::Sender<()>),
}

/// The bounds the journal is compacted to (the hub's).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub history_limit: usize,
    pub max_rooms: usize,
}

/// The writer thread's handle. Dropping it lets the thread write what is queued and end.
pub struct Journal {
    tx: SyncSender<Op>,
    dropped: AtomicU64,
}

impl Journal {
    /// Starts the writer thread for the journal at `path`, whose content was just `loaded`.
    /// Its first act is to rewrite the file with only that (so a start never inherits a long
    /// file); it compacts again whenever the file holds about twice what the bounds keep.
    /// Fails if the journal cannot be opened for appending.
    pub fn start(path: PathBuf, bounds: Bounds, loaded: &Loaded) -> io::Result<Journal> {
        let initial = lines_of(loaded);
        let file = open_append(&path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = Writer {
            path,
            file: Some(file),
            bounds,
            lines: 0,
            kept: 0,
        };
        std::thread::Builder::new()
            .name("webchat-history".into())
            .spawn(move || writer.run(rx, initial))?;
        Ok(Journal {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub fn append(&self, line: String) {
        match self.tx.try_send(Op::Append(line)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                // Warn on the first loss and then every thousandth, not on each.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped = n + 1,
                        "web chat history: the disk is not keeping up; lines left out of the journal"
                    );
                }
            }
        }
    }

    /// Waits until everything handed over so far is written (waiting for room in the queue
    /// if it is full).
    pub async fn sync(&self) {
        let (ack, done) = oneshot::channel();
        let tx = self.tx.clone();
        let queued = tokio::task::spawn_blocking(move || tx.send(Op::Sync(ack)).is_ok()).await;
        if matches!(queued, Ok(true)) {
            let _ = done.await;
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
    /// `None` after a failed reopen; the next append tries again.
    file: Option<BufWriter<File>>,
    bounds: Bounds,
    /// Lines in the file.
    lines: usize,
    /// Messages the last compaction kept.
    kept: usize,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>, initial: Vec<String>) {
        self.rewrite(&initial);
        // Write everything that is queued, then flush once: one write(2) per burst.
        while let Ok(op) = rx.recv() {
            let mut acks = Vec::new();
            self.handle(op, &mut acks);
            while let Ok(op) = rx.try_recv() {
                self.handle(op, &mut acks);
            }
            if let Some(Err(e)) = self.file.as_mut().map(|f| f.flush()) {
                self.warn("write failed", &e);
            }
            if self.lines > 2 * self.kept + 256 {
                self.compact();
            }
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    fn handle(&mut self, op: Op, acks: &mut Vec<oneshot::Sender<()>>) {
        match op {
            Op::Append(line) => {
                if self.file.is_none() {
                    self.file = open_append(&self.path)
                        .map_err(|e| self.warn("cannot open the journal", &e))
                        .ok();
                }
                if let Some(file) = self.file.as_mut() {
                    match writeln!(file, "{line}") {
                        Ok(()) => self.lines += 1,
                        Err(e) => self.warn("write failed", &e),
                    }
                }
            }
            Op::Sync(ack) => acks.push(ack),
        }
    }

    /// Rewrites the journal with only what the bounds keep.
    fn compact(&mut self) {
        if let Some(Err(e)) = self.file.as_mut().map(|f| f.flush()) {
            self.warn("write failed", &e);
        }
        match load(&self.path, self.bounds.history_limit, self.bounds.max_rooms) {
            Ok(loaded) => self.rewrite(&lines_of(&loaded)),
            Err(e) => self.warn("cannot read the journal to compact it", &e),
        }
    }

    /// Replaces the journal with `all`, through a fresh temporary file renamed over it, so a
    /// crash leaves either the old journal or the new one.
    fn rewrite(&mut self, all: &[String]) {
        let tmp = self.path.with_extension("jsonl.tmp");
        let written = (|| {
            // Never through something already there (a leftover, or a planted link).
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut out = BufWriter::new(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?,
            );
            for line in all {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return self.warn("cannot compact the journal", &e);
        }
        self.kept = all.len();
        self.lines = all.len();
        self.file = open_append(&self.path)
            .map_err(|e| self.warn("cannot open the journal", &e))
            .ok();
    }

    fn warn(&self, what: &str, e: &io::Error) {
        tracing::warn!(path = %self.path.display(), error = %e, "web chat history: {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    fn message(id: u64, text: &str) -> Message {
        Message {
            id,
            from: "bot".into(),
            text: text.into(),
            done: true,
            ts: SystemTime::now(),
            file: None,
            thread: None,
        }
    }

    fn texts(loaded: &Loaded) -> Vec<(&str, Vec<&str>)> {
        loaded
            .rooms
            .iter()
            .map(|(n, m)| (n.as_str(), m.iter().map(|m| m.text.as_str()).collect()))
            .collect()
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
            // Damage: an id far in the future is not trusted.
            line("new", &message(u64::MAX, "bogus")),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let loaded = load(&path, 10, 2).unwrap();
        assert_eq!(loaded.skipped, 2);
        assert_eq!(loaded.max_id, 4);
        // Two rooms at most: the least recently active ("old") is left out.
        assert_eq!(
            texts(&loaded),
            [("mid", vec!["b edited"]), ("new", vec!["c", "d"])]
        );
        assert!(load(&dir.path().join("missing"), 10, 2)
            .unwrap()
            .rooms
            .is_empty());
    }

    #[test]
    fn a_streamed_answer_written_after_later_messages_takes_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        // The answer (101) streamed while a user posted (102); it was written when its
        // turn ended, so after 102.
        let lines = [
            line("r", &message(100, "question")),
            line("r", &message(102, "meanwhile")),
            line("r", &message(101, "answer")),
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let loaded = load(&path, 10, 4).unwrap();
        assert_eq!(
            texts(&loaded),
            [("r", vec!["question", "answer", "meanwhile"])]
        );
        // With room for two only, the two newest ids stay, whatever the line order.
        let loaded = load(&path, 2, 4).unwrap();
        assert_eq!(texts(&loaded), [("r", vec!["answer", "meanwhile"])]);
    }

    #[tokio::test]
    async fn the_writer_compacts_at_start_and_when_the_file_doubles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let old: Vec<String> = (1..=50).map(|i| line("r", &message(i, "old"))).collect();
        std::fs::write(&path, old.join("\n") + "\n").unwrap();
        let bounds = Bounds {
            history_limit: 5,
            max_rooms: 4,
        };
        let loaded = load(&path, bounds.history_limit, bounds.max_rooms).unwrap();
        let journal = Journal::start(path.clone(), bounds, &loaded).unwrap();
        journal.sync().await;
        let count = || std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(count(), 5);
        for i in 51..=400 {
            journal.append(line("r", &message(i, "new")));
        }
        journal.sync().await;
        assert!(count() <= 2 * 5 + 256 + 1, "{} lines", count());
        let loaded = load(&path, 5, 4).unwrap();
        let ids: Vec<u64> = loaded.rooms[0].1.iter().map(|m| m.id).collect();
        assert_eq!(ids, [396, 397, 398, 399, 400]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
