//! The dashboard's HTML and inline SVG, rendered from plain data: no I/O here.
//!
//! The page holds no inline script or style (the Content-Security-Policy forbids both): colours
//! and sizes are classes of `/assets/dashboard.css`, behaviour is `/assets/dashboard.js`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use gapless_core::cells::{CellState, Completeness};
use gapless_core::dates::DateRange;
use gapless_store::{PhaseProgress, RunRecord};

/// Side of one heatmap cell, with its gap, in SVG units.
const STEP: usize = 11;
/// Width of a month's phase labels.
const LABEL: usize = 26;

/// Everything the page shows.
pub struct Page<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The moment it was rendered (the serve clock).
    pub now: NaiveDateTime,
    /// Whether the caller may press the buttons.
    pub admin: bool,
    /// Whether `serve` has tokens (then the page offers to log out).
    pub tokens: bool,
    /// The anti-CSRF token the buttons send.
    pub csrf: &'a str,
    /// (id, name) of every phase, in pipeline order.
    pub phases: Vec<(i64, &'a str)>,
    /// Open gaps in the ledger, by phase id.
    pub open_gaps: BTreeMap<i64, usize>,
    /// Age of the oldest open gap, in seconds.
    pub oldest_gap_seconds: Option<i64>,
    /// (day, open at its end, found, closed), oldest first.
    pub trend: Vec<(NaiveDate, i64, i64, i64)>,
    /// The heatmap's dates, and the cells classified (or why they could not be).
    pub heatmap: Heatmap<'a>,
    /// The newest runs, and the nodes.
    pub runs: &'a Runs,
}

/// The runs section: the newest runs and the nodes sharing the state store.
pub struct Runs {
    /// The newest runs.
    pub runs: Vec<RunView>,
    /// The nodes, their leases and the leader.
    pub nodes: gapless_store::NodesReport,
}

/// The heatmap: a range and its classified cells.
pub struct Heatmap<'a> {
    /// The dates shown.
    pub range: Option<DateRange>,
    /// The cells, or the error that kept them from being probed.
    /// `None` when there are no dates to show.
    pub cells: Option<Result<&'a Completeness, String>>,
    /// The whole pipeline's range was cut to this many most recent days.
    pub truncated_to: Option<i64>,
}

/// One run for the runs table.
pub struct RunView {
    /// The run.
    pub record: RunRecord,
    /// Its progress per phase.
    pub progress: Vec<PhaseProgress>,
    /// Its failed tasks: (phase, first date, last date, error), the first few.
    pub failures: Vec<(i64, NaiveDate, NaiveDate, String)>,
    /// Failed tasks in all.
    pub failed: usize,
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn head(out: &mut String, title: &str, csrf: Option<&str>) {
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if let Some(csrf) = csrf {
        let _ = write!(
            out,
            "<meta name=\"gapless-csrf\" content=\"{}\">",
            escape(csrf)
        );
    }
    let _ = write!(out, "<title>{}</title>", escape(title));
    out.push_str("<link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\">");
    out.push_str("<link rel=\"stylesheet\" href=\"/assets/dashboard.css\">");
    out.push_str("<script src=\"/assets/dashboard.js\" defer></script></head>");
}

/// The login form, with `error` above it.
pub fn login(error: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, "gapless: log in", None);
    out.push_str("<body class=\"login\"><main><h1>gapless</h1>");
    out.push_str("<p>This dashboard needs the API token (<code>GAPLESS_API_TOKEN</code>) or the read-only token (<code>GAPLESS_API_READ_TOKEN</code>) that <code>gapless serve</code> was started with.</p>");
    if let Some(error) = error {
        let _ = write!(
            out,
            "<p class=\"error\" role=\"alert\">{}</p>",
            escape(error)
        );
    }
    out.push_str("<form method=\"post\" action=\"/login\"><label for=\"token\">Token</label> ");
    out.push_str("<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus> ");
    out.push_str(
        "<button type=\"submit\">Open the dashboard</button></form></main></body></html>\n",
    );
    out
}

/// The whole page.
pub fn page(page: &Page<'_>) -> String {
    let cells = page
        .heatmap
        .range
        .map_or(0, |r| r.len() * page.phases.len());
    let mut out = String::with_capacity(16_384 + cells * 150);
    head(
        &mut out,
        &format!("gapless: {}", page.pipeline),
        Some(page.csrf),
    );
    out.push_str("<body><header>");
    let _ = write!(
        out,
        "<h1>gapless <span class=\"pipeline\">{}</span></h1>",
        escape(page.pipeline)
    );
    let _ = write!(
        out,
        "<p class=\"now\">as of <time>{} UTC</time></p>",
        page.now.format("%Y-%m-%d %H:%M:%S")
    );
    actions(&mut out, page);
    out.push_str("</header><main>");
    summary(&mut out, page);
    trend(&mut out, &page.trend);
    heatmap(&mut out, page);
    out.push_str("<section id=\"runs\" aria-labelledby=\"runs-h\">");
    runs(&mut out, page.runs);
    out.push_str("</section></main></body></html>\n");
    out
}

fn actions(out: &mut String, page: &Page<'_>) {
    out.push_str("<nav class=\"actions\">");
    let disabled = if page.admin {
        ""
    } else {
        " disabled title=\"needs the admin token\""
    };
    for (action, label) in [
        ("scan", "Scan now"),
        ("heal", "Heal"),
        ("heal-old", "Heal old gaps too"),
    ] {
        let _ = write!(
            out,
            "<button type=\"button\" data-action=\"{action}\"{disabled}>{label}</button>"
        );
    }
    if page.tokens {
        out.push_str(
            "<button type=\"button\" class=\"quiet\" data-action=\"logout\">Log out</button>",
        );
    }
    out.push_str("<output id=\"action-status\" role=\"status\"></output></nav>");
}

/// A duration in words: "3 d 4 h", "5 h 2 min", "40 s".
pub fn age(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{seconds} s")
    }
}

fn summary(out: &mut String, page: &Page<'_>) {
    let open: usize = page.open_gaps.values().sum();
    out.push_str("<section id=\"summary\" aria-labelledby=\"summary-h\"><h2 id=\"summary-h\">Gaps</h2><div class=\"cards\">");
    let _ = write!(
        out,
        "<div class=\"card{}\"><span class=\"big\" id=\"open-gaps\">{open}</span> open gaps</div>",
        if open > 0 { " bad" } else { " good" }
    );
    let oldest = page.oldest_gap_seconds.map_or("none".to_owned(), age);
    let _ = write!(
        out,
        "<div class=\"card\"><span class=\"big\" id=\"oldest-gap\">{oldest}</span> oldest open gap</div></div>"
    );
    out.push_str("<table class=\"phases\"><thead><tr><th scope=\"col\">Phase</th><th scope=\"col\">Open gaps</th>");
    let shown = matches!(page.heatmap.cells, Some(Ok(_)));
    if shown {
        for state in STATES {
            let _ = write!(
                out,
                "<th scope=\"col\"><span class=\"swatch {}\"></span>{}</th>",
                state.as_str(),
                words(state)
            );
        }
    }
    out.push_str("</tr></thead><tbody>");
    for (index, (id, name)) in page.phases.iter().enumerate() {
        let gaps = page.open_gaps.get(id).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<tr data-phase=\"{id}\"><th scope=\"row\">{id} {}</th><td class=\"num{}\">{gaps}</td>",
            escape(name),
            if gaps > 0 { " bad" } else { "" }
        );
        if let (Some(Ok(matrix)), Some(range)) = (&page.heatmap.cells, page.heatmap.range) {
            let totals = matrix.totals(index, range);
            for state in STATES {
                let _ = write!(
                    out,
                    "<td class=\"num\">{}</td>",
                    totals.get(&state).copied().unwrap_or(0)
                );
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

/// The states, in the legend's order.
const STATES: [CellState; 6] = [
    CellState::Complete,
    CellState::Partial,
    CellState::Missing,
    CellState::Blocked,
    CellState::NotDue,
    CellState::NotExpected,
];

fn words(state: CellState) -> &'static str {
    match state {
        CellState::Complete => "complete",
        CellState::Partial => "partial",
        CellState::Missing => "missing",
        CellState::NotExpected => "not expected",
        CellState::NotDue => "not due yet",
        CellState::Blocked => "blocked",
    }
}

fn trend(out: &mut String, trend: &[(NaiveDate, i64, i64, i64)]) {
    const W: usize = 720;
    const H: usize = 150;
    const PAD: usize = 30;
    out.push_str("<section id=\"trend\" aria-labelledby=\"trend-h\"><h2 id=\"trend-h\">Open gaps and closed gaps per day</h2>");
    if trend.is_empty() {
        out.push_str("<p>No history yet.</p></section>");
        return;
    }
    let max = trend
        .iter()
        .map(|&(_, open, _, closed)| open.max(closed))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = trend.len();
    let slot = (W - 2 * PAD) as f64 / n as f64;
    let y = |value: i64| (H - PAD) as f64 - (value as f64 / max as f64) * (H - 2 * PAD) as f64;
    let _ = write!(
        out,
        "<svg class=\"trend\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"open gaps at the end of each of the last {n} days, and gaps closed each day\">"
    );
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>",
        b = H - PAD,
        r = W - PAD
    );
    let _ = write!(
        out,
        "<text class=\"tick\" x=\"{}\" y=\"{}\">{max}</text>",
        PAD - 4,
        PAD + 4
    );
    let _ = write!(
        out,
        "<text class=\"tick\" x=\"{}\" y=\"{}\">0</text>",
        PAD - 4,
        H - PAD + 4
    );
    for (i, &(day, open, found, closed)) in trend.iter().enumerate() {
        let x = PAD as f64 + i as f64 * slot;
        let top = y(closed);
        let _ = write!(
            out,
            "<rect class=\"closed\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{day}: {open} open at the end of the day, {found} found, {closed} closed</title></rect>",
            x + slot * 0.15,
            slot * 0.7,
            (H - PAD) as f64 - top
        );
    }
    let points: Vec<String> = trend
        .iter()
        .enumerate()
        .map(|(i, &(_, open, _, _))| {
            format!("{:.1},{:.1}", PAD as f64 + (i as f64 + 0.5) * slot, y(open))
        })
        .collect();
    let _ = write!(
        out,
        "<polyline class=\"open\" points=\"{}\"/>",
        points.join(" ")
    );
    let first = trend[0].0;
    let last = trend[n - 1].0;
    let _ = write!(
        out,
        "<text class=\"date\" x=\"{PAD}\" y=\"{}\">{first}</text><text class=\"date end\" x=\"{}\" y=\"{}\">{last}</text>",
        H - 8,
        W - PAD,
        H - 8
    );
    out.push_str("</svg><p class=\"legend\"><span class=\"swatch line-open\"></span>open at the end of the day <span class=\"swatch closed\"></span>closed that day (healed, or filled)</p></section>");
}

fn heatmap(out: &mut String, page: &Page<'_>) {
    out.push_str("<section id=\"heatmap\" aria-labelledby=\"heatmap-h\"><h2 id=\"heatmap-h\">Cells by phase and date</h2>");
    out.push_str("<form class=\"range\" method=\"get\" action=\"/\"><label>From <input type=\"date\" name=\"start\"");
    if let Some(range) = page.heatmap.range {
        let _ = write!(out, " value=\"{}\"", range.start());
    }
    out.push_str("></label> <label>to <input type=\"date\" name=\"end\"");
    if let Some(range) = page.heatmap.range {
        let _ = write!(out, " value=\"{}\"", range.end());
    }
    out.push_str("></label> <button type=\"submit\">Show</button></form>");
    if let Some(days) = page.heatmap.truncated_to {
        let _ = write!(
            out,
            "<p class=\"note\">Showing the last {days} days; choose a range to see earlier ones.</p>"
        );
    }
    out.push_str("<p class=\"legend\">");
    for state in STATES {
        let _ = write!(
            out,
            "<span class=\"swatch {}\"></span>{} ",
            state.as_str(),
            words(state)
        );
    }
    out.push_str("</p>");
    let (Some(range), Some(matrix)) = (page.heatmap.range, &page.heatmap.cells) else {
        out.push_str("<p>Nothing is expected yet: the pipeline starts after today.</p></section>");
        return;
    };
    let matrix = match matrix {
        Ok(matrix) => *matrix,
        Err(error) => {
            let _ = write!(
                out,
                "<p class=\"error\" role=\"alert\">The warehouse could not be probed: {}</p></section>",
                escape(error)
            );
            return;
        }
    };
    out.push_str("<div class=\"months\">");
    let mut month_start = range.start();
    while month_start <= range.end() {
        let next = first_of_next_month(month_start);
        let month_end = (next - chrono::Days::new(1)).min(range.end());
        month(out, page, matrix, month_start, month_end);
        month_start = next;
    }
    out.push_str("</div></section>");
}

fn first_of_next_month(date: NaiveDate) -> NaiveDate {
    let (year, month) = if date.month() == 12 {
        (date.year() + 1, 1)
    } else {
        (date.year(), date.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1).expect("the first of a month exists")
}

fn month(
    out: &mut String,
    page: &Page<'_>,
    matrix: &Completeness,
    start: NaiveDate,
    end: NaiveDate,
) {
    let rows = page.phases.len();
    let width = LABEL + 31 * STEP;
    let height = rows * STEP;
    let _ = write!(
        out,
        "<figure class=\"month\" data-month=\"{}\"><figcaption>{}</figcaption><svg class=\"hm\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">",
        start.format("%Y-%m"),
        start.format("%B %Y")
    );
    let first = matrix.range().index_of(start);
    for (index, (id, name)) in page.phases.iter().enumerate() {
        let _ = write!(
            out,
            "<g data-phase=\"{id}\" transform=\"translate(0,{})\"><text class=\"pl\" x=\"{}\" y=\"9\">{id}</text>",
            index * STEP,
            LABEL - 6
        );
        let row = matrix.row(index);
        let mut date = start;
        let mut offset = first;
        while date <= end {
            if let Some(cell) = offset.and_then(|o| row.get(o)) {
                let x = LABEL + (date.day0() as usize) * STEP;
                let _ = write!(
                    out,
                    "<rect x=\"{x}\" class=\"{}\" data-date=\"{date}\"><title>{date} · {id} ",
                    cell.state.as_str()
                );
                escape_into(out, name);
                if cell.state == CellState::NotExpected {
                    out.push_str(" · nothing expected");
                } else {
                    let _ = write!(
                        out,
                        " · {} of {} · {}",
                        cell.count,
                        cell.expected,
                        words(cell.state)
                    );
                }
                out.push_str("</title></rect>");
            }
            date = date.succ_opt().expect("a date after");
            offset = offset.map(|o| o + 1);
        }
        out.push_str("</g>");
    }
    out.push_str("</svg></figure>");
}

/// The runs table and the nodes (also served alone, for the page's refresh).
pub fn runs(out: &mut String, section: &Runs) {
    runs_table(out, &section.runs);
    nodes(out, &section.nodes);
}

fn nodes(out: &mut String, report: &gapless_store::NodesReport) {
    if report.nodes.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<h3 id=\"nodes-h\">Nodes</h3><table class=\"nodes\" aria-labelledby=\"nodes-h\"><thead><tr><th scope=\"col\">Node</th><th scope=\"col\">Host</th><th scope=\"col\">pid</th><th scope=\"col\">Role</th><th scope=\"col\">Running tasks</th><th scope=\"col\">Runs owned</th><th scope=\"col\">Last heartbeat (UTC)</th></tr></thead><tbody>"
    );
    for view in &report.nodes {
        let role = match (view.alive, view.leader) {
            (false, _) => "gone",
            (true, true) => "leader",
            (true, false) => "follower",
        };
        let _ = write!(
            out,
            "<tr data-node=\"{id}\" data-role=\"{role}\"><td><code>{id}</code></td><td>{host}</td><td>{pid}</td><td class=\"role {role}\">{role}</td><td class=\"num\">{tasks}</td><td>{runs}</td><td>{beat}</td></tr>",
            id = escape(&view.node.id),
            host = escape(&view.node.host),
            pid = view.node.pid,
            tasks = view.running_tasks,
            runs = view.runs.len(),
            beat = view.node.heartbeat_at.format("%Y-%m-%d %H:%M:%S"),
        );
    }
    let _ = write!(
        out,
        "</tbody></table><p class=\"note\">Leader term {}.</p>",
        report.term
    );
}

fn runs_table(out: &mut String, runs: &[RunView]) {
    let running = runs
        .iter()
        .any(|run| run.record.state == gapless_store::RunState::Running);
    let _ = write!(
        out,
        "<h2 id=\"runs-h\">Recent runs</h2><div id=\"runs-body\" data-running=\"{running}\">"
    );
    if runs.is_empty() {
        out.push_str("<p>No runs yet.</p></div>");
        return;
    }
    out.push_str("<table class=\"runs\"><thead><tr><th scope=\"col\">Run</th><th scope=\"col\">Kind</th><th scope=\"col\">State</th><th scope=\"col\">Started (UTC)</th><th scope=\"col\">Progress by phase</th></tr></thead><tbody>");
    for run in runs {
        let record = &run.record;
        let _ = write!(
            out,
            "<tr data-run=\"{id}\" data-state=\"{state}\"><td><a href=\"/backfills/{id}\"><code>{id}</code></a></td><td>{kind}</td><td class=\"state {state}\">{state}</td><td>{created}</td><td class=\"progress\">",
            id = escape(record.id.as_str()),
            kind = record.kind.as_str(),
            state = record.state.as_str(),
            created = record.created_at.format("%Y-%m-%d %H:%M:%S"),
        );
        for phase in &run.progress {
            let done = phase.complete;
            let _ = write!(
                out,
                "<span class=\"phase-progress\" data-phase=\"{p}\" title=\"phase {p}: {done} of {total} cells complete, {running} running, {failed} failed, {blocked} blocked\">{p} <progress value=\"{done}\" max=\"{max}\"></progress> {done}/{total}</span>",
                p = phase.phase,
                total = phase.total,
                max = phase.total.max(1),
                running = phase.running,
                failed = phase.failed,
                blocked = phase.blocked,
            );
        }
        out.push_str("</td></tr>");
        if !run.failures.is_empty() {
            out.push_str("<tr class=\"failures\"><td colspan=\"5\"><ul>");
            for (phase, start, end, error) in &run.failures {
                let dates = if start == end {
                    start.to_string()
                } else {
                    format!("{start} to {end}")
                };
                let _ = write!(
                    out,
                    "<li>phase {phase}, {dates}: <samp>{}</samp></li>",
                    escape(&clip(error, 400))
                );
            }
            if run.failed > run.failures.len() {
                let _ = write!(
                    out,
                    "<li>and {} more failed tasks</li>",
                    run.failed - run.failures.len()
                );
            }
            out.push_str("</ul></td></tr>");
        }
    }
    out.push_str("</tbody></table></div>");
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(max).collect();
        clipped.push('…');
        clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<b a=\"1\" c='2'>&</b>"),
            "&lt;b a=&quot;1&quot; c=&#39;2&#39;&gt;&amp;&lt;/b&gt;"
        );
    }

    #[test]
    fn ages_read_in_the_largest_units() {
        assert_eq!(age(40), "40 s");
        assert_eq!(age(5 * 60 + 3), "5 min");
        assert_eq!(age(2 * 3600 + 120), "2 h 2 min");
        assert_eq!(age(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }

    #[test]
    fn months_follow_each_other_across_years() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(first_of_next_month(d(2024, 12, 15)), d(2025, 1, 1));
        assert_eq!(first_of_next_month(d(2024, 2, 29)), d(2024, 3, 1));
    }

    #[test]
    fn the_login_page_escapes_its_error_and_posts_to_login() {
        let html = login(Some("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("action=\"/login\""));
        assert!(!html.contains("<script>"));
    }
}
