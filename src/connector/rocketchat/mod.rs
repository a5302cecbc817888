//! RocketChat connector (in progress).

pub mod config;
