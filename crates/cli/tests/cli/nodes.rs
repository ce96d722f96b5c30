//! Several `serve` nodes on one PostgreSQL state store (SPEC.md, "Several nodes"): one leader
//! at a time runs the scheduled scans, a new one takes over when it dies, and a leader that was
//! only paused is fenced by its term when it wakes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use crate::serve::Serve;
use crate::util::{Project, exec};

/// The lease `serve` runs with here: short, so that the expiry path is quick to test.
const LEASE: &str = "3s";
const LEASE_MS: i64 = 3_000;

/// A pipeline with a SQLite warehouse (shared by the nodes of this one host) and its state on
/// a fresh PostgreSQL database; `None` when no PostgreSQL is configured.
pub(crate) struct Cluster {
    pub(crate) project: Project,
    pub(crate) state: PgPool,
    db: gapless_testkit::PgTestDb,
}

impl Cluster {
    pub(crate) async fn new(pipeline: &str) -> Option<Self> {
        let url = gapless_testkit::pg_url()?;
        let db = gapless_testkit::fresh_pg_database(&url).await.unwrap();
        let project = Project::new();
        project.write(
            "gapless.toml",
            &format!("{pipeline}\n[state]\nurl = \"{}\"\n", db.url()),
        );
        let output = project.run(&["migrate"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let state = PgPool::connect(db.url()).await.unwrap();
        Some(Self { project, state, db })
    }

    pub(crate) fn serve(&self, args: &[&str]) -> Serve {
        let mut all = vec!["--lease", LEASE];
        all.extend(args);
        Serve::start_after(&self.project, &all, &[])
    }

    /// `gapless nodes --json`.
    pub(crate) fn nodes(&self) -> Value {
        let output = self.project.run(&["--json", "nodes"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The pid of the leader, once there is one (waits up to a minute).
    pub(crate) async fn leader_pid(&self) -> u32 {
        self.leader_other_than(0).await
    }

    /// The pid of the leader, once there is one other than `old` (waits up to a minute).
    pub(crate) async fn leader_other_than(&self, old: u32) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let nodes = self.nodes();
            if let Some(leader) = nodes["leader"].as_str() {
                let pid = leader.rsplitn(3, '/').nth(1).unwrap().parse().unwrap();
                if pid != old {
                    return pid;
                }
            }
            assert!(Instant::now() < deadline, "no leader within a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn finish(self) {
        self.state.close().await;
        self.db.drop_db().await.unwrap();
    }
}

/// Scans every second, over a small complete pipeline: each tick is a real scan.
const SCANNED: &str = r#"
[pipeline]
name = "scanned"
start = "2024-03-20"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "raw"
check.sql = "SELECT d, COUNT(*) FROM raw WHERE d BETWEEN :start AND :end GROUP BY d"

[healing]
scan = "* * * * * *"
lookback = "10d"
"#;

/// Kill the leader ten times during scheduled scans (every second): each time another node
/// leads within one lease period, no occurrence is lost for longer than that, and none runs
/// twice. Then pause the leader (SIGSTOP) past its lease: another node takes over on expiry,
/// and the paused one, woken, writes nothing under its old term.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_is_replaced_within_a_lease_and_a_paused_one_is_fenced() {
    let Some(cluster) = Cluster::new(SCANNED).await else {
        return;
    };
    let warehouse = cluster.project.sqlite("warehouse.db").await;
    exec(&warehouse, "CREATE TABLE raw (d TEXT, v INTEGER)").await;
    warehouse.close().await;
    let mut nodes: BTreeMap<u32, Serve> = BTreeMap::new();
    for _ in 0..3 {
        let serve = cluster.serve(&[]);
        nodes.insert(serve.pid(), serve);
    }
    let mut takeovers = Vec::new();
    for _ in 0..10 {
        let leader = cluster.leader_pid().await;
        // Let it tick a little.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let mut dead = nodes.remove(&leader).unwrap();
        dead.kill();
        let killed = Instant::now();
        cluster.leader_other_than(leader).await;
        takeovers.push(killed.elapsed());
        let serve = cluster.serve(&[]);
        nodes.insert(serve.pid(), serve);
    }
    for took in &takeovers {
        assert!(
            took.as_millis() < u128::try_from(LEASE_MS).unwrap(),
            "a new leader within one lease period: {takeovers:?}"
        );
    }

    // Paused past its lease: the others must wait for it to expire (its process is alive).
    let paused = cluster.leader_pid().await;
    let term_before = cluster.nodes()["term"].as_i64().unwrap();
    signal(paused, "-STOP");
    let stopped = Instant::now();
    let stopped_ms = chrono::Utc::now().timestamp_millis();
    cluster.leader_other_than(paused).await;
    let took = stopped.elapsed();
    assert!(
        took.as_millis() < u128::try_from(2 * LEASE_MS).unwrap(),
        "a new leader once the paused one's lease expired: {took:?}"
    );
    assert!(cluster.nodes()["term"].as_i64().unwrap() > term_before);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(paused, "-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The woken one stepped down: one leader, and its ticks' rows all carry newer terms.
    assert_ne!(cluster.leader_pid().await, paused);
    let paused_ticks_after: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tick_runs WHERE node LIKE '%/' || $1 || '/%' AND claimed_at > $2",
    )
    .bind(paused.to_string())
    .bind(stopped_ms)
    .fetch_one(&cluster.state)
    .await
    .unwrap();
    assert_eq!(
        paused_ticks_after, 0,
        "the paused leader took no tick after waking"
    );

    // Every occurrence was taken once (the primary key), finished once, and none was missed
    // for more than a lease period.
    let ticks: Vec<(i64, Option<i64>, i64)> =
        sqlx::query_as("SELECT at, finished_at, attempts FROM tick_runs ORDER BY at")
            .fetch_all(&cluster.state)
            .await
            .unwrap();
    assert!(ticks.len() > 20, "{} ticks", ticks.len());
    let mut longest = 0;
    for pair in ticks.windows(2) {
        longest = longest.max(pair[1].0 - pair[0].0);
    }
    assert!(
        longest <= LEASE_MS + 1_000,
        "the longest stretch without a tick was {longest} ms"
    );
    let unfinished = ticks.iter().filter(|tick| tick.1.is_none()).count();
    assert!(
        unfinished <= 1,
        "only the one in flight now may be unfinished"
    );
    let reruns = ticks.iter().filter(|tick| tick.2 > 1).count();
    assert!(
        reruns <= 11,
        "re-run only after a leader died mid-tick: {reruns}"
    );
    for (_, serve) in nodes {
        assert_eq!(serve.stop(), 0);
    }
    cluster.finish().await;
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
