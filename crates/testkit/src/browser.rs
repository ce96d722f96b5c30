//! A real headless Chromium, driven over the W3C WebDriver protocol by Debian's `chromedriver`,
//! for the dashboard's tests: navigate, run a script, click, type, read the console and the
//! network log, take a screenshot.
//!
//! `GAPLESS_CHROMIUM` and `GAPLESS_CHROMEDRIVER` name the binaries (default `/usr/bin/chromium`
//! and `chromedriver` on the `PATH`); without them a test skips, unless
//! `GAPLESS_REQUIRE_EXTERNAL=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Names the Chromium binary.
pub const CHROMIUM_VAR: &str = "GAPLESS_CHROMIUM";
/// Names the chromedriver binary.
pub const CHROMEDRIVER_VAR: &str = "GAPLESS_CHROMEDRIVER";

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; the driver and its browser are killed when dropped.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

fn find(var: &str, default: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(var) {
        return Some(PathBuf::from(path));
    }
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(default))
        .find(|path| path.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1400×1000); `None` (and a skip
    /// notice) when either binary is missing.
    pub async fn start() -> Option<Self> {
        let (Some(chromium), Some(driver)) = (
            find(CHROMIUM_VAR, "chromium"),
            find(CHROMEDRIVER_VAR, "chromedriver"),
        ) else {
            crate::skip("Chromium and chromedriver (Debian's chromium, chromium-driver)");
            return None;
        };
        Some(
            Self::launch(&chromium, &driver)
                .await
                .expect("headless Chromium starts"),
        )
    }

    async fn launch(chromium: &Path, driver: &Path) -> anyhow::Result<Self> {
        let port = crate::free_port();
        let mut command = Command::new(driver);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", driver.display()))?;
        // reqwest is built without a TLS provider of its own: name ring, as gapless does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on {base} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir()?;
        // As root, without the network: no sandbox, no background connections to Google.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1400,1000".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
            }}
        });
        let mut browser = Self {
            driver: child,
            http,
            session: String::new(),
            _profile: profile,
        };
        let created = browser
            .call(
                reqwest::Method::POST,
                &format!("{base}/session"),
                capabilities,
            )
            .await?;
        browser.session = format!(
            "{base}/session/{}",
            created["sessionId"]
                .as_str()
                .context("no sessionId in the new session")?
        );
        Ok(browser)
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Value) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), url);
        if method != reqwest::Method::GET {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: Value = response.json().await?;
        if !status.is_success() {
            bail!("WebDriver {method} {url}: {status}: {}", value["value"]);
        }
        Ok(value["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.session);
        self.call(reqwest::Method::POST, &url, body).await
    }

    /// Loads `url` and waits for its `load` event.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Runs `script` (a function body: `return …`) in the page, with `args`.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Polls `script` until it returns something truthy (not `null`, `false`, `0` or `""`),
    /// which it returns; fails after `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        within: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let value = self.eval(script, json!([])).await?;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {within:?} (last: {value})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element `{css}` in {found}"))
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.post(&format!("/element/{id}/click"), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into the element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await
            .map(drop)
    }

    /// Saves a PNG of the whole page (the window is widened to the page's height first).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let height = self
            .eval("return document.documentElement.scrollHeight;", json!([]))
            .await?
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000);
        // The window is taller than the page's viewport by the browser's own frame.
        self.post(
            "/window/rect",
            json!({ "width": 1400, "height": height + 120 }),
        )
        .await?;
        let url = format!("{}/screenshot", self.session);
        let png = self.call(reqwest::Method::GET, &url, Value::Null).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("screenshot is not base64 text")?)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    async fn log(&self, kind: &str) -> anyhow::Result<Vec<Value>> {
        let entries = self.post("/se/log", json!({ "type": kind })).await?;
        Ok(entries.as_array().cloned().unwrap_or_default())
    }

    /// Console messages at level `SEVERE` (errors, CSP violations, failed loads) since the
    /// last call.
    pub async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .log("browser")
            .await?
            .into_iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// Requests that failed (no answer) or were answered with a status of 400 or more, since
    /// the last call: "STATUS URL" or "failed URL: why".
    pub async fn failed_requests(&self) -> anyhow::Result<Vec<String>> {
        let mut urls = std::collections::HashMap::new();
        let mut failed = Vec::new();
        for entry in self.log("performance").await? {
            let Some(text) = entry["message"].as_str() else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            let message = &message["message"];
            let params = &message["params"];
            match message["method"].as_str() {
                Some("Network.requestWillBeSent") => {
                    urls.insert(
                        params["requestId"].to_string(),
                        params["request"]["url"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                Some("Network.responseReceived") => {
                    let status = params["response"]["status"].as_f64().unwrap_or(0.0);
                    if status >= 400.0 {
                        failed.push(format!(
                            "{status} {}",
                            params["response"]["url"].as_str().unwrap_or_default()
                        ));
                    }
                }
                Some("Network.loadingFailed") => {
                    let url = urls
                        .get(&params["requestId"].to_string())
                        .cloned()
                        .unwrap_or_default();
                    failed.push(format!(
                        "failed {url}: {}",
                        params["errorText"].as_str().unwrap_or_default()
                    ));
                }
                _ => {}
            }
        }
        Ok(failed)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session quits the browser (which runs in a process group of its own);
        // then chromedriver goes. Plain blocking HTTP: a destructor cannot await.
        if let Some(rest) = self.session.strip_prefix("http://") {
            use std::io::{Read as _, Write as _};
            if let Some((host, path)) = rest.split_once('/')
                && let Ok(mut stream) = std::net::TcpStream::connect(host)
            {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let request = format!(
                    "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(request.as_bytes()).is_ok() {
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            }
        }
        // procps's kill reads a negative pid after `--` only.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
