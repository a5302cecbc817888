//! Claude Code backend (in progress).
