//! Renewal: the pure schedule math ([`schedule`]), one timer for all volumes
//! ([`scheduler`]) and the node-wide issuance limit ([`limiter`]).
pub mod limiter;
pub mod schedule;
pub mod scheduler;
