//! The one shutdown signal shared by every loop of a mode.
//!
//! Each mode receives a [`CancellationToken`]; `main` cancels it on SIGTERM or
//! SIGINT. Loops select on `token.cancelled()` so a single signal drains all.

pub use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
///
/// The signal handlers are installed before this returns, so a signal that
/// arrives while the mode is still starting is not lost.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
        trigger.cancel();
    });
    Ok(token)
}
