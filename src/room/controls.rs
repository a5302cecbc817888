//! Carrying out room commands inside the room worker, which owns what they change: the queue,
//! the running turn, the session id, the room's model and agent, its budget override. Each
//! returns the exact text posted back to the room. Who may use which command was decided by
//! the dispatcher (`crate::commands`).

use std::time::SystemTime;

use tracing::info;

use super::{hold, AgentChoice, RoomWorker};
use crate::budget;
use crate::commands::{self, Command};
use crate::model::Role;
use crate::state::SessionUsage;

impl RoomWorker {
    pub(super) async fn command(&mut self, command: Command, role: Role, sender: &str) -> String {
        info!(command = ?command, role = %role, "room command");
        match command {
            Command::Help => commands::help(&self.deps.commands, role),
            Command::Status => self.status_text(sender),
            Command::Stop { all } => self.stop(all).await,
            Command::New => {
                self.new_session().await;
                "🆕 Session closed: the next message starts a new one.".into()
            }
            Command::Model(model) => self.set_model(model),
            Command::Agent(name) => self.switch_agent(name).await,
            Command::Sessions => self.sessions_text(),
            Command::Resume(id) => self.resume(id).await,
            Command::Budget => self.budget_text(),
            Command::BudgetOverride(on) => self.set_budget_override(on),
        }
    }

    /// When the room's `!budget override` ends, while it lasts. It is the platform room's:
    /// set in one thread of a thread-scoped room, it holds in all of them.
    pub(super) fn budget_override(&self) -> Option<u64> {
        let now = super::hold::epoch_secs(SystemTime::now());
        self.deps
            .store
            .room(&self.key.of_room())
            .and_then(|r| r.budget_override_until)
            .filter(|&until| until > now)
    }

    fn set_budget_override(&mut self, on: bool) -> String {
        let p = &self.deps.commands.prefix;
        if !self.deps.budgets.is_set() {
            return "There are no budgets configured: nothing to override.".into();
        }
        let until = match (on, self.budget_override()) {
            (true, _) => Some(budget::override_end(SystemTime::now())),
            (false, Some(_)) => None,
            (false, None) => return "There is no budget override in this room.".into(),
        };
        self.deps
            .store
            .update_room(&self.key.of_room(), |r| r.budget_override_until = until);
        info!(until = ?until, "budget override");
        match until {
            Some(end) => format!(
                "💸 Budget override: guests' messages in this room are answered past the room's and their own budgets until {} (the end of the UTC day). `{p}budget override off` ends it sooner.",
                crate::timefmt::rfc3339_utc_secs(end)
            ),
            None => "💸 Budget override ended: guests' messages in this room are held to the budgets again.".into(),
        }
    }

    fn budget_text(&self) -> String {
        let now = SystemTime::now();
        let room = self.key.of_room().to_string();
        let ledger = self.deps.store.ledger();
        let report = ledger.spending(|s| {
            let users = s.users_of(&budget::room_key(&room), now);
            let who = budget::Spenders {
                connector: &self.key.connector,
                users: users.iter().map(String::as_str).collect(),
                room: &room,
            };
            budget::report(&self.deps.budgets, s, &who, now)
        });
        let p = &self.deps.commands.prefix;
        let over = match self.budget_override() {
            Some(end) => format!(
                "override: guests may go past the budgets until {} (`{p}budget override off` ends it)",
                crate::timefmt::rfc3339_utc_secs(end)
            ),
            None => format!(
                "override: none (`{p}budget override` lets guests past the budgets until the end of the UTC day)"
            ),
        };
        format!("{report}\n{over}")
    }

    /// `!status`'s budget line: the room's and the sender's figures of each configured
    /// limit, and the override while it lasts.
    fn budget_line(&self, sender: &str) -> Option<String> {
        let room = self.key.of_room().to_string();
        let who = budget::Spenders {
            connector: &self.key.connector,
            users: vec![sender],
            room: &room,
        };
        let now = SystemTime::now();
        let figures = self
            .deps
            .store
            .ledger()
            .spending(|s| budget::status_figures(&self.deps.budgets, s, &who, now))?;
        Some(match self.budget_override() {
            Some(end) => format!(
                "{figures} · override until {}",
                crate::timefmt::rfc3339_utc_secs(end)
            ),
            None => figures,
        })
    }

    async fn stop(&mut self, all: bool) -> String {
        let stopped = self.stop_running().await;
        if stopped {
            // The interrupted turn is over; its warm process goes too, so nothing of the
            // agent is left. The session stays: the next turn resumes it in a new process.
            self.agent_choice().backend.retire(&self.key).await;
        }
        let dropped = if all { self.drop_queue() } else { 0 };
        let waiting = self.pending.len();
        let head = if stopped {
            "⏹️ Stopped the running turn; the session is kept."
        } else {
            "Nothing is running."
        };
        let tail = match (all, waiting) {
            (true, _) => format!(" Dropped {}.", plural(dropped, "queued message")),
            (false, 0) => String::new(),
            (false, n) => format!(
                " {} will be answered next (`{}stop all` drops them).",
                capitalised(&plural(n, "queued message")),
                self.deps.commands.prefix
            ),
        };
        format!("{head}{tail}")
    }

    /// Drops every waiting message (an owner's `stop all`); how many.
    fn drop_queue(&mut self) -> usize {
        let dropped: Vec<String> = self.pending.drain(..).map(|q| q.message.id).collect();
        self.told_retry = None;
        self.deps.store.update_room(&self.key, |r| {
            r.pending.retain(|p| !dropped.contains(&p.id))
        });
        info!(count = dropped.len(), "queue dropped");
        dropped.len()
    }

    fn set_model(&mut self, model: Option<String>) -> String {
        self.model = model.clone();
        self.deps
            .store
            .update_room(&self.key, |r| r.model = model.clone());
        match model {
            Some(m) => format!("🧠 This room now uses the model `{m}`."),
            None => "🧠 This room now uses the agent's default model.".into(),
        }
    }

    async fn switch_agent(&mut self, name: String) -> String {
        let Some(choice) = self.deps.agents.get(&name).cloned() else {
            let known: Vec<&str> = self.deps.agents.keys().map(String::as_str).collect();
            return format!(
                "⚠️ There is no agent `{name}` (configured: {}).",
                known.join(", ")
            );
        };
        if self.agent_name() == name {
            return format!("This room already talks to `{name}`.");
        }
        // A session belongs to one CLI: the new agent starts its own, and a model chosen for
        // the old one may mean nothing to it.
        self.new_session().await;
        let keep = (name != self.deps.agent_config.name).then(|| name.clone());
        self.agent = keep.clone();
        self.model = None;
        self.deps.store.update_room(&self.key, |r| {
            r.agent = keep;
            r.model = None;
        });
        format!(
            "🔀 This room now talks to `{name}` ({}); the next message starts a new session.",
            choice.config.kind
        )
    }

    async fn resume(&mut self, id: String) -> String {
        if self.session_id.as_deref() == Some(id.as_str()) {
            return format!("This room is already in session `{id}`.");
        }
        self.stop_running().await;
        self.retire_session();
        let past = self
            .deps
            .store
            .room(&self.key)
            .and_then(|r| r.past_sessions.iter().find(|p| p.id == id).cloned());
        // A listed session continues with the agent it was started with.
        let agent = past
            .as_ref()
            .map(|p| p.agent.clone())
            .filter(|a| self.deps.agents.contains_key(a));
        if let Some(a) = &agent {
            let keep = (*a != self.deps.agent_config.name).then(|| a.clone());
            if keep != self.agent {
                self.model = None;
            }
            self.agent = keep;
        }
        self.session_id = Some(id.clone());
        let (session, agent_override, model) = (
            self.session_id.clone(),
            self.agent.clone(),
            self.model.clone(),
        );
        let turns = past.as_ref().map_or(0, |p| p.turns);
        self.deps.store.update_room(&self.key, |r| {
            r.past_sessions.retain(|p| p.id != id);
            r.session_id = session;
            r.agent = agent_override;
            r.model = model;
            r.session_usage = SessionUsage {
                turns,
                ..SessionUsage::default()
            };
        });
        info!(session = %id, "session pinned");
        match past {
            Some(_) => format!(
                "▶️ Resuming session `{id}` with `{}`: the next message continues it.",
                self.agent_name()
            ),
            None => format!(
                "▶️ This room is now pinned to session `{id}` of `{}`: the next message continues it.",
                self.agent_name()
            ),
        }
    }

    fn sessions_text(&self) -> String {
        let state = self.deps.store.room(&self.key).unwrap_or_default();
        let p = &self.deps.commands.prefix;
        let mut out = match &self.session_id {
            Some(id) => format!(
                "Current session: `{id}` ({}, {}).",
                self.agent_name(),
                plural(state.session_usage.turns as usize, "turn")
            ),
            None => "No current session: the next message starts one.".to_string(),
        };
        if state.past_sessions.is_empty() {
            out.push_str("\nNo earlier sessions in this room.");
            return out;
        }
        out.push_str(&format!(
            "\nEarlier sessions, newest first (`{p}resume <id>` continues one):"
        ));
        for s in state.past_sessions.iter().rev() {
            out.push_str(&format!(
                "\n• `{}` — {}, {}, left {}",
                s.id,
                s.agent,
                plural(s.turns as usize, "turn"),
                s.left.get(..19).unwrap_or(&s.left).replace('T', " ")
            ));
        }
        out
    }

    fn status_text(&self, sender: &str) -> String {
        let usage = self
            .deps
            .store
            .room(&self.key)
            .map(|r| r.session_usage)
            .unwrap_or_default();
        let choice = self.agent_choice();
        let model = match &self.model {
            Some(m) => format!("`{m}`"),
            None => "the agent's default".to_string(),
        };
        let session = match &self.session_id {
            Some(id) => format!(
                "`{id}` · {} · {} tokens ({} in, {} out) · ${:.4}",
                plural(usage.turns as usize, "turn"),
                usage.input_tokens + usage.output_tokens,
                usage.input_tokens,
                usage.output_tokens,
                usage.cost_usd
            ),
            None => "none yet (the next message starts one)".to_string(),
        };
        let context = match (usage.turns, usage.context_window) {
            (0, _) => "nothing yet".to_string(),
            (_, Some(window)) if window > 0 => format!(
                "{}% ({} of {window} tokens)",
                usage.context_tokens * 100 / window,
                usage.context_tokens
            ),
            _ => format!(
                "{} tokens (the agent did not report its window)",
                usage.context_tokens
            ),
        };
        let state = if self.paused {
            "paused".to_string()
        } else if self.running.is_some() {
            "a turn is running".to_string()
        } else if let Some(h) = self.usage_hold() {
            hold::status(&h)
        } else {
            "idle".to_string()
        };
        // The agent's last reported limit state (an `allowed_warning` is shown only here).
        let limit = self
            .deps
            .holds
            .last_seen(self.agent_name())
            .map(|l| format!("\n{}", hold::limit_line(&l)))
            .unwrap_or_default();
        let mut out = format!(
            "📊 Status of this room\nagent: `{}` ({})\nmodel: {model}\nsession: {session}\ncontext: {context}\nqueue: {} · {state}\nprocess: {}{limit}",
            choice.config.name,
            choice.config.kind,
            plural(self.pending.len(), "message waiting"),
            process_state(&choice, &self.key)
        );
        if let Some(line) = self.budget_line(sender) {
            out.push_str(&format!("\nbudget: {line}"));
        }
        out
    }
}

/// The room's agent process: a warm one kept between turns (its pid and memory), or a
/// process started for each turn.
fn process_state(agent: &AgentChoice, room: &crate::model::RoomKey) -> String {
    match agent.backend.process_info(room) {
        Some(info) => match info.rss_bytes {
            Some(rss) => format!(
                "warm (pid {}, {})",
                info.pid,
                crate::connector::files::human_size(rss)
            ),
            None => format!("warm (pid {})", info.pid),
        },
        None => "cold (started for the next turn)".into(),
    }
}

/// `1 turn`, `2 turns`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        match what.split_once(' ') {
            // "queued message" → "queued messages"; "message waiting" → "messages waiting"
            Some((a, b)) if b == "waiting" => format!("{n} {a}s {b}"),
            _ => format!("{n} {what}s"),
        }
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
