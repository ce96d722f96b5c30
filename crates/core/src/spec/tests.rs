//! Diagnostics for broken pipeline files, as snapshots of what the user sees.

use super::*;
use crate::diagnostic::render_all;

struct Files;

impl FileSource for Files {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        match relative_path {
            "sql/phase3.sql" => Ok("DELETE FROM t WHERE d BETWEEN :start AND :end".to_owned()),
            "sql/by_date.sql" => Ok(
                "-- one day at a time (:date in a comment is fine)\nSELECT d, COUNT(*)\nFROM t\nWHERE d = :date\nGROUP BY d\n"
                    .to_owned(),
            ),
            other => Err(format!("{other}: No such file or directory (os error 2)")),
        }
    }
}

const HEADER: &str = r#"[pipeline]
name = "demo"
start = "2024-01-01"

[warehouse]
url = "sqlite://warehouse.db"
"#;

fn errors(body: &str) -> String {
    let source = format!("{HEADER}{body}");
    match parse(&source, &Files) {
        Ok(_) => panic!("expected errors for:\n{source}"),
        Err(diagnostics) => render_all(&diagnostics, "gapless.toml", &source),
    }
}

fn ok(body: &str) -> Spec {
    let source = format!("{HEADER}{body}");
    match parse(&source, &Files) {
        Ok(spec) => spec,
        Err(diagnostics) => panic!("{}", render_all(&diagnostics, "gapless.toml", &source)),
    }
}

const RAW: &str = r#"
[[phase]]
id = 2
name = "raw"
check.sql = "SELECT d, COUNT(*) FROM raw WHERE d BETWEEN :start AND :end GROUP BY d"
"#;

#[test]
fn a_valid_file_parses_in_dependency_order() {
    let spec = ok(&format!(
        r#"{RAW}
[[phase]]
id = 4
name = "precompute"
needs = [{{ phase = "analytics", lookback_days = 30 }}, {{ phase = 4, lookback_days = 1 }}]
run.sql = "INSERT INTO p SELECT 1"
check.sql = "SELECT 1, 1"
batch_days = 7
timeout = "15m"

[[phase]]
id = 3
name = "analytics"
needs = [2]
run.command = ["bin/analytics", "--start", "{{start}}", "--end", "{{end}}"]
check.sql_file = "sql/phase3.sql"
expect.min = 9
rollback.sql = "DELETE FROM a WHERE d BETWEEN :start AND :end"
retries = 2
concurrency = 2
"#
    ));
    let order: Vec<u32> = spec.phases.iter().map(|p| p.id.0).collect();
    assert_eq!(order, vec![2, 3, 4]);
    let precompute = spec.phase(PhaseId(4)).unwrap();
    assert_eq!(precompute.batch_days, 7);
    assert_eq!(precompute.timeout, Duration::from_secs(900));
    assert_eq!(
        precompute.needs,
        vec![
            Need {
                phase: PhaseId(3),
                lookback_days: 30
            },
            Need {
                phase: PhaseId(4),
                lookback_days: 1
            }
        ]
    );
    let analytics = spec.phase(PhaseId(3)).unwrap();
    assert_eq!(analytics.expect.min, 9);
    assert_eq!(analytics.retries, 2);
    assert!(matches!(&analytics.check, Source::Sql(sql) if sql.starts_with("DELETE")));
    assert_eq!(spec.max_total_lookback(), 30);
    assert_eq!(spec.state_url, DEFAULT_STATE_URL);
    assert_eq!(spec.state_sync, StateSync::Normal);
}

#[test]
fn state_sync_full_is_read() {
    let spec = ok(&format!("\n[state]\nsync = \"full\"\n{RAW}"));
    assert_eq!(spec.state_sync, StateSync::Full);
}

#[test]
fn unknown_state_sync() {
    insta::assert_snapshot!(errors(&format!("\n[state]\nsync = \"always\"\n{RAW}")));
}

#[test]
fn every_unknown_key_and_every_other_error_at_once() {
    let message = errors(&format!(
        "{RAW}batch_day = 3\n\n[[phase]]\nid = 3\nname = \"analytics\"\nneeds = [\"rwa\"]\n\
         retires = 2\ncheck.sql = \"SELECT 1, 1\"\n"
    ));
    for expected in [
        "unknown field `batch_day`",
        "unknown field `retires`",
        "did you mean `retries`?",
        "`rwa`",
    ] {
        assert!(
            message.contains(expected),
            "{expected} missing from:\n{message}"
        );
    }
}

#[test]
fn every_value_of_the_wrong_type_at_once() {
    let message = errors(&format!(
        "{RAW}retries = \"3\"\n\n[[phase]]\nid = \"three\"\nname = \"analytics\"\nneeds = [1]\n\
         timeout = 90\nbogus = 1\ncheck.sql = \"SELECT 1, 1\"\n"
    ));
    for expected in [
        "invalid type: string \"3\", expected",
        "invalid type: integer `90`",
        "unknown field `bogus`",
    ] {
        assert!(
            message.contains(expected),
            "{expected} missing from:\n{message}"
        );
    }
    // `id` was blanked to read on: its absence is not a fourth error, but its wrong type is one.
    assert!(!message.contains("missing field `id`"), "{message}");
    assert!(
        message.contains("invalid type: string \"three\""),
        "{message}"
    );
}

#[test]
fn unknown_key() {
    insta::assert_snapshot!(errors(&format!("{RAW}batch_day = 3\n")));
}

#[test]
fn unknown_phase_name_suggests() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}\n[[phase]]\nid = 3\nname = \"analytics\"\nneeds = [\"rwa\"]\ncheck.sql = \"SELECT 1, 1\"\n"
    )));
}

#[test]
fn unknown_phase_id() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}\n[[phase]]\nid = 3\nname = \"analytics\"\nneeds = [7]\ncheck.sql = \"SELECT 1, 1\"\n"
    )));
}

#[test]
fn self_dependency_without_lookback_is_a_cycle() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}\n[[phase]]\nid = 3\nname = \"analytics\"\nneeds = [3]\ncheck.sql = \"SELECT 1, 1\"\n"
    )));
}

#[test]
fn cycle_between_phases() {
    insta::assert_snapshot!(errors(
        "\n[[phase]]\nid = 3\nname = \"analytics\"\nneeds = [4]\ncheck.sql = \"SELECT 1, 1\"\n\n[[phase]]\nid = 4\nname = \"precompute\"\nneeds = [{ phase = 3, lookback_days = 30 }]\ncheck.sql = \"SELECT 1, 1\"\n"
    ));
}

#[test]
fn duplicate_id_and_name() {
    insta::assert_snapshot!(errors(&format!("{RAW}{RAW}")));
}

#[test]
fn bad_start_date() {
    let source = HEADER.replace("2024-01-01", "2021-02-30") + RAW;
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "gapless.toml", &source));
}

#[test]
fn unknown_placeholder() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}run.command = [\"bin/load\", \"--start\", \"{{stat}}\"]\n"
    )));
}

#[test]
fn date_placeholder_in_a_batch() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}batch_days = 31\nrun.command = [\"bin/load\", \"{{date}}\"]\n"
    )));
}

#[test]
fn date_param_in_a_batched_run_sql() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}batch_days = 7\nrun.sql = \"\"\"\nDELETE FROM t WHERE d BETWEEN :start AND :end;\nINSERT INTO t SELECT :date, COUNT(*) FROM raw WHERE d = :date\"\"\"\nrollback.sql = 'DELETE FROM t WHERE d = :date'\n"
    )));
}

#[test]
fn date_param_in_a_one_day_run_sql_is_fine() {
    let spec = ok(&format!(
        "{RAW}run.sql = \"INSERT INTO t SELECT :date, 1\"\nrollback.sql = \"DELETE FROM t WHERE d = :date\"\n"
    ));
    assert!(matches!(&spec.phases[0].run, Some(Runner::Sql(sql)) if sql.contains(":date")));
}

#[test]
fn date_param_in_check_expect_and_calendar_sql() {
    let source = "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\ncalendar.sql = \"SELECT d FROM games WHERE d = :date\"\n\n[warehouse]\nurl = \"sqlite://warehouse.db\"\n\n[[phase]]\nid = 2\nname = \"raw\"\ncheck.sql = \"SELECT d, COUNT(*) FROM raw WHERE d = :date GROUP BY d\"\nexpect.sql = \"SELECT :start, \\u0031 WHERE :date IS NOT NULL\"\n".to_owned();
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "gapless.toml", &source));
}

#[test]
fn date_param_in_sql_files() {
    let source = format!(
        "{HEADER}\n[[phase]]\nid = 2\nname = \"raw\"\ncheck.sql_file = \"sql/by_date.sql\"\n\n[[phase]]\nid = 3\nname = \"daily\"\nbatch_days = 2\nrun.sql_file = \"sql/by_date.sql\"\ncheck.sql = \"SELECT 1, 1\"\n"
    );
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "pipelines/gapless.toml", &source));
}

#[test]
fn unreadable_sql_file() {
    insta::assert_snapshot!(errors(
        "\n[[phase]]\nid = 2\nname = \"raw\"\ncheck.sql_file = \"sql/missing.sql\"\n"
    ));
}

#[test]
fn missing_check() {
    insta::assert_snapshot!(errors(
        "\n[[phase]]\nid = 2\nname = \"raw\"\nrun.command = [\"bin/load\"]\n"
    ));
}

#[test]
fn two_runners() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}run.command = [\"bin/load\"]\nrun.sql = \"SELECT 1\"\n"
    )));
}

#[test]
fn files_pattern_without_date() {
    insta::assert_snapshot!(errors(
        "\n[[phase]]\nid = 1\nname = \"scrape\"\ncheck.files = \"landing/*.json\"\n"
    ));
}

#[test]
fn sql_without_warehouse() {
    let source = format!("[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\n{RAW}");
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "gapless.toml", &source));
}

#[test]
fn bad_durations_and_bounds() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}timeout = \"15 minutes\"\nbatch_days = 0\nconcurrency = -1\nretries = 1000\n"
    )));
}

#[test]
fn durations_above_their_bounds() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}timeout = \"7d1s\"\nneeds = [{{ phase = 2, lookback_days = 3661 }}]\n\n[healing]\nlookback = \"3661d\"\nauto_heal_max_age = \"99999999d\"\nrealert_after = \"366d\"\n"
    )));
}

#[test]
fn durations_at_their_bounds() {
    let spec = ok(&format!(
        "{RAW}timeout = \"7d\"\nneeds = [{{ phase = 2, lookback_days = 3660 }}]\n\n[healing]\nlookback = \"3660d\"\nauto_heal_max_age = \"3660d\"\nrealert_after = \"365d\"\n"
    ));
    assert_eq!(spec.phases[0].timeout, MAX_TIMEOUT);
    assert_eq!(spec.healing.lookback, MAX_HEALING_WINDOW);
    assert_eq!(spec.healing.realert_after, MAX_REALERT_AFTER);
}

#[test]
fn attach_on_postgres() {
    let source = format!(
        "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\n\n[warehouse]\nurl = \"postgres://etl:secret@db/warehouse\"\nattach = {{ raw = \"raw.db\" }}\n{RAW}"
    );
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "gapless.toml", &source));
}

#[test]
fn toml_syntax_error() {
    insta::assert_snapshot!(errors("\n[[phase]]\nid = 2\nname = \"raw\n"));
}

#[test]
fn placeholder_in_http_host() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}run.http = {{ url = \"https://{{phase}}.example.org/start\", body = '{{\"start_date\":\"{{start}}\"}}' }}\n"
    )));
}

#[test]
fn not_allowed_source_kind() {
    insta::assert_snapshot!(errors(&format!("{RAW}expect.files = \"x/{{date}}\"\n")));
}

#[test]
fn every_error_at_once() {
    insta::assert_snapshot!(errors(
        "\n[[phase]]\nid = 2\nname = \"Raw Data\"\ncheck.sql = \"SELECT 1, 1\"\ntimeout = \"soon\"\n\n[[phase]]\nid = 3\nname = \"analytics\"\nneeds = [\"raw\", 9]\nrun.command = []\n"
    ));
}

#[test]
fn unknown_sql_parameter() {
    insta::assert_snapshot!(errors(
        "\n[[phase]]\nid = 2\nname = \"raw\"\ncheck.sql = \"SELECT d, COUNT(*) FROM t WHERE d BETWEEN :start AND :ned GROUP BY d\"\n"
    ));
}

#[test]
fn no_phases() {
    let source = HEADER.to_owned();
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "gapless.toml", &source));
}

#[test]
fn redacts_passwords() {
    assert_eq!(
        redact_url("postgres://etl:secret@db:5432/w"),
        "postgres://etl:****@db:5432/w"
    );
    assert_eq!(redact_url("postgres://db/w"), "postgres://db/w");
}

#[test]
fn state_outage_is_read_and_bounded() {
    assert_eq!(ok(RAW).state_outage, super::DEFAULT_STATE_OUTAGE);
    let spec = ok(&format!("\n[state]\noutage = \"10m\"\n{RAW}"));
    assert_eq!(spec.state_outage, std::time::Duration::from_secs(600));
    let message = errors(&format!("\n[state]\noutage = \"2d\"\n{RAW}"));
    assert!(
        message.contains("`state.outage` is 2d; it must be at most 1d"),
        "{message}"
    );
}

#[test]
fn due_defaults_to_a_day_and_a_phase_may_set_its_own() {
    let spec = ok(RAW);
    assert_eq!(spec.due, DEFAULT_DUE);
    assert_eq!(spec.phases[0].due, DEFAULT_DUE);
    // `[pipeline] due` is every phase's default; a phase's own `due` beats it; zero and the
    // bound are allowed.
    let source = format!(
        "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\ndue = \"30h\"\n\n[warehouse]\nurl = \"sqlite://warehouse.db\"\n{RAW}\n[[phase]]\nid = 3\nname = \"late\"\nneeds = [2]\ncheck.sql = \"SELECT 1\"\ndue = \"2d6h\"\n\n[[phase]]\nid = 4\nname = \"early\"\ncheck.sql = \"SELECT 1\"\ndue = \"0h\"\n\n[[phase]]\nid = 5\nname = \"slow\"\ncheck.sql = \"SELECT 1\"\ndue = \"366d\"\n"
    );
    let spec = parse(&source, &Files).unwrap();
    let mut dues: Vec<_> = spec
        .phases
        .iter()
        .map(|p| (p.id.0, p.due.as_secs()))
        .collect();
    dues.sort_unstable();
    assert_eq!(
        dues,
        [
            (2, 30 * 3_600),
            (3, 54 * 3_600),
            (4, 0),
            (5, MAX_DUE.as_secs())
        ]
    );
    let date = crate::dates::parse_date("2024-03-01").unwrap();
    let due_at = |id: u32| spec.phase(PhaseId(id)).unwrap().due_at(date).to_string();
    assert_eq!(due_at(3), "2024-03-03 06:00:00");
    assert_eq!(due_at(4), "2024-03-01 00:00:00");
}

#[test]
fn bad_due() {
    let source = format!(
        "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\ndue = \"tomorrow\"\n\n[warehouse]\nurl = \"sqlite://warehouse.db\"\n{RAW}due = \"367d\"\n"
    );
    let diagnostics = parse(&source, &Files).unwrap_err();
    insta::assert_snapshot!(render_all(&diagnostics, "gapless.toml", &source));
}

#[test]
fn report_period_defaults_to_month_and_takes_a_season() {
    assert_eq!(ok(RAW).report.period, ReportPeriod::Month);
    let year = ok(&format!("{RAW}\n[report]\nperiod = \"year\"\n"));
    assert_eq!(year.report.period, ReportPeriod::Year);
    let season = ok(&format!(
        "{RAW}\n[report]\nperiod = \"season\"\nseason_start = \"07-01\"\n"
    ));
    assert_eq!(
        season.report.period,
        ReportPeriod::Season { month: 7, day: 1 }
    );
}

#[test]
fn bad_report_period() {
    insta::assert_snapshot!(errors(&format!("{RAW}\n[report]\nperiod = \"week\"\n")));
}

#[test]
fn bad_report_season_start() {
    insta::assert_snapshot!(errors(&format!(
        "{RAW}\n[report]\nperiod = \"season\"\nseason_start = \"02-29\"\n"
    )));
}

#[test]
fn report_season_without_a_start_and_a_start_without_a_season() {
    insta::assert_snapshot!(errors(&format!("{RAW}\n[report]\nperiod = \"season\"\n")));
    insta::assert_snapshot!(errors(&format!(
        "{RAW}\n[report]\nperiod = \"month\"\nseason_start = \"07-01\"\n"
    )));
    insta::assert_snapshot!(errors(&format!("{RAW}\n[report]\nperiods = \"season\"\n")));
}

#[test]
fn healing_timezone_is_an_iana_name() {
    let spec = ok(&format!(
        "{RAW}\n[healing]\ntimezone = \"Europe/Paris\"\nscan = \"0 6 * * *\"\n"
    ));
    assert_eq!(spec.healing.timezone, chrono_tz::Europe::Paris);
    assert_eq!(ok(RAW).healing.timezone, chrono_tz::UTC);
    let message = errors(&format!("{RAW}\n[healing]\ntimezone = \"Mars/Olympus\"\n"));
    assert!(
        message.contains("`Mars/Olympus` is not a time zone"),
        "{message}"
    );
    let message = errors(&format!("{RAW}\n[healing]\nscan = \"every hour\"\n"));
    assert!(message.contains("is not a cron expression"), "{message}");
}

#[test]
fn bigquery_warehouse_and_its_byte_limit() {
    let source = String::from(
        "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\n\n[warehouse]\nurl = \"bigquery://my-project?location=US\"\nmaximum_bytes_billed = 1000000000\n\n[[phase]]\nid = 2\nname = \"raw\"\ncheck.sql = \"SELECT d, COUNT(*) FROM `raw.t` WHERE d BETWEEN :start AND :end GROUP BY d\"\n",
    );
    let spec = parse(&source, &Files).unwrap();
    let warehouse = spec.warehouse.unwrap();
    assert_eq!(warehouse.url, "bigquery://my-project?location=US");
    assert_eq!(warehouse.maximum_bytes_billed, Some(1_000_000_000));
    // BigQuery's own `@name` parameters would never be bound: refused like `?` on SQLite.
    let foreign = String::from(
        "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\n\n[warehouse]\nurl = \"bigquery://p\"\n\n[[phase]]\nid = 2\nname = \"raw\"\ncheck.sql = \"SELECT d, COUNT(*) FROM t WHERE d = @day GROUP BY d\"\n",
    );
    let diagnostics = parse(&foreign, &Files).unwrap_err();
    let text = render_all(&diagnostics, "gapless.toml", &foreign);
    assert!(text.contains("`@day`"), "{text}");
    for (url, limit, wanted) in [
        ("sqlite://w.db", "10", "only applies to BigQuery"),
        ("bigquery://p", "0", "must be a positive number of bytes"),
    ] {
        let source = format!(
            "[pipeline]\nname = \"demo\"\nstart = \"2024-01-01\"\n\n[warehouse]\nurl = \"{url}\"\nmaximum_bytes_billed = {limit}\n{RAW}"
        );
        let diagnostics = parse(&source, &Files).unwrap_err();
        let text = render_all(&diagnostics, "gapless.toml", &source);
        assert!(text.contains(wanted), "{text}");
    }
}
