//! `acg-fake-agent acp`: a scripted Agent Client Protocol agent over stdio, for the tests of
//! the gateway's ACP host side (callbacks, options, cancel, crashes, modes) that a real agent
//! cannot be made to do on purpose.
//!
//! It answers `initialize` (with `loadSession`), `session/new` (`fake-<pid>-<n>`; the mode in
//! `ACG_FAKE_ACP_MODE` if set), `session/load` (replays one history chunk; with a mode set,
//! answers with the modes and replays one more chunk after its answer, as Gemini CLI does),
//! and runs each
//! `session/prompt` by the markers in its text (the first one found):
//! - `ACP:write=<path>`  — `fs/write_text_file` of "written by the agent" to `<path>`;
//! - `ACP:read=<path>`   — `fs/read_text_file` of `<path>`;
//! - `ACP:permit=<cmd>`  — `session/request_permission` for an execute call of `<cmd>`,
//!   offering allow_always, allow_once and reject_once;
//! - `ACP:hang`          — no answer until `session/cancel`, then `cancelled`;
//! - `ACP:deaf`          — no answer, `session/cancel` ignored;
//! - `ACP:crash`         — stderr, exit 3;
//! - `ACP:amnesia`       — like `crash`, and the next process's `session/load` fails (as a
//!   real agent's does when its stored session is gone): a marker file in the working
//!   directory carries that to the next process;
//! - `ACP:mode=<id>`     — a `current_mode_update` to `<id>`;
//! - `ACP:unknown`       — a request the client does not implement;
//! - otherwise           — an echo (naming the session mode, if there are modes).
//!
//! Every answer is one agent message ending in `[pid <pid> session <id>]`, so a test can see
//! whether a process or a session was reused.

use std::io::{self, BufRead, Write};

use serde_json::{json, Value};

/// Left in the working directory by `ACP:amnesia`, taken by the next `session/load`.
const FORGOT: &str = ".acg-fake-acp-forgot";

pub fn main() -> io::Result<u8> {
    let stdin = io::stdin();
    let mut agent = Agent {
        lines: stdin.lock().lines(),
        out: io::stdout(),
        next_id: 0,
        sessions: 0,
        mode: None,
        replay_tail: None,
    };
    agent.serve()
}

struct Agent<L> {
    lines: L,
    out: io::Stdout,
    next_id: u64,
    sessions: u64,
    /// The session mode, when `ACG_FAKE_ACP_MODE` gave the session modes.
    mode: Option<String>,
    /// A loaded session whose last replayed chunk is still to be written.
    replay_tail: Option<String>,
}

impl<L: Iterator<Item = io::Result<String>>> Agent<L> {
    fn serve(&mut self) -> io::Result<u8> {
        while let Some(message) = self.read()? {
            if let Some(session) = self.replay_tail.take() {
                // The id of the echo's message: a leaked chunk would be part of the answer.
                self.update(
                    &session,
                    json!({"sessionUpdate": "agent_message_chunk", "messageId": "m1",
                    "content": {"type": "text", "text": "REPLAYED AFTER THE ANSWER "}}),
                )?;
            }
            let id = message.get("id").cloned();
            let params = message.get("params").cloned().unwrap_or(Value::Null);
            match message["method"].as_str().unwrap_or_default() {
                "initialize" => self.respond(
                    id,
                    json!({
                        "protocolVersion": 1,
                        "agentCapabilities": {"loadSession": true},
                        "agentInfo": {"name": "acg-fake-acp", "version": "0.0.0"},
                        "authMethods": []
                    }),
                )?,
                "session/new" => {
                    self.sessions += 1;
                    let session = format!("fake-{}-{}", std::process::id(), self.sessions);
                    let mut result = json!({"sessionId": session});
                    if let Ok(mode) = std::env::var("ACG_FAKE_ACP_MODE") {
                        self.mode = Some(mode.clone());
                        result["modes"] = json!({"currentModeId": mode, "availableModes": [
                            {"id": "default", "name": "Default"}, {"id": mode, "name": mode}
                        ]});
                    }
                    self.respond(id, result)?;
                }
                "session/set_mode" => {
                    self.mode = params["modeId"].as_str().map(str::to_string);
                    self.respond(id, json!({}))?;
                }
                "session/load" if std::fs::remove_file(FORGOT).is_ok() => {
                    self.send(json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32002, "message": "No previous sessions found"}}))?;
                }
                "session/load" => {
                    let session = params["sessionId"].as_str().unwrap_or_default().to_string();
                    self.update(
                        &session,
                        json!({"sessionUpdate": "agent_message_chunk",
                        "content": {"type": "text", "text": "REPLAYED HISTORY"}}),
                    )?;
                    let Ok(mode) = std::env::var("ACG_FAKE_ACP_MODE") else {
                        self.respond(id, Value::Null)?;
                        continue;
                    };
                    self.mode = Some(mode.clone());
                    self.respond(
                        id,
                        json!({"modes": {"currentModeId": mode, "availableModes": [
                            {"id": "default", "name": "Default"}, {"id": mode, "name": mode}
                        ]}}),
                    )?;
                    // As Gemini CLI 0.61.0 does: the rest of the history after the answer,
                    // before the next request is handled; written once that request came
                    // in, so a client that does not wait for it reads it in its prompt's
                    // window every time.
                    self.replay_tail = Some(session);
                }
                "session/prompt" => {
                    if let Some(code) = self.prompt(id, &params)? {
                        return Ok(code);
                    }
                }
                "session/cancel" => {}
                _ if id.is_some() => self.send(json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": "method not found"}}))?,
                _ => {}
            }
        }
        Ok(0)
    }

    /// Runs one prompt; `Some(code)` when the process is to exit.
    fn prompt(&mut self, id: Option<Value>, params: &Value) -> io::Result<Option<u8>> {
        let session = params["sessionId"].as_str().unwrap_or_default().to_string();
        let text: String = params["prompt"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["text"].as_str())
            .collect();
        let arg = |marker: &str| {
            text.find(marker).map(|i| {
                text[i + marker.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        };
        let answer = if let Some(path) = arg("ACP:write=") {
            let reply = self.request(
                "fs/write_text_file",
                json!({"sessionId": session,
                "path": path, "content": "written by the agent"}),
            )?;
            match reply.get("error") {
                Some(e) => format!("write refused: {}", e["data"].as_str().unwrap_or("?")),
                None => "write ok".to_string(),
            }
        } else if let Some(path) = arg("ACP:read=") {
            let reply = self.request(
                "fs/read_text_file",
                json!({"sessionId": session, "path": path}),
            )?;
            match reply.get("error") {
                Some(e) => format!("read refused: {}", e["data"].as_str().unwrap_or("?")),
                None => format!(
                    "read: {}",
                    reply["result"]["content"].as_str().unwrap_or("?")
                ),
            }
        } else if let Some(command) = arg("ACP:permit=") {
            let command = command.replace('+', " ");
            self.update(
                &session,
                json!({"sessionUpdate": "tool_call", "toolCallId": "call-1",
                "title": "Terminal", "kind": "execute", "status": "pending",
                "rawInput": {"command": command}}),
            )?;
            let reply = self.request(
                "session/request_permission",
                json!({"sessionId": session,
                "toolCall": {"toolCallId": "call-1", "rawInput": {"command": command}},
                "options": [
                    {"optionId": "always", "name": "Always", "kind": "allow_always"},
                    {"optionId": "once", "name": "Allow", "kind": "allow_once"},
                    {"optionId": "no", "name": "Reject", "kind": "reject_once"}
                ]}),
            )?;
            let outcome = &reply["result"]["outcome"];
            match outcome["outcome"].as_str() {
                Some("selected") => {
                    format!("chose {}", outcome["optionId"].as_str().unwrap_or("?"))
                }
                other => format!("permission {}", other.unwrap_or("error")),
            }
        } else if text.contains("ACP:hang") {
            // Nothing until the cancel, which ends the turn.
            while let Some(m) = self.read()? {
                if m["method"] == "session/cancel" {
                    break;
                }
            }
            self.respond(id, json!({"stopReason": "cancelled"}))?;
            return Ok(None);
        } else if text.contains("ACP:deaf") {
            while self.read()?.is_some() {}
            return Ok(Some(0));
        } else if text.contains("ACP:amnesia") {
            std::fs::write(FORGOT, "")?;
            eprintln!("fake-acp: simulated crash, sessions forgotten");
            return Ok(Some(3));
        } else if text.contains("ACP:crash") {
            eprintln!("fake-acp: simulated crash");
            return Ok(Some(3));
        } else if let Some(mode) = arg("ACP:mode=") {
            self.update(
                &session,
                json!({"sessionUpdate": "current_mode_update", "currentModeId": mode}),
            )?;
            "mode changed".to_string()
        } else if text.contains("ACP:unknown") {
            let reply = self.request("x/unknown", json!({}))?;
            format!("unknown answered {}", reply["error"]["code"])
        } else {
            // The gateway's prompt puts a `[… | from: … ] ` header before each message.
            let last = text.lines().last().unwrap_or_default();
            let body = last.rsplit_once("] ").map_or(last, |(_, body)| body);
            match &self.mode {
                Some(mode) => format!("echo: {body} (mode {mode})"),
                None => format!("echo: {body}"),
            }
        };
        let answer = format!("{answer} [pid {} session {session}]", std::process::id());
        self.update(
            &session,
            json!({"sessionUpdate": "agent_message_chunk", "messageId": "m1",
            "content": {"type": "text", "text": answer}}),
        )?;
        self.respond(id, json!({"stopReason": "end_turn"}))?;
        Ok(None)
    }

    /// Sends a request and reads until its response (notifications in between are dropped).
    fn request(&mut self, method: &str, params: Value) -> io::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        while let Some(m) = self.read()? {
            if m.get("method").is_none() && m["id"] == id {
                return Ok(m);
            }
        }
        Err(io::Error::other(
            "stdin closed while waiting for a response",
        ))
    }

    fn update(&mut self, session: &str, update: Value) -> io::Result<()> {
        self.send(json!({"jsonrpc": "2.0", "method": "session/update",
            "params": {"sessionId": session, "update": update}}))
    }

    fn respond(&mut self, id: Option<Value>, result: Value) -> io::Result<()> {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }

    fn send(&mut self, message: Value) -> io::Result<()> {
        writeln!(self.out, "{message}")?;
        self.out.flush()
    }

    fn read(&mut self) -> io::Result<Option<Value>> {
        loop {
            match self.lines.next() {
                None => return Ok(None),
                Some(line) => {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    return serde_json::from_str(&line)
                        .map(Some)
                        .map_err(|e| io::Error::other(format!("bad json from client: {e}")));
                }
            }
        }
    }
}
