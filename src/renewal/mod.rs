//! Renewal: the pure schedule math. The scheduler that drives it (one timer
//! for all volumes, a node-wide rate limit) builds on [`schedule`].
pub mod schedule;
