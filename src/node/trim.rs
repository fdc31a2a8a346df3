//! Hands the heap's free pages back to the kernel once a burst is over.
//!
//! A burst of publishes (or the recovery of every volume after a restart)
//! allocates and frees far more than the node keeps. glibc's allocator
//! keeps what was freed in its arenas, interleaved with the small entries
//! that live on (each volume's state, timer and series), so the resident
//! set stays near the burst's peak. With 10,000 volumes on the sandbox,
//! `malloc_trim` called from outside (`gdb -p`) after the burst returned
//! about 1 MiB; after a recovery it returns more.
//!
//! The task sleeps until a burst begins and trims once it has been quiet
//! for [`QUIET`]: an idle node does no work and never wakes for this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::shutdown::CancellationToken;

/// How long without activity before the free pages are returned.
pub const QUIET: Duration = Duration::from_secs(1);

/// Notes activity; trims once it stops. Clones share the task.
#[derive(Debug, Clone)]
pub struct MemoryTrim {
    notify: Arc<Notify>,
    started: Arc<OnceLock<()>>,
    trims: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

/// Notes activity when dropped, so every way out of an operation counts.
#[must_use]
pub struct NoteOnDrop<'a>(&'a MemoryTrim);

impl Drop for NoteOnDrop<'_> {
    fn drop(&mut self) {
        self.0.note();
    }
}

impl MemoryTrim {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            started: Arc::default(),
            trims: Arc::default(),
            shutdown,
        }
    }

    /// Something allocated and freed a lot (a publish, an unpublish, a
    /// recovery). Must be called within the Tokio runtime.
    pub fn note(&self) {
        self.started.get_or_init(|| {
            tokio::spawn(run(
                self.notify.clone(),
                self.trims.clone(),
                self.shutdown.clone(),
            ));
        });
        self.notify.notify_one();
    }

    /// Notes activity when the returned guard goes out of scope.
    pub fn on_drop(&self) -> NoteOnDrop<'_> {
        NoteOnDrop(self)
    }

    /// How many times the pages were returned.
    pub fn trims(&self) -> u64 {
        self.trims.load(Ordering::Relaxed)
    }
}

async fn run(notify: Arc<Notify>, trims: Arc<AtomicU64>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = notify.notified() => {}
        }
        // Wait out the burst: every note restarts the quiet period.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = notify.notified() => {}
                () = tokio::time::sleep(QUIET) => break,
            }
        }
        release_free_pages();
        trims.fetch_add(1, Ordering::Relaxed);
    }
}

/// Returns the allocator's free pages to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_pages() {
    // SAFETY: malloc_trim takes no pointers and is safe to call from any
    // thread at any time; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_pages() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs on Tokio's paused clock: time moves only when every task waits,
    /// so the quiet period is exact and nothing races the wall clock.
    #[tokio::test(start_paused = true)]
    async fn a_burst_is_trimmed_once_after_it_goes_quiet() {
        let shutdown = CancellationToken::new();
        let trim = MemoryTrim::new(shutdown.clone());
        assert_eq!(trim.trims(), 0);
        for _ in 0..5 {
            trim.note();
            tokio::time::sleep(QUIET / 2).await;
        }
        // 2.5 quiet periods have passed, but never one without a note.
        assert_eq!(trim.trims(), 0);
        tokio::time::sleep(QUIET).await;
        tokio::task::yield_now().await;
        assert_eq!(trim.trims(), 1);
        // Idle: no further trim, however long nothing happens.
        tokio::time::sleep(QUIET * 100).await;
        assert_eq!(trim.trims(), 1);
        {
            let _guard = trim.on_drop();
        }
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(trim.trims(), 2);
        shutdown.cancel();
    }
}
