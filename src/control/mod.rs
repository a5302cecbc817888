//! The control socket: `control.sock` in the runtime dir (mode 0600, peer uid checked), one
//! JSON request line in, one JSON response line out. The CLI's admin commands (`list`,
//! `pause`, `resume`, `reset`, `send`, `status`, `approve`, `deny`, `stop`) go through it.
//!
//! Owns: the protocol ([`proto`]), the server that turns requests into dispatcher
//! [`crate::dispatch::ControlRequest`]s, and the client.
//! Must not import: room or connector internals — it talks to the dispatcher's channel only.

pub mod client;
pub mod proto;
pub mod server;

/// File name of the socket inside the runtime dir.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest request line accepted (a `send` text included).
pub const MAX_REQUEST: usize = 1024 * 1024;
