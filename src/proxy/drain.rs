//! Draining: once the process starts to leave (binary upgrade or graceful stop), every
//! response closes its connection, so active clients move to the new process cleanly instead
//! of meeting a keep-alive connection closed under them when the old process stops.

use pingora::server::ExecutionPhase;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the process starts to drain; process-wide like the shutdown it follows.
static DRAINING: AtomicBool = AtomicBool::new(false);

pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Follow Pingora's execution phases and raise [`draining`] when the process starts to leave.
pub async fn watch_phases(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match phases.recv().await {
            Ok(
                ExecutionPhase::GracefulUpgradeTransferringFds
                | ExecutionPhase::GracefulUpgradeCloseTimeout
                | ExecutionPhase::GracefulTerminate
                | ExecutionPhase::ShutdownStarted,
            ) => {
                if !DRAINING.swap(true, Ordering::Relaxed) {
                    log::info!("draining: responses now close their connections");
                }
            }
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => break,
        }
    }
}
