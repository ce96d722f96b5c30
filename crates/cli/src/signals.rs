//! Stopping a run from outside: Ctrl-C (SIGINT) and SIGTERM, which systemd, Docker and
//! Kubernetes send, both stop it the same way: running tasks are stopped (their process groups
//! terminated), nothing new starts, and the run is recorded `interrupted`, resumable.

use std::io::Write;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `cancel` on the first SIGINT or SIGTERM. Runs until then (abort it when the run is
/// over). If a handler cannot be installed, the signal keeps its default action (the process
/// ends, and `resume` picks the run up).
pub(crate) async fn cancel_on_signal(cancel: CancellationToken) {
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    let (mut interrupt, mut terminate) = match (interrupt, terminate) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "cannot handle SIGINT/SIGTERM; they will end gapless at once");
            return;
        }
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "interrupted",
        _ = terminate.recv() => "terminated",
    };
    let _ = writeln!(
        std::io::stderr(),
        "\n{name}: stopping running tasks (resume with `gapless resume`)"
    );
    cancel.cancel();
}
