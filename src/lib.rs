//! agent-chat-gateway: a daemon that bridges chat rooms to CLI coding agents.
//!
//! # Layout, in the order a message flows
//!
//! - [`connector`] — one folder per platform (web chat, Rocket.Chat, OneBot, the
//!   OpenAI-compatible API): wire types, reconnect loops, conversion into [`model`] types, and
//!   replies back out.
//! - [`dispatch`] — sender → role, watcher lookup, mention gate, `approve`/`deny` and room
//!   [`commands`] interception, routing to room workers.
//! - [`room`] — one worker per room: bounded persisted queue, sequential turns, the session id,
//!   streaming the reply back through the platform's [`outbox`].
//! - [`agent`] — one folder per agent CLI (argv, env, output → `AgentEvent`, its own way of
//!   asking about tool calls, e.g. Claude's PreToolUse endpoint), listed in `agent::registry`;
//!   the shared run loop and process guard in `agent::process`.
//!
//! Beside the flow: [`approval`] (the broker behind `agent::gate::ToolGate`: pending tool
//! calls, owner prompts, audit log) and [`policy`] (pure allow/ask/deny decisions, bash
//! parsing).
//!
//! Around it: [`config`] (file → validated `Config`), [`state`] (atomic state files),
//! [`control`] (Unix socket protocol), [`daemon`] (fork, pid file, signals, wiring) and
//! [`cli`] (one function per subcommand). [`model`] is the vocabulary they share.
//! [`admission`] bounds what unauthenticated clients may hold on the HTTP listeners.
//! [`ledger`] records each turn's usage; [`budget`] checks it against the configured limits.

pub mod admin;
pub mod admission;
pub mod agent;
pub mod approval;
pub mod budget;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connector;
pub mod control;
pub mod daemon;
pub mod dispatch;
pub mod init;
pub mod ledger;
pub mod logfile;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod policy;
pub mod ratelimit;
pub mod room;
pub mod schedule;
pub mod service;
pub mod state;
pub mod text;
pub mod timefmt;

/// The connector and agent types this program knows, as configuration is loaded with them
/// (`config` imports neither list, so platforms and agents may build on it).
pub static TYPES: config::Types<'static> = config::Types {
    connectors: &connector::registry::PLATFORMS,
    agents: &agent::registry::AGENTS,
};
