//! One bad day costs only the cells that need it (SPEC.md, Semantics 3): when a task fails
//! mid-run, a batch downstream that only partly needs it is split, and its other dates run.

use crate::util::{Project, code, stderr, stdout};

/// Phase 1 (ingest, 7-day batches) fails on any batch that holds 2024-03-03. Phase 2
/// (analytics, 10-day batches) needs phase 1; phase 3 (5-day batches) needs phase 2 on the
/// same date and the day before; phase 4 needs phase 2 and its own previous day.
fn pipeline(project: &Project) {
    project.script(
        "bin/run.sh",
        "#!/bin/sh\nset -e\necho \"$1 $2..$3\" >> runs.log\n\
         if [ \"$1\" = 1 ] && [ \"$2\" \\< 2024-03-04 ] && [ \"$3\" \\> 2024-03-02 ]; then echo 'bad day' >&2; exit 4; fi\n\
         d=$2\nwhile :; do mkdir -p \"out/$1\"; echo x > \"out/$1/$d\"; [ \"$d\" = \"$3\" ] && break; d=$(date -d \"$d + 1 day\" +%F); done\n",
    );
    project.count_script();
    let phase = |id: u32, batch: u32, needs: &str| {
        format!(
            "[[phase]]\nid = {id}\nname = \"p{id}\"\n{needs}\nbatch_days = {batch}\n\
             run.command = [\"bin/run.sh\", \"{id}\", \"{{start}}\", \"{{end}}\"]\n\
             check.command = [\"bin/count.sh\", \"out/{id}\"]\nretries = 0\n"
        )
    };
    project.write(
        "gapless.toml",
        &format!(
            "[pipeline]\nname = \"blast\"\nstart = \"2024-03-01\"\n\n{}\n{}\n{}\n{}",
            phase(1, 7, ""),
            phase(2, 10, "needs = [1]"),
            phase(3, 5, "needs = [{ phase = 2, lookback_days = 1 }]"),
            phase(4, 20, "needs = [2, { phase = 4, lookback_days = 1 }]"),
        ),
    );
}

#[test]
fn a_failed_batch_blocks_only_the_cells_that_need_it() {
    let project = Project::new();
    pipeline(&project);
    let output = project
        .command(&[
            "backfill",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-20",
            "--yes",
            "--jobs",
            "1",
        ])
        .env("GAPLESS_TODAY", "2024-03-20")
        .output()
        .unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    let mut ran: Vec<&str> = log.lines().collect();
    ran.sort_unstable();
    assert_eq!(
        ran,
        [
            "1 2024-03-01..2024-03-07",
            "1 2024-03-08..2024-03-14",
            "1 2024-03-15..2024-03-20",
            // The first analytics batch lost 03-01..07 only.
            "2 2024-03-08..2024-03-10",
            "2 2024-03-11..2024-03-20",
            // 03-08 needs phase 2 on 03-07 (its lookback): blocked; 03-09..10 run.
            "3 2024-03-09..2024-03-10",
            "3 2024-03-11..2024-03-15",
            "3 2024-03-16..2024-03-20",
            // Phase 4 needs its own previous day: from 03-01 on, every date needs 03-01.
        ],
        "{}",
        stderr(&output)
    );
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
    let run_id = runs[0]["run"]["id"].as_str().unwrap().to_owned();
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "show", &run_id, "--json"]))).unwrap();
    let progress = show["progress"].as_array().unwrap();
    let complete: Vec<i64> = progress
        .iter()
        .map(|p| p["complete"].as_i64().unwrap())
        .collect();
    let blocked: Vec<i64> = progress
        .iter()
        .map(|p| p["blocked"].as_i64().unwrap())
        .collect();
    assert_eq!(complete, [13, 13, 12, 0], "{show}");
    assert_eq!(blocked, [0, 7, 8, 20], "{show}");
}
