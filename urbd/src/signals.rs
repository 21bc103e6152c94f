//! Orderly stop on SIGINT/SIGTERM.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Sets `stop` to true at the first SIGINT or SIGTERM.
pub async fn stop_on_signal(stop: watch::Sender<bool>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = stop.send(true);
}
