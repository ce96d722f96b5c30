//! The dashboard as a person uses it, in a real headless Chromium, and who may do what on every
//! route, spoken over TCP to a real `gapless serve`.

use std::time::Duration;

use gapless_testkit::browser::Browser;
use serde_json::{Value, json};

use crate::serve::{Serve, backfill_all, cascade, client, trigger_caught_up};
use crate::util::{Project, exec};

const ADMIN: &str = "admin-secret";
const READ: &str = "read-secret";

/// The cascade pipeline backfilled through March 30, then holes made behind the trigger's back:
/// phase 3 lost March 10 and 20 (missing), phase 2 lost March 25, so phase 3 on the 25th and
/// phase 4 on the 25th to the 27th (their rolling window) are blocked. Returns the project and
/// a `serve` with both tokens.
async fn seeded() -> (Project, Serve) {
    let project = cascade().await;
    backfill_all(&project, "2024-03-01");
    let serve = Serve::start(
        &project,
        &[
            ("GAPLESS_API_TOKEN", ADMIN),
            ("GAPLESS_API_READ_TOKEN", READ),
        ],
    );
    let state = project.sqlite(".gapless/state.db").await;
    trigger_caught_up(&state).await;
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "DELETE FROM daily WHERE d IN ('2024-03-10', '2024-03-20', '2024-03-25');
         DELETE FROM loaded WHERE d = '2024-03-25';
         DELETE FROM rolling WHERE d BETWEEN '2024-03-25' AND '2024-03-27';",
    )
    .await;
    (project, serve)
}

/// The state class and the title of the heatmap cell (phase, date).
const CELLS: &str = "
    const cell = (p, d) => {
        const r = document.querySelector(`g[data-phase=\"${p}\"] rect[data-date=\"${d}\"]`);
        return r ? [r.getAttribute('class'), r.querySelector('title').textContent] : null;
    };
    const count = (state) => document.querySelectorAll(`svg.hm rect.${state}`).length;
    return {
        missing_3_10: cell(3, '2024-03-10'), missing_3_20: cell(3, '2024-03-20'),
        missing_2_25: cell(2, '2024-03-25'), blocked_3_25: cell(3, '2024-03-25'),
        blocked_4_27: cell(4, '2024-03-27'), complete_4_28: cell(4, '2024-03-28'),
        complete_3_11: cell(3, '2024-03-11'),
        missing: count('missing'), blocked: count('blocked'), partial: count('partial'),
        open: document.getElementById('open-gaps').textContent,
    };";

#[tokio::test]
async fn the_dashboard_in_chromium_shows_the_seeded_gaps_and_its_buttons_work() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let (_project, serve) = seeded().await;
    let page = serve.url("/");
    let wait = Duration::from_secs(30);

    // No cookie yet: the login form. A wrong token is refused, the admin token lets in.
    browser.goto(&page).await.unwrap();
    browser
        .wait_for(
            "the login form",
            "return document.querySelector('form[action=\"/login\"]') !== null;",
            wait,
        )
        .await
        .unwrap();
    browser.type_into("#token", "not-the-token").await.unwrap();
    browser.click("button[type=submit]").await.unwrap();
    browser
        .wait_for(
            "the wrong token's message",
            "const e = document.querySelector('.error'); return e && e.textContent;",
            wait,
        )
        .await
        .unwrap();
    browser.type_into("#token", ADMIN).await.unwrap();
    browser.click("button[type=submit]").await.unwrap();
    browser
        .wait_for(
            "the dashboard",
            "return document.querySelector('meta[name=\"gapless-csrf\"]') !== null;",
            wait,
        )
        .await
        .unwrap();
    // The cookie is out of the page's reach (HttpOnly).
    let cookies = browser
        .eval("return document.cookie;", json!([]))
        .await
        .unwrap();
    assert_eq!(cookies, json!(""));
    // The login's own 401s are behind us: from here, no error and no failed request.
    browser.console_errors().await.unwrap();
    browser.failed_requests().await.unwrap();

    browser.goto(&page).await.unwrap();
    // The browser asked for gzip and got the page compressed.
    let sizes = browser
        .eval(
            "const nav = performance.getEntriesByType('navigation')[0];
             return [nav.encodedBodySize, nav.decodedBodySize];",
            json!([]),
        )
        .await
        .unwrap();
    let (encoded, decoded) = (sizes[0].as_u64().unwrap(), sizes[1].as_u64().unwrap());
    assert!(
        encoded > 0 && encoded * 3 < decoded,
        "the page came compressed: {encoded} bytes for {decoded}"
    );
    let cells = browser.eval(CELLS, json!([])).await.unwrap();
    let class = |key: &str| cells[key][0].as_str().unwrap_or_default().to_owned();
    let title = |key: &str| cells[key][1].as_str().unwrap_or_default().to_owned();
    assert_eq!(class("missing_3_10"), "missing", "{cells}");
    assert_eq!(class("missing_3_20"), "missing", "{cells}");
    assert_eq!(class("missing_2_25"), "missing", "{cells}");
    assert_eq!(class("blocked_3_25"), "blocked", "{cells}");
    assert_eq!(class("blocked_4_27"), "blocked", "{cells}");
    assert_eq!(class("complete_4_28"), "complete", "{cells}");
    assert_eq!(class("complete_3_11"), "complete", "{cells}");
    assert_eq!(cells["missing"], 3, "{cells}");
    assert_eq!(cells["blocked"], 4, "{cells}");
    assert_eq!(cells["partial"], 0, "{cells}");
    // Each cell's title: its count against the expected count.
    assert_eq!(
        title("missing_3_10"),
        "2024-03-10 · 3 daily · 0 of 1 · missing"
    );
    assert_eq!(
        title("complete_3_11"),
        "2024-03-11 · 3 daily · 1 of 1 · complete"
    );
    // Nothing scanned yet: the ledger is empty.
    assert_eq!(cells["open"], "0", "{cells}");

    // "Scan now": the scan finds the three gaps (blocked cells wait for theirs), the page
    // reloads with them in the ledger.
    browser.click("button[data-action=\"scan\"]").await.unwrap();
    let status = browser
        .wait_for(
            "the scan's result after the reload",
            "const s = document.getElementById('action-status').textContent;
             return document.getElementById('open-gaps').textContent === '3' && s;",
            wait,
        )
        .await
        .unwrap();
    assert_eq!(status, json!("Scan found 3 gaps."));
    let http = client();
    let gaps = serve.get_json(&http, "/gaps", Some(READ)).await;
    assert_eq!(gaps["gaps"].as_array().unwrap().len(), 3, "{gaps}");
    let phases = browser
        .eval(
            "return [...document.querySelectorAll('table.phases tbody tr')]
                .map(r => [r.dataset.phase, r.children[1].textContent]);",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(
        phases,
        json!([["1", "0"], ["2", "1"], ["3", "2"], ["4", "0"]])
    );

    // The one node, and it leads (runs the scheduler).
    let leader = browser
        .eval(
            "return [...document.querySelectorAll('tr[data-node]')].map(r => r.dataset.role);",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(leader, json!(["leader"]));
    // The trend: today, three gaps found and open.
    let trend_today = "const t = document.querySelectorAll('svg.trend rect title');
                       return t[t.length - 1].textContent;";
    let today = browser.eval(trend_today, json!([])).await.unwrap();
    assert!(
        today
            .as_str()
            .unwrap()
            .ends_with(": 3 open at the end of the day, 3 found, 0 closed"),
        "{today}"
    );
    // A look at the holes, kept as a CI artifact under target/.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).await.unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    eprintln!("dashboard screenshot: {}", shot.display());

    // "Heal": a heal run starts, and the runs table follows it to the end on its own.
    browser.click("button[data-action=\"heal\"]").await.unwrap();
    browser
        .wait_for(
            "the heal run to show as succeeded",
            "return [...document.querySelectorAll('tr[data-run]')]
                .some(r => r.children[1].textContent === 'heal'
                    && r.dataset.state === 'succeeded');",
            Duration::from_secs(60),
        )
        .await
        .unwrap();

    let errors = browser.console_errors().await.unwrap();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let failed = browser.failed_requests().await.unwrap();
    assert!(failed.is_empty(), "failed requests: {failed:?}");

    // A scan after the heal closes the three gaps: the trend shows them closed today.
    browser.click("button[data-action=\"scan\"]").await.unwrap();
    browser
        .wait_for(
            "the gaps closed after the heal",
            "const t = document.querySelectorAll('svg.trend rect title');
             return document.getElementById('open-gaps').textContent === '0'
                 && t[t.length - 1].textContent.endsWith(': 0 open at the end of the day, 3 found, 3 closed');",
            wait,
        )
        .await
        .unwrap();
    let errors = browser.console_errors().await.unwrap();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    drop(browser);
    assert_eq!(serve.stop(), 0);
}

/// A request with `headers`.
async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// What `serve` has recorded that a refused request could have changed.
async fn side_effects(serve: &Serve, http: &reqwest::Client) -> Value {
    let bearer = format!("Bearer {ADMIN}");
    let auth = [("authorization", bearer.as_str())];
    let get = |path: &'static str| {
        let url = serve.url(path);
        async move {
            send(http, "GET", &url, &auth, None)
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    json!({
        "events": get("/events").await["events"].as_array().unwrap().len(),
        "quarantined": get("/events?status=quarantined").await["events"].as_array().unwrap().len(),
        "runs": get("/runs").await["runs"].as_array().unwrap().len(),
        "gaps": get("/gaps?status=all").await["gaps"].as_array().unwrap().len(),
    })
}

#[tokio::test]
async fn tokens_cookies_and_csrf_guard_every_route() {
    let (_project, serve) = seeded().await;
    // gapless's own client installs the TLS provider this one needs too.
    let _ = client();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let before = side_effects(&serve, &http).await;
    let event = json!({"phase": 2, "date": "2024-03-12", "status": "complete"});
    let backfill = json!({"start_date": "2024-03-01", "end_date": "2024-03-02"});
    let mutating: [(&str, &str, Option<Value>); 5] = [
        ("POST", "/events", Some(event.clone())),
        (
            "POST",
            "/events/pubsub",
            Some(json!({"message": {"data": "e30="}})),
        ),
        ("POST", "/scan-gaps", Some(json!({}))),
        ("POST", "/backfills", Some(backfill.clone())),
        ("POST", "/logout", None),
    ];
    let reading = [
        "/",
        "/ui/runs",
        "/events",
        "/gaps",
        "/runs",
        "/metrics",
        "/backfills/20240101T000000-abcdef",
    ];
    let read = format!("Bearer {READ}");
    let wrong = format!("Bearer {ADMIN}x");
    for (method, path, body) in &mutating {
        let url = serve.url(path);
        let bare = send(&http, method, &url, &[], body.clone()).await;
        assert_eq!(bare.status(), 401, "{method} {path}");
        let wrong = send(
            &http,
            method,
            &url,
            &[("authorization", &wrong)],
            body.clone(),
        )
        .await;
        assert_eq!(wrong.status(), 403, "{method} {path}");
        let reader = send(
            &http,
            method,
            &url,
            &[("authorization", &read)],
            body.clone(),
        )
        .await;
        assert_eq!(
            reader.status(),
            403,
            "{method} {path} with the read-only token"
        );
    }
    for path in reading {
        let url = serve.url(path);
        assert_eq!(
            send(&http, "GET", &url, &[], None).await.status(),
            401,
            "{path}"
        );
        let wrong = send(&http, "GET", &url, &[("authorization", &wrong)], None).await;
        assert_eq!(wrong.status(), 403, "{path}");
        let reader = send(&http, "GET", &url, &[("authorization", &read)], None).await;
        assert_ne!(reader.status(), 401, "{path}");
        assert_ne!(reader.status(), 403, "{path}");
    }
    assert_eq!(
        side_effects(&serve, &http).await,
        before,
        "a refused request changed something"
    );

    // Security headers on every answer: pages, JSON, refusals, assets, /healthz.
    for (path, auth) in [
        ("/", Some(ADMIN)),
        ("/gaps", Some(READ)),
        ("/gaps", None),
        ("/healthz", None),
        ("/assets/dashboard.js", None),
    ] {
        let bearer = auth.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        let response = send(&http, "GET", &serve.url(path), &headers, None).await;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let csp = header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
    }

    // The dashboard's login: a wrong token is refused, a right one is kept in a cookie no
    // script can read and no other site's page sends.
    let login = |token: &str| {
        let encoded: String = token
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = format!("token={encoded}");
        http.post(serve.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(login("nope").await.unwrap().status(), 401);
    let answer = login(ADMIN).await.unwrap();
    assert_eq!(answer.status(), 303);
    let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = send(&http, "GET", &serve.url("/"), &[("cookie", &cookie)], None).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"gapless-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(csrf.len(), 64);
    assert!(!html.contains(" disabled"), "the admin's buttons are live");

    // The cookie alone does not let a write through: the anti-CSRF token must come too, from
    // this site's page.
    let scan = serve.url("/scan-gaps");
    let body = Some(json!({}));
    let forged = send(&http, "POST", &scan, &[("cookie", &cookie)], body.clone()).await;
    assert_eq!(forged.status(), 403);
    let wrong_csrf = [("cookie", cookie.as_str()), ("x-csrf-token", "00")];
    assert_eq!(
        send(&http, "POST", &scan, &wrong_csrf, body.clone())
            .await
            .status(),
        403
    );
    let evil = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("origin", "https://evil.example"),
    ];
    assert_eq!(
        send(&http, "POST", &scan, &evil, body.clone())
            .await
            .status(),
        403
    );
    let admin = format!("Bearer {ADMIN}");
    let evil_bearer = [
        ("authorization", admin.as_str()),
        ("sec-fetch-site", "cross-site"),
    ];
    assert_eq!(
        send(&http, "POST", &scan, &evil_bearer, body.clone())
            .await
            .status(),
        403
    );
    assert_eq!(
        side_effects(&serve, &http).await,
        before,
        "a refused write changed something"
    );
    let origin = serve.url("").trim_end_matches('/').to_owned();
    let good = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("origin", origin.as_str()),
    ];
    let scanned = send(&http, "POST", &scan, &good, body.clone()).await;
    assert_eq!(scanned.status(), 200);
    assert_eq!(scanned.json::<Value>().await.unwrap()["found"], 3);

    // The read-only token opens the page, with its buttons off, and writes nothing.
    let answer = login(READ).await.unwrap();
    assert_eq!(answer.status(), 303);
    let read_cookie = answer.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = send(
        &http,
        "GET",
        &serve.url("/"),
        &[("cookie", &read_cookie)],
        None,
    )
    .await;
    let html = page.text().await.unwrap();
    assert!(html.contains("data-action=\"scan\" disabled"), "{html}");
    let read_csrf = html
        .split("name=\"gapless-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let reader = [
        ("cookie", read_cookie.as_str()),
        ("x-csrf-token", read_csrf.as_str()),
    ];
    assert_eq!(
        send(&http, "POST", &scan, &reader, body.clone())
            .await
            .status(),
        403
    );

    // Logging out forgets the cookie.
    let out = send(&http, "POST", &serve.url("/logout"), &good, None).await;
    assert_eq!(out.status(), 204);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(serve.stop(), 0);
}
