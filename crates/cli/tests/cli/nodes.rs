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
    pub(crate) db: gapless_testkit::PgTestDb,
    /// A PostgreSQL server of the test's own, which it may restart ([`Cluster::on_own_server`]).
    server: Option<gapless_testkit::cluster::PgCluster>,
}

impl Cluster {
    pub(crate) async fn new(pipeline: &str) -> Option<Self> {
        let url = gapless_testkit::pg_url()?;
        Some(Self::on(pipeline, &url, None).await)
    }

    /// [`Cluster::new`] on a private PostgreSQL server that [`Cluster::restart_server`] can
    /// restart under the nodes. `None` when no PostgreSQL is configured; PostgreSQL's server
    /// binaries must be installed then.
    pub(crate) async fn on_own_server(pipeline: &str) -> Option<Self> {
        gapless_testkit::pg_url()?;
        let Some(server) = gapless_testkit::cluster::PgCluster::start().unwrap() else {
            panic!("PostgreSQL's server binaries are needed to restart a server under test");
        };
        let url = server.url();
        Some(Self::on(pipeline, &url, Some(server)).await)
    }

    async fn on(
        pipeline: &str,
        url: &str,
        server: Option<gapless_testkit::cluster::PgCluster>,
    ) -> Self {
        let db = gapless_testkit::fresh_pg_database(url).await.unwrap();
        let project = Project::new();
        project.write(
            "gapless.toml",
            &format!("{pipeline}\n[state]\nurl = \"{}\"\n", db.url()),
        );
        let output = project.run(&["migrate"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let state = PgPool::connect(db.url()).await.unwrap();
        Self {
            project,
            state,
            db,
            server,
        }
    }

    /// Restarts the private server (fast: every session of every node is ended), waiting
    /// until it accepts connections again.
    pub(crate) fn restart_server(&self) {
        self.server
            .as_ref()
            .expect("a cluster on its own server")
            .restart()
            .unwrap();
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
                let pid = leader.rsplit('/').nth(1).unwrap().parse().unwrap();
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
        drop(self.server);
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
    let leader = cluster.leader_pid().await;
    let output = cluster.project.run(&["nodes"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.matches(" live ").count(), 3, "{text}");
    assert!(text.contains(&format!("/{leader}/")), "{text}");
    assert!(text.contains("leader (term "), "{text}");
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

/// Two heal runs ended while their node died before recording the heals: one completed its
/// cell, one failed. Their gaps say `triggered` and nothing runs them any more; the leader's
/// next scheduled tick records both heals: the first gap complete (with `healed_at`), the
/// second failed with a reason, so that the policy may heal it again.
#[tokio::test(flavor = "multi_thread")]
async fn heals_whose_node_died_unrecorded_are_recorded_by_the_next_tick() {
    use gapless_store::{Creator, DetectedGap, NewRun, NewTask, NewTaskState, RunKind, RunOwner};
    // Scans every second over the last ten days; the heals below are of older dates, which no
    // scan covers, so only recording their heals can move their gaps.
    let late = SCANNED
        .replace("\"scanned\"", "\"late\"")
        .replace("2024-03-20", "2024-01-01");
    let Some(cluster) = Cluster::new(&late).await else {
        return;
    };
    let warehouse = cluster.project.sqlite("warehouse.db").await;
    exec(&warehouse, "CREATE TABLE raw (d TEXT, v INTEGER)").await;
    warehouse.close().await;
    let store = gapless_store::Store::connect(cluster.db.url(), cluster.project.path())
        .await
        .unwrap();
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2024, 2, d).unwrap();
    let gap = |d: u32| DetectedGap {
        phase_from: None,
        phase_to: 1,
        date: day(d),
        age_days: 59,
        found: 0,
        expected: 1,
    };
    store
        .record_scan(&[gap(1), gap(2)], &[], None)
        .await
        .unwrap();
    let ids: Vec<i64> = store
        .gaps(gapless_store::GapFilter::Open)
        .await
        .unwrap()
        .iter()
        .map(|gap| gap.id)
        .collect();
    let dead = RunOwner {
        id: "gone/1/x",
        host: "gone",
        pid: 1,
    };
    let mut runs = Vec::new();
    for (d, id) in [(1, ids[0]), (2, ids[1])] {
        let heal = NewRun {
            kind: RunKind::Heal,
            pipeline: "late".to_owned(),
            request: serde_json::json!({}),
            tasks: vec![NewTask {
                phase: 1,
                start: day(d),
                end: day(d),
                dates: vec![day(d)],
                state: NewTaskState::Pending,
                error: None,
            }],
        };
        let creator = Creator {
            owner: dead,
            ttl: Duration::from_secs(60),
            fence: None,
            heals: &[id],
        };
        runs.push(store.create_run_by(&heal, &creator).await.unwrap());
    }
    // The first run completed its cell and succeeded, the second failed; neither recorded
    // its heal (their node was killed between ending the run and recording it).
    let task = store.tasks(&runs[0]).await.unwrap()[0].id;
    let claim = store
        .claim(task, 0, dead.id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .complete(task, claim.epoch, &serde_json::json!({}), "heal")
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_run(&runs[0], gapless_store::RunState::Succeeded)
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_run(&runs[1], gapless_store::RunState::Failed)
            .await
            .unwrap()
    );
    store.close().await;

    let serve = cluster.serve(&[]);
    cluster.leader_pid().await;
    eventually_pg(
        &cluster.state,
        "gaps left triggered by ended heal runs",
        "SELECT COUNT(*) FROM gaps WHERE healing_status = 'triggered'",
        0,
    )
    .await;
    let rows: Vec<(String, String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT partition_date, healing_status, healed_at, last_error FROM gaps \
         WHERE run_id IS NOT NULL ORDER BY partition_date",
    )
    .fetch_all(&cluster.state)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        ("2024-02-01", "complete")
    );
    assert!(rows[0].2.is_some(), "healed_at is set: {rows:?}");
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("2024-02-02", "failed")
    );
    assert!(rows[1].3.is_some(), "the failure says why: {rows:?}");
    let ticks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tick_runs")
        .fetch_one(&cluster.state)
        .await
        .unwrap();
    assert!(ticks > 0, "recorded by a scheduled tick");
    assert_eq!(serve.stop(), 0);
    cluster.finish().await;
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Writes each date of its range to the sink once (the unique key refuses a second row; a
/// re-execution finds the row there and writes nothing), and one row per execution with its
/// time span, fencing token and how many rows it wrote. Sleeps so that kills land mid-task.
const RUNNER: &str = r#"#!/usr/bin/env python3
import datetime, os, random, sqlite3, sys, time
phase, start, end = int(sys.argv[1]), sys.argv[2], sys.argv[3]
token = int(os.environ["GAPLESS_ATTEMPT_TOKEN"])
started = int(time.time() * 1000)
time.sleep(random.uniform(0.5, 1.5))
db = sqlite3.connect("warehouse.db", timeout=60)
db.execute("BEGIN IMMEDIATE")
day, last, written = datetime.date.fromisoformat(start), datetime.date.fromisoformat(end), 0
while day <= last:
    written += db.execute(
        "INSERT INTO sink (phase, d, token) VALUES (?, ?, ?) ON CONFLICT (phase, d) DO NOTHING",
        (phase, day.isoformat(), token)).rowcount
    day += datetime.timedelta(days=1)
db.execute("INSERT INTO executions (phase, start, end, started_ms, ended_ms, token, written) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)",
           (phase, start, end, started, int(time.time() * 1000), token, written))
db.commit()
"#;

/// Three phases over 300 days (2023-06-05 to 2024-03-30; today is 2024-03-31), in batches of
/// five days, four at once per phase.
const CHAOS: &str = r#"
[pipeline]
name = "chaos"
start = "2023-06-05"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "a"
batch_days = 5
concurrency = 4
retries = 5
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 1 AND d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 2
name = "b"
needs = [1]
batch_days = 5
concurrency = 4
retries = 5
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 2 AND d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 3
name = "c"
needs = [{ phase = 2, lookback_days = 2 }]
batch_days = 5
concurrency = 4
retries = 5
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 3 AND d BETWEEN :start AND :end GROUP BY d"
"#;

/// Three nodes heal 3 phases × 300 days while a random node is killed -9 and started again,
/// twenty times, every kill mid-heal, after their PostgreSQL server restarted mid-heal. Every
/// cell ends complete with exactly one sink row written (the unique key), no two recorded
/// executions of a cell overlap, the work was shared, no lease is left with a
/// dead node, and the ledger closes every gap.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_heal_300_days_through_twenty_kills_and_a_database_restart() {
    let Some(cluster) = Cluster::on_own_server(CHAOS).await else {
        return;
    };
    let project = &cluster.project;
    project.script("runner.py", RUNNER);
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "PRAGMA journal_mode = WAL;
         CREATE TABLE sink (phase INTEGER, d TEXT, token INTEGER, UNIQUE (phase, d));
         CREATE TABLE executions (phase INTEGER, start TEXT, end TEXT, started_ms INTEGER,
             ended_ms INTEGER, token INTEGER, written INTEGER);",
    )
    .await;
    let mut nodes: Vec<Serve> = (0..3).map(|_| cluster.serve(&["--jobs", "4"])).collect();
    cluster.leader_pid().await;
    let http = gapless_connect::http_client().unwrap();
    let response = http
        .post(nodes[0].url("/scan-gaps"))
        .json(&serde_json::json!({"heal": true, "include_old": true, "lookback": "400d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let started = Instant::now();
    // Once the heal is under way, the database restarts under the nodes (every session
    // ended); then the kills begin.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sink")
            .fetch_one(&warehouse)
            .await
            .unwrap();
        if written >= 60 {
            break;
        }
        assert!(Instant::now() < deadline, "the heal did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM gaps WHERE healing_status <> 'complete'")
            .fetch_one(&cluster.state)
            .await
            .unwrap();
    assert!(open > 0, "the heal ended before the restart");
    cluster.restart_server();
    let mut sharing = 0;
    let mut kills_mid_heal = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(400..1_200))).await;
        let holders: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT lease_owner) FROM tasks WHERE state = 'running'",
        )
        .fetch_one(&cluster.state)
        .await
        .unwrap();
        sharing = sharing.max(holders);
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM gaps WHERE healing_status <> 'complete'")
                .fetch_one(&cluster.state)
                .await
                .unwrap();
        assert!(
            open > 0,
            "the heal ended after {kills_mid_heal} kills: every kill must land mid-heal"
        );
        kills_mid_heal += 1;
        let victim = fastrand::usize(..nodes.len());
        nodes[victim].kill();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..500))).await;
        nodes[victim] = cluster.serve(&["--jobs", "4"]);
    }
    // The heal's cells: 300 days, and today's in every phase (planned with the windows
    // after the gaps; not due yet, but runnable).
    let cells: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT DISTINCT phase, date FROM run_cells) c")
            .fetch_one(&cluster.state)
            .await
            .unwrap();
    assert!(cells >= 900, "{cells} cells planned");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rescanned = false;
    loop {
        let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sink")
            .fetch_one(&warehouse)
            .await
            .unwrap();
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM gaps WHERE healing_status <> 'complete'")
                .fetch_one(&cluster.state)
                .await
                .unwrap();
        if written == cells && open > 0 && !rescanned {
            // A node killed after its heal run ended but before it recorded the heal leaves
            // those gaps `triggered`; the next scan records that heal, as this one does.
            rescanned = true;
            let scan = http
                .post(nodes[0].url("/scan-gaps"))
                .json(&serde_json::json!({"lookback": "400d"}))
                .send()
                .await
                .unwrap();
            assert_eq!(scan.status(), 200, "{:?}", scan.text().await);
            continue;
        }
        if written == cells && open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{written} of {cells} cells written, {open} gaps open, after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "healed through {kills_mid_heal} kills in {:?}",
        started.elapsed()
    );

    // Exactly one row per cell, each written by one execution.
    let per_cell: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT phase, d, COUNT(*) FROM sink GROUP BY phase, d HAVING COUNT(*) > 1")
            .fetch_all(&warehouse)
            .await
            .unwrap();
    assert!(per_cell.is_empty(), "{per_cell:?}");
    let writes: i64 = sqlx::query_scalar("SELECT SUM(written) FROM executions")
        .fetch_one(&warehouse)
        .await
        .unwrap();
    assert_eq!(
        writes, cells,
        "every sink row written by exactly one execution"
    );
    // No two recorded executions of overlapping ranges of a phase ran at the same time.
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM executions a JOIN executions b ON a.rowid < b.rowid \
         AND a.phase = b.phase AND a.start <= b.end AND b.start <= a.end \
         AND a.started_ms < b.ended_ms AND b.started_ms < a.ended_ms",
    )
    .fetch_one(&warehouse)
    .await
    .unwrap();
    assert_eq!(overlapping, 0, "two executions of one cell at once");
    // Each phase's `concurrency` (4) held across the three nodes: at the start of any
    // execution, at most three others of its phase were under way.
    let crowd: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM executions a \
         JOIN executions b ON a.phase = b.phase AND b.started_ms <= a.started_ms \
             AND a.started_ms < b.ended_ms GROUP BY a.rowid) c",
    )
    .fetch_one(&warehouse)
    .await
    .unwrap();
    assert!(crowd <= 4, "{crowd} executions of one phase at once");
    let executions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executions")
        .fetch_one(&warehouse)
        .await
        .unwrap();
    // 180 tasks; a kill can cost each of its node's running tasks one more execution.
    assert!(
        executions <= 180 + 20 * 12,
        "{executions} executions for 180 tasks"
    );

    assert!(
        sharing >= 2,
        "the run's tasks ran on several nodes at once (at most {sharing} seen)"
    );

    // The ledger: every cell of the heal recorded complete once per run that holds it, one
    // completion event per cell, and nothing left running.
    let twice: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT phase, date FROM events WHERE status = 'complete' \
         GROUP BY phase, date HAVING COUNT(*) > 1) dup",
    )
    .fetch_one(&cluster.state)
    .await
    .unwrap();
    assert_eq!(twice, 0, "one completion event per cell");
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE status = 'complete'")
        .fetch_one(&cluster.state)
        .await
        .unwrap();
    assert_eq!(events, cells);
    eventually_pg(
        &cluster.state,
        "no task left running",
        "SELECT COUNT(*) FROM tasks WHERE state = 'running'",
        0,
    )
    .await;
    eventually_pg(
        &cluster.state,
        "every run finished",
        "SELECT COUNT(*) FROM runs WHERE state = 'running'",
        0,
    )
    .await;
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'failed'")
        .fetch_one(&cluster.state)
        .await
        .unwrap();
    assert_eq!(failed, 0);

    // No lease held by a dead node: every holder and every registered node is a live one.
    let live: Vec<u32> = nodes.iter().map(Serve::pid).collect();
    eventually_nodes(&cluster, &live).await;
    for serve in nodes {
        assert_eq!(serve.stop(), 0);
    }
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leases WHERE holder IS NOT NULL")
        .fetch_one(&cluster.state)
        .await
        .unwrap();
    assert_eq!(held, 0, "stopped nodes give their leases up");
    warehouse.close().await;
    cluster.finish().await;
}

async fn eventually_pg(state: &PgPool, what: &str, query: &'static str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value: i64 = sqlx::query_scalar(query).fetch_one(state).await.unwrap();
        if value == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {value}, not {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the registered nodes, the leader and every lease holder are exactly `live`.
async fn eventually_nodes(cluster: &Cluster, live: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = cluster.nodes();
        let pid_of = |id: &str| -> u32 { id.rsplit('/').nth(1).unwrap().parse().unwrap() };
        let mut registered: Vec<u32> = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| pid_of(node["id"].as_str().unwrap()))
            .collect();
        registered.sort_unstable();
        let mut expected = live.to_vec();
        expected.sort_unstable();
        let holders_live = report["leases"].as_array().unwrap().iter().all(|lease| {
            lease["holder"]
                .as_str()
                .is_none_or(|holder| live.contains(&pid_of(holder)))
        });
        if registered == expected && holders_live && report["leader"].is_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes {registered:?} and leases {} are not the live {expected:?}",
            report["leases"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PostgreSQL restarted mid-heal (a private cluster, `pg_ctl restart -m fast`, every session
/// ended): three nodes reconnect and go on; every cell is written once, nothing fails, and all
/// three nodes, and a leader, are there at the end.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_go_on_through_a_postgres_restart() {
    if gapless_testkit::pg_url().is_none() {
        return;
    }
    let Some(server) = gapless_testkit::cluster::PgCluster::start().unwrap() else {
        panic!("PostgreSQL's server binaries are needed to restart a server under test");
    };
    let project = Project::new();
    project.write(
        "gapless.toml",
        &format!(
            "{}\n[state]\nurl = \"{}\"\n",
            CHAOS.replace("2023-06-05", "2024-01-01"),
            server.url()
        ),
    );
    let output = project.run(&["migrate"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    project.script("runner.py", RUNNER);
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "PRAGMA journal_mode = WAL;
         CREATE TABLE sink (phase INTEGER, d TEXT, token INTEGER, UNIQUE (phase, d));
         CREATE TABLE executions (phase INTEGER, start TEXT, end TEXT, started_ms INTEGER,
             ended_ms INTEGER, token INTEGER, written INTEGER);",
    )
    .await;
    let nodes: Vec<Serve> = (0..3)
        .map(|_| Serve::start_after(&project, &["--lease", LEASE], &[]))
        .collect();
    let http = gapless_connect::http_client().unwrap();
    let response = http
        .post(nodes[1].url("/scan-gaps"))
        .json(&serde_json::json!({"heal": true, "include_old": true, "lookback": "400d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let written = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sink")
            .fetch_one(&warehouse)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while written().await < 40 {
        assert!(
            Instant::now() < deadline,
            "nothing written before the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = written().await;
    server.restart().unwrap();
    let restarted = Instant::now();
    let state = PgPool::connect(&server.url()).await.unwrap();
    let cells: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT DISTINCT phase, date FROM run_cells) c")
            .fetch_one(&state)
            .await
            .unwrap();
    assert!(before < cells, "the restart came mid-heal");
    eventually_pg(
        &state,
        "every gap healed",
        "SELECT COUNT(*) FROM gaps WHERE healing_status <> 'complete'",
        0,
    )
    .await;
    eprintln!(
        "healed {} cells after the restart in {:?}",
        cells - before,
        restarted.elapsed()
    );
    assert_eq!(written().await, cells);
    let writes: i64 = sqlx::query_scalar("SELECT SUM(written) FROM executions")
        .fetch_one(&warehouse)
        .await
        .unwrap();
    assert_eq!(
        writes, cells,
        "every sink row written by exactly one execution"
    );
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'failed'")
        .fetch_one(&state)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    eventually_pg(
        &state,
        "every run finished",
        "SELECT COUNT(*) FROM runs WHERE state = 'running'",
        0,
    )
    .await;
    let report = project.run(&["--json", "nodes"]);
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["nodes"].as_array().unwrap().len(), 3, "{report}");
    assert!(report["leader"].is_string(), "{report}");
    for serve in nodes {
        assert_eq!(
            serve.stop(),
            0,
            "a node survived the restart and stops cleanly"
        );
    }
    state.close().await;
    warehouse.close().await;
}

/// Records its start (with its pid and its node's) at once, works four seconds, then writes
/// the sink like [`RUNNER`].
const SLOW_RUNNER: &str = r#"#!/usr/bin/env python3
import datetime, os, sqlite3, sys, time
phase, start, end = int(sys.argv[1]), sys.argv[2], sys.argv[3]
token = int(os.environ["GAPLESS_ATTEMPT_TOKEN"])
started = int(time.time() * 1000)
db = sqlite3.connect("warehouse.db", timeout=60)
db.execute("INSERT INTO starts (pid, node) VALUES (?, ?)", (os.getpid(), os.getppid()))
db.commit()
time.sleep(4)
db.execute("BEGIN IMMEDIATE")
written = db.execute(
    "INSERT INTO sink (phase, d, token) VALUES (?, ?, ?) ON CONFLICT (phase, d) DO NOTHING",
    (phase, start, token)).rowcount
db.execute("INSERT INTO executions (phase, start, end, started_ms, ended_ms, token, written) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)",
           (phase, start, end, started, int(time.time() * 1000), token, written))
db.commit()
"#;

/// A node cut off from PostgreSQL (a proxy in front of it stops forwarding) stops its runners
/// within one lease period of the cut, before any other node can take their tasks; the other
/// node adopts the run the cut-off one owned and finishes it, and no cell is written twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_postgres_stops_its_runners_within_a_lease() {
    let pipeline = r#"
[pipeline]
name = "slow"
start = "2024-03-11"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "a"
concurrency = 8
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 1 AND d BETWEEN :start AND :end GROUP BY d"
"#;
    let Some(cluster) = Cluster::new(pipeline).await else {
        return;
    };
    let project = &cluster.project;
    project.script("runner.py", SLOW_RUNNER);
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "PRAGMA journal_mode = WAL;
         CREATE TABLE sink (phase INTEGER, d TEXT, token INTEGER, UNIQUE (phase, d));
         CREATE TABLE starts (pid INTEGER, node INTEGER);
         CREATE TABLE executions (phase INTEGER, start TEXT, end TEXT, started_ms INTEGER,
             ended_ms INTEGER, token INTEGER, written INTEGER);",
    )
    .await;
    let (proxy, proxied) = gapless_testkit::Proxy::in_front_of(cluster.db.url()).unwrap();
    let steady = cluster.serve(&["--jobs", "4"]);
    let cut = Serve::start_after(
        project,
        &["--lease", LEASE, "--jobs", "2"],
        &[("GAPLESS_STATE_URL", proxied.as_str())],
    );
    let http = gapless_connect::http_client().unwrap();
    // The node about to be cut off owns the heal: the other must also adopt the run.
    let response = http
        .post(cut.url("/scan-gaps"))
        .json(&serde_json::json!({"heal": true, "include_old": true, "lookback": "30d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let runners_of = |node: u32| {
        let warehouse = warehouse.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT pid FROM starts WHERE node = $1")
                .bind(i64::from(node))
                .fetch_all(&warehouse)
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while runners_of(cut.pid()).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the node behind the proxy never ran a task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.down();
    let cut_at = Instant::now();
    let pids = runners_of(cut.pid()).await;
    loop {
        let alive = pids
            .iter()
            .filter(|pid| !gapless_testkit::process_gone(&pid.to_string()))
            .count();
        if alive == 0 {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_millis(u64::try_from(LEASE_MS).unwrap()),
            "{alive} runners of the cut-off node still run one lease after the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("runners stopped {:?} after the cut", cut_at.elapsed());
    // The other node finishes everything, and no cell is written twice.
    eventually_pg(
        &cluster.state,
        "every gap healed",
        "SELECT COUNT(*) FROM gaps WHERE healing_status <> 'complete'",
        0,
    )
    .await;
    let cells: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT DISTINCT phase, date FROM run_cells) c")
            .fetch_one(&cluster.state)
            .await
            .unwrap();
    let writes: i64 = sqlx::query_scalar("SELECT SUM(written) FROM executions")
        .fetch_one(&warehouse)
        .await
        .unwrap();
    assert_eq!(writes, cells);
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM executions a JOIN executions b ON a.rowid < b.rowid \
         AND a.phase = b.phase AND a.start = b.start \
         AND a.started_ms < b.ended_ms AND b.started_ms < a.ended_ms",
    )
    .fetch_one(&warehouse)
    .await
    .unwrap();
    assert_eq!(overlapping, 0);
    proxy.up();
    assert_eq!(steady.stop(), 0);
    drop(cut);
    warehouse.close().await;
    cluster.finish().await;
}
