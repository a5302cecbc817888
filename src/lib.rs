//! agent-chat-gateway: a daemon that bridges chat rooms to CLI coding agents.
//!
//! # Layout, in the order a message flows
//!
//! - [`connector`] — one folder per platform (web chat, Rocket.Chat, OneBot): wire types,
//!   reconnect loops, conversion into [`model`] types, and replies back out.
//! - [`dispatch`] — sender → role, watcher lookup, mention gate, `approve`/`deny`
//!   interception, routing to room workers.
//! - [`room`] — one worker per room: bounded persisted queue, sequential turns, the session id,
//!   streaming the reply back through the connector.
//! - [`agent`] — one folder per agent CLI: argv, env, process group, output → `AgentEvent`.
//!
//! Beside the flow: [`approval`] (pending tool calls, the hook server, audit log) and
//! [`policy`] (pure allow/ask/deny decisions, bash parsing).
//!
//! Around it: [`config`] (file → validated `Config`), [`state`] (atomic state files),
//! [`control`] (Unix socket protocol), [`daemon`] (fork, pid file, signals, wiring) and
//! [`cli`] (one function per subcommand). [`model`] is the vocabulary they share.
//! [`admission`] bounds what unauthenticated clients may hold on the HTTP listeners.

pub mod admission;
pub mod agent;
pub mod approval;
pub mod cli;
pub mod config;
pub mod connector;
pub mod control;
pub mod daemon;
pub mod dispatch;
pub mod model;
pub mod policy;
pub mod room;
pub mod state;
pub mod text;
pub mod timefmt;
