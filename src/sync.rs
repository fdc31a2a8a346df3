//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex` even if a thread panicked while holding it. Every mutex
/// this crate locks this way guards a map or queue that each update leaves
/// consistent, so a poisoned lock only says another thread died, and the
/// rest of the process keeps working with what is there.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
