//! `gapless demo`: the NBA example end to end. Builds the original pipeline in its broken state
//! (three playoffs stuck after phase 2, 2024-25 grading holding a single record), then shows the
//! gaps and the original validation queries, heals as `serve` does every hour (the recent
//! 2024-25 grading by policy, the old playoffs alerted), prints the alert a person receives,
//! heals the rest as that person would (`heal --include-old`), and runs the queries again.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gapless_core::dates::{Date, DateRange, add_days, parse_date};
use gapless_core::plan::Request;
use gapless_core::render::{StatusReport, counted, thousands};
use gapless_core::spec::PhaseId;
use gapless_runtime::context::Context;
use gapless_store::Store;

use crate::cli::{DemoArgs, DemoWarehouse, Global};
use crate::commands::backfill::run_plan;
use crate::commands::{matrix, out};
use crate::exit::{Exit, UsageError};
use crate::settings::{self, Loaded};
use gapless_runtime::lifecycle::plan as make_plan;

/// The demo's "today": after the 2024-25 finals.
const DEMO_TODAY: &str = "2025-07-01";
/// Seed of the generated league: the same bytes every run.
const SEED: u64 = 2021;
/// Bounds each statement of the BigQuery setup and each phase-2 load.
const BIGQUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn heading(text: &str) -> anyhow::Result<()> {
    out(format_args!(
        "\n━━ {text} {}\n",
        "━".repeat(72usize.saturating_sub(text.len() + 4))
    ))
}

pub(crate) async fn run(global: &Global, args: &DemoArgs) -> anyhow::Result<Exit> {
    let bigquery = args.warehouse == DemoWarehouse::Bigquery;
    if bigquery
        && std::env::var("BIGQUERY_EMULATOR_HOST")
            .unwrap_or_default()
            .is_empty()
    {
        return Err(UsageError::new(
            "--warehouse bigquery: set BIGQUERY_EMULATOR_HOST to a BigQuery emulator's host:port \
             (the demo replaces the tables of its nba_* datasets)",
        )
        .into());
    }
    let dir = prepare_dir(args.dir.as_deref())?;
    out(format_args!(
        "building the NBA example in {}\n",
        dir.display()
    ))?;
    let started = std::time::Instant::now();
    let league = gapless_nba::league(SEED);
    let files =
        gapless_nba::write_raw_files(&dir, &league, None).context("writing phase-1 files")?;
    let program = std::env::current_exe().context("locating the gapless binary")?;
    if bigquery {
        setup_bigquery(&dir, &league)
            .await
            .context("creating the BigQuery datasets")?;
        gapless_nba::write_bigquery_example(&dir, &program.to_string_lossy())
            .context("writing the pipeline file")?;
    } else {
        gapless_nba::setup(&dir, &league)
            .await
            .context("creating the warehouse")?;
        gapless_nba::write_example(&dir, &program.to_string_lossy())
            .context("writing the pipeline file")?;
    }
    out(format_args!(
        "  {files} box-score files for 4 seasons, warehouse and gapless.toml written ({:.1}s)\n",
        started.elapsed().as_secs_f64()
    ))?;

    let mut loaded = settings::load_path(&dir.join("gapless.toml"))?;
    loaded.today = parse_date(DEMO_TODAY).map_err(|e| UsageError::new(e.to_string()))?;
    loaded.now = settings::today_at(loaded.today);
    let store = loaded.store().await?;
    let context = loaded.context().await?;

    // The live pipeline, as it ran: everything but the playoffs of 2021-22 to 2023-24 past
    // phase 2, and no grading for 2024-25.
    out(format_args!(
        "  replaying the live pipeline up to {DEMO_TODAY}, with the original gaps…\n"
    ))?;
    let setup = std::time::Instant::now();
    // The BigQuery emulator runs one transaction at a time, across sessions: one task at once.
    let jobs = if bigquery { 1 } else { args.jobs };
    replay_live(&loaded, &context, &store, if bigquery { 1 } else { 2 }).await?;
    out(format_args!(
        "  done ({:.1}s)\n",
        setup.elapsed().as_secs_f64()
    ))?;

    let full = DateRange::new(loaded.spec.start, loaded.today).context("demo range")?;
    let all_phases: Vec<PhaseId> = loaded.spec.phases.iter().map(|p| p.id).collect();

    heading("gapless status: the gaps, plainly visible")?;
    let before = matrix(&context, full).await?;
    out(format_args!(
        "{}",
        StatusReport::build(&loaded.spec, &before, full, &all_phases, loaded.today).to_text()
    ))?;

    heading("validation queries before (the original plan's checks)")?;
    let before_checks = validations(&dir, &context, bigquery)
        .await
        .context("validation queries")?;
    print_checks(&before_checks)?;

    if args.no_backfill {
        out(format_args!(
            "\nstopped before the backfill (--no-backfill). Explore it:\n  {0} --pipeline {1}/gapless.toml plan --start-date 2021-10-19 --end-date 2025-06-22 --phases 3-6\n  {0} --pipeline {1}/gapless.toml backfill --start-date 2021-10-19 --end-date 2025-06-22 --phases 3-6\n",
            invocation(),
            dir.display()
        ))?;
        return Ok(Exit::Success);
    }

    let visible = Global {
        pipeline: None,
        json: false,
        verbose: global.verbose,
        quiet: global.quiet,
    };
    let days = gapless_core::dates::days_between(loaded.spec.start, loaded.today) + 1;

    heading("gapless heal: what `serve` does every hour, by policy")?;
    // The policy leaves the old gaps for a person: only the heal with --include-old must end
    // with nothing left.
    let (_, alert) = heal_once(&loaded, &context, &store, days, false, jobs, &visible).await?;

    heading("the alert a person receives (Slack, e-mail, webhook)")?;
    out(format_args!(
        "{}",
        alert.unwrap_or_else(|| "(no alert: nothing was left for a person)\n".to_owned())
    ))?;

    heading("gapless heal --include-old: the person heals the rest")?;
    let (healed_old, _) = heal_once(&loaded, &context, &store, days, true, jobs, &visible).await?;
    let exit = if healed_old {
        Exit::Success
    } else {
        Exit::Incomplete
    };

    heading("gapless status after")?;
    let after = matrix(&context, full).await?;
    let report = StatusReport::build(&loaded.spec, &after, full, &all_phases, loaded.today);
    out(format_args!("{}", report.to_text()))?;

    heading("validation queries after")?;
    let after_checks = validations(&dir, &context, bigquery)
        .await
        .context("validation queries")?;
    let all_match = print_checks(&after_checks)?;
    out(format_args!(
        "\n{} in {:.1}s · the example stays in {} (try `{} --pipeline {}/gapless.toml report`)\n",
        if all_match && exit == Exit::Success && !report.has_gaps() {
            "every validation query matches its expectation"
        } else {
            "SOME VALIDATION QUERIES DO NOT MATCH"
        },
        started.elapsed().as_secs_f64(),
        dir.display(),
        invocation(),
        dir.display()
    ))?;
    Ok(
        if all_match && exit == Exit::Success && !report.has_gaps() {
            Exit::Success
        } else {
            Exit::Incomplete
        },
    )
}

/// One scan and heal as `gapless heal` does it (`include_old` as `--include-old`), then a line
/// saying what it found and did. Whether every gap was healed and none was left, and the alert
/// text for what was left.
async fn heal_once(
    loaded: &Loaded,
    context: &Context,
    store: &Store,
    days: i64,
    include_old: bool,
    jobs: usize,
    visible: &Global,
) -> anyhow::Result<(bool, Option<String>)> {
    let scan = gapless_runtime::lifecycle::scan(context, store, days).await?;
    let args = crate::cli::ScanArgs {
        lookback: None,
        heal: true,
        include_old,
        jobs: jobs.max(1),
        dry_run: false,
    };
    let healed = crate::commands::scan::heal(loaded, context, store, &scan, &args, visible).await?;
    out(format_args!(
        "scanned {}: {}; {} to heal, {} left for a person\n",
        scan.range
            .map_or_else(String::new, |range| range.to_string()),
        counted(scan.gaps.len(), "gap"),
        thousands(healed.gaps),
        thousands(healed.left)
    ))?;
    Ok((healed.exit == Exit::Success, healed.alert))
}

fn prepare_dir(requested: Option<&Path>) -> anyhow::Result<PathBuf> {
    match requested {
        Some(dir) => {
            if dir.exists() && fs_err::read_dir(dir)?.next().is_some() {
                return Err(UsageError::new(format!(
                    "{} is not empty: the demo builds into a new or empty directory",
                    dir.display()
                ))
                .into());
            }
            fs_err::create_dir_all(dir)?;
            Ok(fs_err::canonicalize(dir)?)
        }
        None => {
            let dir = tempfile::Builder::new().prefix("gapless-demo-").tempdir()?;
            Ok(dir.keep())
        }
    }
}

/// Creates the example's datasets and tables in the BigQuery emulator (replacing the tables of
/// an earlier demo) and fills `nba_reference`.
async fn setup_bigquery(dir: &Path, league: &gapless_nba::League) -> anyhow::Result<()> {
    let warehouse =
        gapless_connect::Warehouse::connect(gapless_nba::BIGQUERY_URL, &[], dir, BIGQUERY_TIMEOUT)
            .await?;
    let any = parse_date(DEMO_TODAY)?;
    let params = gapless_connect::ScriptParams {
        start: any,
        end: any,
        date: None,
    };
    warehouse
        .execute_script(gapless_nba::BIGQUERY_WAREHOUSE_SQL, &params)
        .await?;
    // The first table's insert goes with emptying every reference table, in one transaction;
    // the others follow, each in its own.
    let mut reset = Some(gapless_nba::BIGQUERY_REFERENCE_RESET);
    for table in gapless_nba::bigquery_reference_rows(league) {
        warehouse
            .execute_script_and_insert(
                reset.take().unwrap_or(""),
                &params,
                BIGQUERY_TIMEOUT,
                table.table,
                &rows(&table),
            )
            .await?;
    }
    warehouse.close().await;
    Ok(())
}

/// The example's rows as the warehouse binds them.
fn rows(table: &gapless_nba::TableRows) -> gapless_connect::Rows {
    gapless_connect::Rows {
        fields: table
            .fields
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), (*kind).to_owned()))
            .collect(),
        values: table.values.clone(),
    }
}

/// Phase 2 on BigQuery (`gapless nba-load --warehouse-url`): the phase-1 files of
/// `[start, end]` under `dir` replace the range of `nba_raw.bdl_player_boxscores`, in one
/// transaction.
pub(crate) async fn load_into(
    url: &str,
    dir: &Path,
    start: Date,
    end: Date,
) -> anyhow::Result<gapless_nba::LoadReport> {
    if !url.starts_with("bigquery://") {
        return Err(UsageError::new(format!(
            "--warehouse-url: `{url}` is not a bigquery:// URL (without it, the SQLite files under --dir are loaded)"
        ))
        .into());
    }
    let root = dir.to_owned();
    let (report, table) =
        tokio::task::spawn_blocking(move || gapless_nba::bigquery_load_rows(&root, start, end))
            .await
            .context("reading box-score files")?
            .context("reading box-score files")?;
    let warehouse = gapless_connect::Warehouse::connect(url, &[], dir, BIGQUERY_TIMEOUT).await?;
    warehouse
        .execute_script_and_insert(
            gapless_nba::BIGQUERY_LOAD_DELETE,
            &gapless_connect::ScriptParams {
                start,
                end,
                date: None,
            },
            BIGQUERY_TIMEOUT,
            table.table,
            &rows(&table),
        )
        .await
        .context("loading box scores into BigQuery")?;
    warehouse.close().await;
    Ok(report)
}

/// The original plan's validation queries, on SQLite through the example's own connection, on
/// BigQuery through the pipeline's warehouse.
async fn validations(
    dir: &Path,
    context: &Context,
    bigquery: bool,
) -> anyhow::Result<Vec<gapless_nba::ValidationResult>> {
    if !bigquery {
        return Ok(gapless_nba::run_validations(dir).await?);
    }
    let warehouse = context
        .warehouse
        .as_ref()
        .context("the example has a warehouse")?;
    let mut results = Vec::new();
    for validation in gapless_nba::validation_queries() {
        let actual = warehouse.scalar(&validation.actual_sql).await?;
        let expected = warehouse.scalar(&validation.expected_sql).await?;
        results.push(gapless_nba::ValidationResult {
            validation,
            actual,
            expected,
        });
    }
    Ok(results)
}

fn print_checks(checks: &[gapless_nba::ValidationResult]) -> anyhow::Result<bool> {
    let mut all = true;
    let width = checks
        .iter()
        .map(|c| c.validation.label.chars().count())
        .max()
        .unwrap_or(0);
    for check in checks {
        let (validation, actual, expected) = (&check.validation, check.actual, check.expected);
        let ok = check.is_passing();
        all &= ok;
        out(format_args!(
            "  {}  {:<width$}  {:>7} of {}\n",
            if ok { "ok  " } else { "MISS" },
            validation.label,
            actual,
            expected
        ))?;
    }
    Ok(all)
}

/// Dates of one season's games of one type, from the schedule.
async fn season_dates(context: &Context, season: i32, kind: &str) -> anyhow::Result<Vec<Date>> {
    let warehouse = context
        .warehouse
        .as_ref()
        .context("the example has a warehouse")?;
    let sql = format!(
        "SELECT DISTINCT game_date FROM nba_reference.schedule WHERE season_year = {season} AND season_type = '{kind}'"
    );
    let all = DateRange::new(parse_date("2021-01-01")?, parse_date("2026-12-31")?)?;
    Ok(warehouse
        .dates(&sql, all.start(), all.end())
        .await?
        .into_iter()
        .collect())
}

async fn quiet_backfill(
    loaded: &Loaded,
    context: &Context,
    store: &Store,
    range: DateRange,
    phases: &[u32],
    jobs: usize,
) -> anyhow::Result<()> {
    let request = Request {
        range,
        phases: phases.iter().copied().map(PhaseId).collect(),
        force: false,
    };
    let plan = make_plan(context, &request).await?;
    let quiet = Global {
        pipeline: None,
        json: false,
        verbose: 0,
        quiet: true,
    };
    let (run_id, exit) = run_plan(
        loaded,
        context.clone(),
        store.clone(),
        &request,
        &plan,
        jobs,
        &quiet,
    )
    .await?;
    anyhow::ensure!(
        exit == Exit::Success,
        "replaying the live pipeline failed in run {run_id} ({range}, phases {phases:?})"
    );
    Ok(())
}

async fn replay_live(
    loaded: &Loaded,
    context: &Context,
    store: &Store,
    jobs: usize,
) -> anyhow::Result<()> {
    let full = DateRange::new(loaded.spec.start, loaded.today)?;
    quiet_backfill(loaded, context, store, full, &[2], jobs).await?;
    for season in 2021..=2024 {
        let playoffs = season_dates(context, season, "playoffs").await?;
        let regular = season_dates(context, season, "regular").await?;
        let (Some(first), Some(playoffs_start), Some(last)) =
            (regular.first(), playoffs.first(), playoffs.last())
        else {
            anyhow::bail!("season {season} has no schedule");
        };
        if season < 2024 {
            // Live runs processed the regular season and play-in; the playoffs were loaded into
            // phase 2 by a backfill script that published nothing.
            let until = add_days(*playoffs_start, -1);
            quiet_backfill(
                loaded,
                context,
                store,
                DateRange::new(*first, until)?,
                &[3, 4, 5, 6],
                jobs,
            )
            .await?;
        } else {
            quiet_backfill(
                loaded,
                context,
                store,
                DateRange::new(*first, *last)?,
                &[3, 4, 5],
                jobs,
            )
            .await?;
            // 2024-25 grading: one test record.
            quiet_backfill(
                loaded,
                context,
                store,
                DateRange::single(*first),
                &[6],
                jobs,
            )
            .await?;
            let warehouse = context.warehouse.as_ref().context("warehouse")?;
            // A date's graded rows are one per player: keep the first player's.
            let sql = "DELETE FROM nba_predictions.prediction_accuracy WHERE game_date = :start \
                 AND player_id <> (SELECT MIN(player_id) FROM nba_predictions.prediction_accuracy \
                 WHERE game_date = :start)";
            warehouse
                .execute_script(
                    sql,
                    &gapless_connect::ScriptParams {
                        start: *first,
                        end: *first,
                        date: None,
                    },
                )
                .await
                .context("leaving a single 2024-25 grading record")?;
        }
    }
    Ok(())
}

/// How the person who ran the demo runs gapless: through `cargo run`, or as `gapless` on their
/// PATH (`cargo install --path crates/cli`).
fn invocation() -> &'static str {
    if crate::settings::run_by_cargo() {
        "cargo run --release -p gapless-cli --"
    } else {
        "gapless"
    }
}
