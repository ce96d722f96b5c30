//! Waiting out a state store that stops answering (PostgreSQL restarted, a network blip):
//! a call that fails with a transient error is tried again with backoff, up to the run's
//! outage limit, before the run stops (exit 3). Runners keep running meanwhile; the heartbeat
//! stops a runner only when its lease could otherwise expire (`attempt::with_heartbeat`).

use std::future::Future;
use std::time::Duration;

use gapless_store::StoreError;
use tokio::time::Instant;

/// The first wait after a failed call; doubled after each failure, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// Runs `call` until it succeeds, fails for a reason waiting cannot fix, or transient failures
/// have lasted `limit`: then the last error is returned. `what` names the call in the log.
pub(crate) async fn patiently<T, Fut>(
    limit: Duration,
    what: &str,
    mut call: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut since: Option<Instant> = None;
    let mut wait = FIRST_WAIT;
    loop {
        match call().await {
            Ok(value) => {
                if let Some(since) = since {
                    tracing::warn!(
                        call = what,
                        after = ?since.elapsed(),
                        "the state store answers again"
                    );
                }
                return Ok(value);
            }
            Err(error) if error.is_retryable() => {
                let first = *since.get_or_insert_with(|| {
                    tracing::warn!(call = what, %error, ?limit, "the state store does not answer; waiting for it");
                    Instant::now()
                });
                let left = limit.saturating_sub(first.elapsed());
                if left.is_zero() {
                    return Err(error);
                }
                tokio::time::sleep(wait.min(left)).await;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            Err(error) => return Err(error),
        }
    }
}
