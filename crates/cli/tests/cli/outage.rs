//! A state store that stops answering mid-run (PostgreSQL restarted, a network blip) is waited
//! for with backoff while runners keep their leases, up to `GAPLESS_STATE_OUTAGE`, before the
//! run stops with exit 3. The outage is real: the state store is reached through a TCP proxy
//! that cuts every connection and refuses new ones.

use std::time::{Duration, Instant};

use gapless_testkit::Proxy;

use crate::util::{Project, code, stderr};

/// Six days of one phase whose runner logs itself, sleeps 0.3 s and writes its output file.
fn slow_phase(project: &Project) {
    project.script(
        "bin/work.sh",
        "#!/bin/sh\nset -e\necho \"$1\" >> runs.log\nsleep 0.3\nmkdir -p out\necho x > \"out/$1\"\n",
    );
    project.count_script();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "outage"
start = "2024-03-01"

[[phase]]
id = 1
name = "work"
run.command = ["bin/work.sh", "{date}"]
check.command = ["bin/count.sh"]
retries = 0
"#,
    );
}

fn backfill(project: &Project, state_url: &str) -> std::process::Command {
    let mut command = project.command(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-06",
        "--yes",
        "--jobs",
        "1",
    ]);
    command
        .env("GAPLESS_TODAY", "2024-03-06")
        .env("GAPLESS_STATE_URL", state_url);
    command
}

/// Waits until the runners' log has `lines` lines.
fn wait_for_runs(project: &Project, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap_or_default();
        if log.lines().count() >= lines {
            return;
        }
        assert!(Instant::now() < deadline, "runners never got that far");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_state_store_outage_mid_run_is_waited_out() {
    let Some(url) = gapless_testkit::pg_url() else {
        return;
    };
    let db = gapless_testkit::fresh_pg_database(&url).await.unwrap();
    let (proxy, proxied) = Proxy::in_front_of(db.url()).unwrap();
    let project = Project::new();
    slow_phase(&project);
    let child = backfill(&project, &proxied)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_runs(&project, 2);
    proxy.down();
    std::thread::sleep(Duration::from_secs(3));
    proxy.up();
    let output = child.wait_with_output().unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(
        crate::util::stdout(&output).contains("succeeded: 6 tasks complete in "),
        "{}",
        crate::util::stdout(&output)
    );
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    assert_eq!(log.lines().count(), 6, "a day ran twice:\n{log}");
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_state_store_gone_longer_than_the_limit_stops_the_run_with_3() {
    let Some(url) = gapless_testkit::pg_url() else {
        return;
    };
    let db = gapless_testkit::fresh_pg_database(&url).await.unwrap();
    let (proxy, proxied) = Proxy::in_front_of(db.url()).unwrap();
    let project = Project::new();
    slow_phase(&project);
    let child = backfill(&project, &proxied)
        .env("GAPLESS_STATE_OUTAGE", "2s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_runs(&project, 1);
    proxy.down();
    let output = child.wait_with_output().unwrap();
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("state store"),
        "{}",
        stderr(&output)
    );
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    assert!(
        log.lines().count() < 6,
        "the run went on without its state store"
    );
    proxy.up();
    db.drop_db().await.unwrap();
}
