//! `gapless check`: validate the pipeline file and reach everything it names.

use gapless_runtime::preflight;
use serde_json::json;

use crate::cli::Global;
use crate::commands::{out, print_json, with_bigquery_usage};
use crate::exit::Exit;
use crate::settings;

pub(crate) async fn run(global: &Global) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let context = loaded.context().await?;
    let mut report = preflight::check(&context).await;
    match loaded.store().await {
        Ok(_) => report.ok.push("state store answers".to_owned()),
        Err(error) => report.problems.push(preflight::Problem {
            subject: "state store".to_owned(),
            message: format!("{error:#}"),
        }),
    }
    // Probe a recent week, so every probe's query and program runs once for real; not when
    // something already failed, which the probes would only report again, nor when some SQL
    // waits for tables the pipeline creates, which a probe reading one would fail on.
    let end = loaded.today;
    let start = gapless_core::dates::add_days(end, -6).max(loaded.spec.start);
    let clean = report.problems.is_empty();
    if clean && report.deferred > 0 {
        report
            .ok
            .push("probes not run: some read tables the pipeline has not created yet".to_owned());
    } else if clean && let Ok(range) = gapless_core::dates::DateRange::new(start, end) {
        match gapless_runtime::observe::observe(&context, range).await {
            Ok(_) => report.ok.push(format!("every probe answered for {range}")),
            Err(error) => report.problems.push(preflight::Problem {
                subject: "probe".to_owned(),
                message: preflight::error_chain(&error),
            }),
        }
    }
    if global.json {
        print_json(&with_bigquery_usage(
            &json!({
                "pipeline": loaded.spec.name,
                "file": loaded.path,
                "phases": loaded.spec.phases.len(),
                "ok": report.ok,
                "problems": report.problems.iter().map(|p| json!({"subject": p.subject, "message": p.message})).collect::<Vec<_>>(),
            }),
            &context,
        )?)?;
    } else {
        out(format_args!(
            "{}: pipeline `{}` is valid ({} phase{})\n",
            loaded.path.display(),
            loaded.spec.name,
            loaded.spec.phases.len(),
            if loaded.spec.phases.len() == 1 {
                ""
            } else {
                "s"
            }
        ))?;
        for line in &report.ok {
            out(format_args!("  ok    {line}\n"))?;
        }
        for problem in &report.problems {
            out(format_args!(
                "  FAIL  {}: {}\n",
                problem.subject, problem.message
            ))?;
        }
    }
    Ok(if report.problems.is_empty() {
        Exit::Success
    } else {
        Exit::Infrastructure
    })
}
