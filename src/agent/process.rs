//! Agent subprocess guard (in progress).
