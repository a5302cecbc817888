//! `acg-fake-agent`: a tiny stand-in for `claude -p --output-format stream-json`, for
//! benchmarks and fault tests. Std and serde_json only, so it starts in a millisecond.
//!
//! It accepts the flags the gateway passes (unknown ones are ignored; `--version` answers like
//! the real CLI's), reads the prompt from stdin and prints canned stream-json: `system/init`
//! (with the `--session-id`/`--resume` id when given), one assistant text line quoting the
//! prompt's last line, and a `result`.
//!
//! Fault modes, chosen by markers anywhere in the prompt:
//! - `FAKE:crash`     — some stderr, exit 3, no result;
//! - `FAKE:hang`      — sleeps forever (with a `sleep` child when `ACG_FAKE_WITNESS` is set);
//! - `FAKE:garbage`   — non-JSON lines only, exit 0;
//! - `FAKE:huge`      — one 20 MiB line, then a normal answer;
//! - `FAKE:ratelimit` — a rejected `rate_limit_event` (resetting in an hour) and an
//!   `is_error` 429 result, exit 1;
//! - `FAKE:ratelimit_until=<epoch secs>` — the same, resetting at that time, while the clock
//!   is before it; from then on a normal answer (a limit that resets while a test waits);
//! - `FAKE:ratelimit_after_text` — the text `partial answer`, then as `FAKE:ratelimit` (a
//!   limit met mid-turn, once the agent has begun to act);
//! - `FAKE:limit_warning` — an `allowed_warning` `rate_limit_event`, then a normal answer;
//! - `FAKE:slow=<ms>` — waits that long before answering;
//! - `FAKE:gate=<fifo>` — waits until a writer opens and closes that FIFO before answering
//!   (a test holds a turn open for exactly as long as it needs, without guessing a time).
//!
//! `acg-fake-agent acp` speaks the Agent Client Protocol instead (`acp.rs`).
//!
//! With `ACG_FAKE_WITNESS=<fifo>` in the environment, `FAKE:hang` first writes
//! `<own pid> <child pid>\n` to that FIFO and keeps it open in both processes, so a test can
//! see both die (end-of-file) without polling.

use std::io::{self, BufWriter, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

mod acp;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("acp") {
        return match acp::main() {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("fake-acp: {e}");
                ExitCode::from(1)
            }
        };
    }
    if std::env::args()
        .skip(1)
        .any(|a| a == "--version" || a == "-v")
    {
        println!("0.0.0-fake (acg-fake-agent)");
        return ExitCode::SUCCESS;
    }
    let session = session_from_args(std::env::args().skip(1));
    let mut prompt = String::new();
    if let Err(e) = io::stdin().read_to_string(&mut prompt) {
        eprintln!("fake-agent: cannot read stdin: {e}");
        return ExitCode::from(1);
    }
    if prompt.trim().is_empty() {
        // What the real CLI says for empty stdin with --print.
        eprintln!("Error: Input must be provided either through stdin or as a prompt argument when using --print");
        return ExitCode::from(1);
    }
    match run(&session, &prompt) {
        Ok(code) => ExitCode::from(code),
        // Broken pipe: the reader went away; nothing useful left to do.
        Err(_) => ExitCode::from(1),
    }
}

fn run(session: &str, prompt: &str) -> io::Result<u8> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if prompt.contains("FAKE:garbage") {
        writeln!(out, "this is not json")?;
        writeln!(out, "<html><body>502 Bad Gateway</body></html>")?;
        writeln!(out, "{{\"truncated\": ")?;
        out.flush()?;
        return Ok(0);
    }
    // The witness comes first, so a test that reacts to `init` already finds it in place.
    let hang_guard = if prompt.contains("FAKE:hang") {
        Some(witness()?)
    } else {
        None
    };
    line(&mut out, &init(session))?;
    out.flush()?;
    if prompt.contains("FAKE:crash") {
        eprintln!("fake-agent: simulated crash");
        eprintln!("panic: something went badly wrong");
        return Ok(3);
    }
    if let Some(held) = hang_guard {
        // Both witness ends stay open for as long as this process lives; it never returns.
        let _held = held;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if let Some(ms) = slow_ms(prompt) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(gate) = gate(prompt) {
        // Opening blocks until the test opens the write end; reading ends when it closes it.
        std::fs::File::open(gate)?.read_to_end(&mut Vec::new())?;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if prompt.contains("FAKE:ratelimit_after_text") {
        line(&mut out, &assistant(session, "partial answer"))?;
        return rate_limited(&mut out, session, now + 3600);
    }
    match ratelimit_until(prompt) {
        Some(resets_at) if now < resets_at => return rate_limited(&mut out, session, resets_at),
        Some(_) => {}
        None if prompt.contains("FAKE:ratelimit") => {
            return rate_limited(&mut out, session, now + 3600)
        }
        None => {}
    }
    if prompt.contains("FAKE:limit_warning") {
        line(
            &mut out,
            &rate_limit_event(session, "allowed_warning", now + 3600),
        )?;
    }
    if prompt.contains("FAKE:huge") {
        // One 20 MiB line: over the gateway's 16 MiB line limit.
        let filler = "x".repeat(20 * 1024 * 1024);
        line(&mut out, &assistant(session, &filler))?;
    }
    let answer = format!("fake answer: {}", quote(prompt));
    line(&mut out, &assistant(session, &answer))?;
    line(&mut out, &result(session, &answer))?;
    out.flush()?;
    Ok(0)
}

/// The id from `--session-id X`, `--resume X` (or their `=` forms), else a fresh one.
fn session_from_args(args: impl Iterator<Item = String>) -> String {
    let args: Vec<String> = args.collect();
    for (i, a) in args.iter().enumerate() {
        for flag in ["--session-id", "--resume", "-r"] {
            if a == flag {
                if let Some(v) = args.get(i + 1) {
                    return v.clone();
                }
            } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return v.to_string();
            }
        }
    }
    pseudo_uuid()
}

fn pseudo_uuid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let x = nanos ^ (u128::from(std::process::id()) << 64);
    let h = format!("{x:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// First 200 characters of the prompt's last non-empty line.
fn quote(prompt: &str) -> String {
    let last = prompt
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().chars().take(200).collect()
}

fn slow_ms(prompt: &str) -> Option<u64> {
    let rest = &prompt[prompt.find("FAKE:slow=")? + "FAKE:slow=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn ratelimit_until(prompt: &str) -> Option<u64> {
    let marker = "FAKE:ratelimit_until=";
    let rest = &prompt[prompt.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn gate(prompt: &str) -> Option<&str> {
    let rest = &prompt[prompt.find("FAKE:gate=")? + "FAKE:gate=".len()..];
    rest.split_whitespace().next()
}

/// With `ACG_FAKE_WITNESS` set: opens the FIFO, starts a `sleep` child holding it too, and
/// writes both pids to it.
fn witness() -> io::Result<Option<(std::fs::File, std::process::Child)>> {
    let Ok(path) = std::env::var("ACG_FAKE_WITNESS") else {
        return Ok(None);
    };
    let mut witness = std::fs::OpenOptions::new().write(true).open(&path)?;
    let child = Command::new("sleep")
        .arg("100000")
        .stdin(Stdio::null())
        .stdout(Stdio::from(witness.try_clone()?))
        .stderr(Stdio::null())
        .spawn()?;
    writeln!(witness, "{} {}", std::process::id(), child.id())?;
    Ok(Some((witness, child)))
}

fn rate_limited(out: &mut impl Write, session: &str, resets_at: u64) -> io::Result<u8> {
    let text = "You've hit your session limit · resets 9am (Europe/Berlin)";
    line(out, &rate_limit_event(session, "rejected", resets_at))?;
    line(
        out,
        &json!({"type": "assistant", "message": {"id": "msg_fake_rl", "model": "<synthetic>", "role": "assistant",
            "type": "message", "content": [{"type": "text", "text": text}]}, "parent_tool_use_id": null,
            "session_id": session, "error": "rate_limit", "is_api_error_message": true}),
    )?;
    line(
        out,
        &json!({"type": "result", "subtype": "success", "is_error": true, "api_error_status": 429,
            "duration_ms": 1, "num_turns": 1, "result": text, "stop_reason": "stop_sequence",
            "session_id": session, "total_cost_usd": 0, "permission_denials": []}),
    )?;
    out.flush()?;
    Ok(1)
}

fn rate_limit_event(session: &str, status: &str, resets_at: u64) -> Value {
    json!({"type": "rate_limit_event", "rate_limit_info": {"status": status, "resetsAt": resets_at,
        "rateLimitType": "five_hour"}, "uuid": "00000000-0000-4000-8000-000000000001", "session_id": session})
}

fn line(out: &mut impl Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")
}

fn init(session: &str) -> Value {
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    json!({"type": "system", "subtype": "init", "cwd": cwd, "session_id": session, "tools": ["Bash", "Read"],
        "mcp_servers": [], "model": "fake-model", "permissionMode": "dontAsk", "apiKeySource": "none",
        "claude_code_version": "0.0.0-fake", "uuid": "00000000-0000-4000-8000-000000000000"})
}

fn assistant(session: &str, text: &str) -> Value {
    json!({"type": "assistant", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
        "model": "fake-model", "content": [{"type": "text", "text": text}], "stop_reason": null,
        "usage": {"input_tokens": 10, "output_tokens": 5}}, "parent_tool_use_id": null, "session_id": session})
}

fn result(session: &str, text: &str) -> Value {
    json!({"type": "result", "subtype": "success", "is_error": false, "api_error_status": null,
        "duration_ms": 1, "num_turns": 1, "result": text, "stop_reason": "end_turn", "session_id": session,
        "total_cost_usd": 0.0, "usage": {"input_tokens": 10, "output_tokens": 5,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        "modelUsage": {"fake-model": {"inputTokens": 10, "outputTokens": 5, "contextWindow": 200000}},
        "permission_denials": [], "terminal_reason": "completed"})
}
