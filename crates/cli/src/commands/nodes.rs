//! `gapless nodes`: the `serve` processes sharing the state store, which one leads (and under
//! which term), the runs each owns and the tasks each is running. `--json` prints the store's
//! report as it is (the dashboard reads the same).

use chrono::Utc;
use gapless_core::render::table;
use gapless_store::NodesReport;

use crate::cli::Global;
use crate::commands::{out, print_json};
use crate::exit::Exit;
use crate::settings;

pub(crate) async fn run(global: &Global) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let store = loaded.store().await?;
    let now = Utc::now();
    let report = store.nodes_report(now).await?;
    if global.json {
        print_json(&report)?;
        return Ok(Exit::Success);
    }
    out(format_args!("{}", nodes_text(&report, now)))?;
    Ok(Exit::Success)
}

fn nodes_text(report: &NodesReport, now: chrono::DateTime<Utc>) -> String {
    if report.nodes.is_empty() {
        return "no serve node is registered on this state store\n".to_owned();
    }
    let rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|view| {
            let node = &view.node;
            let beat = (now - node.heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0;
            vec![
                node.id.clone(),
                node.host.clone(),
                node.pid.to_string(),
                node.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                format!("{beat:.1}s ago"),
                if view.alive { "live" } else { "dead" }.to_owned(),
                if view.leader {
                    format!("leader (term {})", report.term)
                } else {
                    String::new()
                },
                if view.runs.is_empty() {
                    "-".to_owned()
                } else {
                    view.runs.join(", ")
                },
                view.running_tasks.to_string(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "node",
            "host",
            "pid",
            "started",
            "heartbeat",
            "state",
            "leases",
            "runs",
            "tasks",
        ],
        &rows,
    );
    match &report.leader {
        Some(leader) => text.push_str(&format!("leader: {leader} (term {})\n", report.term)),
        None => text.push_str(&format!(
            "no leader right now (last term {}): a node takes the lease within one lease period\n",
            report.term
        )),
    }
    if !report.other_owners.is_empty() {
        text.push_str(&format!(
            "runs also owned by processes that are not live nodes: {}\n",
            report.other_owners.join(", ")
        ));
    }
    text
}
