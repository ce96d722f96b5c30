//! Crash points (RELIABILITY.md T3): named steps between two durable writes where the crash
//! tests abort the process, as `kill -9` would stop it, to prove every step resumes.

use std::sync::atomic::{AtomicU32, Ordering};

/// A named step between two durable writes, where the crash-point tests abort the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The claim is committed; the runner has not started.
    AfterClaim,
    /// The runner exited 0; the gate has not re-probed.
    AfterRunner,
    /// The gate passed; the completion is not committed.
    BeforeComplete,
    /// The completion is committed, with the claims of the tasks it made ready; those have not
    /// started.
    AfterComplete,
}

impl CrashPoint {
    /// Every point, by name.
    pub const ALL: [(&'static str, CrashPoint); 4] = [
        ("after-claim", CrashPoint::AfterClaim),
        ("after-runner", CrashPoint::AfterRunner),
        ("before-complete", CrashPoint::BeforeComplete),
        ("after-complete", CrashPoint::AfterComplete),
    ];
}

/// `GAPLESS_CRASH_AT=point[:n]`: abort (as `kill -9` would stop it, without cleanup) the n-th
/// time (default the first) the executor reaches `point`. Only for crash tests.
#[derive(Debug)]
pub struct CrashAt {
    point: CrashPoint,
    nth: u32,
    seen: AtomicU32,
}

impl Clone for CrashAt {
    fn clone(&self) -> Self {
        Self {
            point: self.point,
            nth: self.nth,
            seen: AtomicU32::new(self.seen.load(Ordering::SeqCst)),
        }
    }
}

impl CrashAt {
    /// Parses `point[:n]`; `None` for an unknown point or count.
    pub fn parse(value: &str) -> Option<Self> {
        let (name, nth) = match value.split_once(':') {
            Some((name, nth)) => (name, nth.parse().ok()?),
            None => (value, 1),
        };
        let point = CrashPoint::ALL.iter().find(|(known, _)| *known == name)?.1;
        Some(Self {
            point,
            nth,
            seen: AtomicU32::new(0),
        })
    }

    pub(super) fn reached(&self, point: CrashPoint) {
        if point == self.point && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth {
            eprintln!("gapless: crashing at {point:?} (GAPLESS_CRASH_AT)");
            std::process::abort();
        }
    }
}
