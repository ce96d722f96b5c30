//! Who executes a run: one process at a time owns it (SPEC.md, Semantics 5), under a lease in
//! the state store with its host and pid, renewed while it runs. A second `resume` of a run
//! whose owner is alive is refused; a dead owner's run is taken over once its lease expires,
//! or at once when the owner was on this host and its process is gone.

use std::time::Duration;

use gapless_store::{RunId, RunOwner, RunOwnerRecord, Store};
use tokio_util::sync::CancellationToken;

/// How long a run's owner lease lasts unless renewed; it is renewed every third of that.
pub const RUN_LEASE: Duration = Duration::from_secs(60);

/// This process as the owner of runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Unique to this process: host, pid and a random part (a pid is reused after a reboot).
    pub id: String,
    /// This host's name.
    pub host: String,
    /// This process's id.
    pub pid: u32,
}

impl Owner {
    /// The current process.
    pub fn this_process() -> Self {
        let host = hostname();
        let pid = std::process::id();
        Self {
            id: format!("{host}/{pid}/{:08x}", fastrand::u32(..)),
            host,
            pid,
        }
    }

    /// As the state store takes it.
    pub fn as_store(&self) -> RunOwner<'_> {
        RunOwner {
            id: &self.id,
            host: &self.host,
            pid: i64::from(self.pid),
        }
    }

    /// Whether `other` is a process of this host that no longer exists (or is a zombie): its
    /// run can be taken over at once, without waiting for its lease to expire.
    pub fn sees_dead(&self, other: &RunOwnerRecord) -> bool {
        other.host == self.host && !process_alive(other.pid)
    }
}

/// The name of this host (`/proc/sys/kernel/hostname`), or `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// This host and its current boot (`HOST/BOOT_ID`), as recorded with runners' process groups:
/// a group id means something only on the host and boot that recorded it.
pub fn runner_host() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_owned())
            .unwrap_or_default();
        format!("{}/{boot}", hostname())
    })
    .clone()
}

/// Makes sure the runners that a dead owner of run `run_id` left on this host and boot are
/// gone (SIGTERM, a grace period, SIGKILL to each recorded process group), before their cells
/// run again. Runners on other hosts cannot be reached from here: their leases fence them.
/// Errs when a group survives SIGKILL.
pub async fn end_orphans(store: &Store, run_id: &RunId) -> Result<usize, OrphanError> {
    let here = runner_host();
    let mut ended = 0;
    for runner in store.recorded_runners(run_id).await? {
        if runner.host != here {
            tracing::warn!(task = runner.task_id, host = %runner.host, "a runner of the run's last owner may still run on another host; its lease fences it");
            continue;
        }
        let Ok(group) = i32::try_from(runner.pgid) else {
            continue;
        };
        match gapless_connect::end_process_group(group, ORPHAN_GRACE).await {
            Ok(gapless_connect::GroupEnding::AlreadyGone) => {}
            Ok(_) => ended += 1,
            Err(gapless_connect::KillError::NotARunnerGroup { .. }) => {}
            Err(error) => return Err(OrphanError::Survived(error)),
        }
    }
    Ok(ended)
}

/// How long an orphaned runner gets between SIGTERM and SIGKILL.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// Why the runners of a dead owner could not be made sure to be gone.
#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    /// The state store failed.
    #[error("state store")]
    Store(#[from] gapless_store::StoreError),
    /// A runner's process group survived SIGKILL.
    #[error("a runner left by the run's last owner cannot be stopped")]
    Survived(#[source] gapless_connect::KillError),
}

/// Whether process `pid` of this host is alive: listed, and not a zombie.
fn process_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Renews `owner`'s lease on run `run_id` every third of [`RUN_LEASE`] until `stop` fires.
/// When the lease is lost (another process took the run over after this one stopped renewing
/// it), `execution` is cancelled so the execution stops, and `true` is returned: two owners
/// never execute one run. Errors of the state store are logged and retried at the next tick;
/// the executor's own writes wait out an outage.
pub async fn keep_owning(
    store: Store,
    run_id: RunId,
    owner: Owner,
    stop: CancellationToken,
    execution: CancellationToken,
) -> bool {
    let period = RUN_LEASE / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(period) => {}
        }
        match store.renew_run(&run_id, &owner.id, RUN_LEASE).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(run = %run_id, "another process took this run over: stopping");
                execution.cancel();
                return true;
            }
            Err(error) => tracing::warn!(run = %run_id, %error, "cannot renew the run's lease"),
        }
    }
}

/// The host and pid an owner id (`HOST/PID/RANDOM`, [`Owner::this_process`]) names, if it has
/// that form.
fn host_and_pid(id: &str) -> Option<(&str, i64)> {
    let mut parts = id.rsplitn(3, '/');
    let _random = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    Some((host, pid))
}

impl Owner {
    /// Whether the process an owner or lease holder id names is a process of this host that
    /// no longer exists: what it held can be taken at once, without waiting for its lease.
    pub fn sees_dead_id(&self, id: &str) -> bool {
        id != self.id
            && host_and_pid(id).is_some_and(|(host, pid)| host == self.host && !process_alive(pid))
    }
}

/// Makes sure the runners that dead node `node_id` left on this host and boot are gone, before
/// its tasks are handed to others. Runners on other hosts cannot be reached from here: they
/// stopped themselves when their node could no longer renew their leases, or died with their
/// node (a runner gets SIGKILL when its parent dies). Returns how many groups it ended.
pub async fn end_runners_of(store: &Store, node_id: &str) -> Result<usize, OrphanError> {
    let here = runner_host();
    let mut ended = 0;
    for runner in store.runners_of(node_id).await? {
        if runner.host != here {
            continue;
        }
        let Ok(group) = i32::try_from(runner.pgid) else {
            continue;
        };
        match gapless_connect::end_process_group(group, ORPHAN_GRACE).await {
            Ok(gapless_connect::GroupEnding::AlreadyGone) => {}
            Ok(_) => ended += 1,
            Err(gapless_connect::KillError::NotARunnerGroup { .. }) => {}
            Err(error) => return Err(OrphanError::Survived(error)),
        }
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::{Owner, host_and_pid};

    #[test]
    fn an_owner_id_names_its_host_and_pid() {
        assert_eq!(host_and_pid("box/42/0badf00d"), Some(("box", 42)));
        assert_eq!(host_and_pid("a/b/42/0badf00d"), Some(("a/b", 42)));
        assert_eq!(host_and_pid("gapless-42"), None);
        let me = Owner::this_process();
        assert!(!me.sees_dead_id(&me.id));
        // pid 0 is never a live process of ours.
        assert!(me.sees_dead_id(&format!("{}/0/00000000", me.host)));
        assert!(!me.sees_dead_id("elsewhere/0/00000000"));
    }
}
