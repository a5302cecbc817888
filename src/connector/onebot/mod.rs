//! OneBot connector (in progress).

pub mod config;
