//! Test helpers for gapless. A dev-dependency only: nothing in a shipped binary may depend on it.
//!
//! - [`external`] and [`pg_url`] gate tests on real services (PostgreSQL, NATS) without breaking
//!   `cargo test` on a laptop that has none, while `GAPLESS_REQUIRE_EXTERNAL=1` (set in CI) turns a
//!   missing service into a failure, so skips can't hide.
//! - [`fresh_pg_database`] gives each test its own PostgreSQL database ([`PgTestDb`]).
//! - [`bigquery`]: the BigQuery emulator, an OAuth token endpoint and a token-checking proxy.
//!
//! It depends on no gapless crate, so every crate can use it.

use std::time::Duration;

pub mod bigquery;
pub mod browser;
pub mod buckets;
pub mod cluster;
pub mod rsa;

use anyhow::Context as _;
use sqlx::{Connection as _, PgConnection};

/// Environment variable that, set to `1`, makes a missing external service fail the test.
pub const REQUIRE_EXTERNAL_VAR: &str = "GAPLESS_REQUIRE_EXTERNAL";

/// Environment variable holding the PostgreSQL URL for integration tests.
pub const PG_URL_VAR: &str = "GAPLESS_TEST_PG_URL";

/// Bounds every administrative call to PostgreSQL, so a hung server fails the test instead of
/// hanging it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The value of the environment variable `var`, or `None` when it is unset or empty.
///
/// # Panics
///
/// When `var` is unset and `GAPLESS_REQUIRE_EXTERNAL=1`: CI sets that so a test that needs an
/// external service fails instead of silently skipping.
pub fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var(REQUIRE_EXTERNAL_VAR).is_ok_and(|v| v == "1") => panic!(
            "this test requires `{var}` to be set ({REQUIRE_EXTERNAL_VAR}=1 forbids skipping it)"
        ),
        _ => {
            skip(&format!(
                "`{var}` (for example postgres://postgres@127.0.0.1:5432/test)"
            ));
            None
        }
    }
}

/// Reports that the current test is skipped because it needs `what`, or panics when
/// `GAPLESS_REQUIRE_EXTERNAL=1`.
///
/// The line goes straight to the process's stderr, past the test harness's capture of
/// `eprintln!`, so that a skip is seen in the test run's output, not only when a test fails.
pub fn skip(what: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    if std::env::var(REQUIRE_EXTERNAL_VAR).is_ok_and(|v| v == "1") {
        panic!("{test} needs {what} ({REQUIRE_EXTERNAL_VAR}=1 forbids skipping it)");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {test} needs {what}");
}

/// PostgreSQL URL for integration tests (`GAPLESS_TEST_PG_URL`, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`). `None` means skip, unless
/// `GAPLESS_REQUIRE_EXTERNAL=1`, where a missing URL panics (see [`external`]).
pub fn pg_url() -> Option<String> {
    external(PG_URL_VAR)
}

/// A PostgreSQL database created for one test, named `gapless_test_<random>`.
///
/// Cleanup: call [`PgTestDb::drop_db`] at the end of the test; that is the reliable path and
/// reports errors. If the guard is dropped without it (a failed assertion, an early `?`), `Drop`
/// makes a best-effort attempt from a helper thread with its own runtime and ignores errors; a
/// database left behind by a killed test process is harmless and carries the `gapless_test_`
/// prefix, so it can be found and removed by hand.
#[derive(Debug)]
pub struct PgTestDb {
    admin_url: String,
    url: String,
    name: String,
    dropped: bool,
}

impl PgTestDb {
    /// Connection URL of the fresh database: the admin URL with its database path replaced.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of the fresh database.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, closing other sessions on it first (`WITH (FORCE)`, PostgreSQL 13+),
    /// so a pool the test forgot to close does not keep it alive.
    pub async fn drop_db(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // `Drop` cannot await, and blocking on the test's own runtime could deadlock it (a
        // current-thread runtime has no other thread to drive the future), so the cleanup runs
        // on a short-lived thread with its own runtime. Errors are ignored: best effort.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = runtime.block_on(drop_database(&admin_url, &name));
        });
        let _ = cleanup.join();
    }
}

/// Creates a uniquely named database (`gapless_test_<random>`) on the server of `url` and returns
/// a guard whose [`PgTestDb::url`] points at it. `url` must name a database the user can connect
/// to and a role allowed to `CREATE DATABASE`.
pub async fn fresh_pg_database(url: &str) -> anyhow::Result<PgTestDb> {
    let name = format!(
        "gapless_test_{}",
        std::iter::repeat_with(|| fastrand::alphanumeric().to_ascii_lowercase())
            .take(16)
            .collect::<String>()
    );
    let mut parsed = url::Url::parse(url).context("`GAPLESS_TEST_PG_URL` is not a valid URL")?;
    parsed.set_path(&format!("/{name}"));

    let mut admin = admin_connect(url).await?;
    // Identifiers cannot be bound as parameters; `name` is built above from [a-z0-9_] only.
    let create = sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"));
    tokio::time::timeout(ADMIN_TIMEOUT, sqlx::raw_sql(create).execute(&mut admin))
        .await
        .context("timed out creating the test database")?
        .with_context(|| format!("cannot create test database `{name}`"))?;
    let _ = admin.close().await;

    Ok(PgTestDb {
        admin_url: url.to_owned(),
        url: parsed.into(),
        name,
        dropped: false,
    })
}

async fn admin_connect(url: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(ADMIN_TIMEOUT, PgConnection::connect(url))
        .await
        .context("timed out connecting to the test PostgreSQL server")?
        .context("cannot connect to the test PostgreSQL server")
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = admin_connect(admin_url).await?;
    // `name` was generated by `fresh_pg_database` from [a-z0-9_] only.
    let statement = sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    tokio::time::timeout(ADMIN_TIMEOUT, sqlx::raw_sql(statement).execute(&mut admin))
        .await
        .context("timed out dropping the test database")?
        .with_context(|| format!("cannot drop test database `{name}`"))?;
    let _ = admin.close().await;
    Ok(())
}

/// Whether process `pid` is gone (or a zombie), waiting up to five seconds: signals are
/// delivered asynchronously, so a process killed a moment ago may still be listed.
pub fn process_gone(pid: &str) -> bool {
    let gone = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    gone()
}

/// A TCP proxy on loopback in front of a real server (PostgreSQL), that a test can take down
/// and bring back: while down it cuts every open connection and stops listening, so new
/// connections are refused, as with a restarted server or a network blip. Plain threads, so it
/// works beside any runtime.
pub struct Proxy {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`) on a free loopback port.
    pub fn start(target: &str) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = target.to_owned();
        let (is_down, streams) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            let pause = std::time::Duration::from_millis(5);
            let mut listening = Some(listener);
            loop {
                if is_down.load(Ordering::SeqCst) {
                    // Not listening: connections are refused.
                    listening = None;
                    std::thread::sleep(pause);
                    continue;
                }
                let listener = match listening.take() {
                    Some(listener) => listener,
                    // std sets SO_REUSEADDR on listeners, so the port can be taken again.
                    None => match std::net::TcpListener::bind(("127.0.0.1", port)) {
                        Ok(listener) => listener,
                        Err(_) => {
                            std::thread::sleep(pause);
                            continue;
                        }
                    },
                };
                if listener.set_nonblocking(true).is_err() {
                    return;
                }
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        listening = Some(listener);
                        std::thread::sleep(pause);
                        continue;
                    }
                    Err(_) => {
                        listening = Some(listener);
                        continue;
                    }
                };
                listening = Some(listener);
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let (Ok(client_write), Ok(server_write)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                if let Ok(mut registry) = streams.lock() {
                    registry.extend(client.try_clone());
                    registry.extend(server.try_clone());
                }
                pipe(client, server_write);
                pipe(server, client_write);
            }
        });
        Ok(Self { port, down, open })
    }

    /// The port to connect to instead of the target's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A proxy in front of the server of database URL `url`, and the URL that goes through it.
    pub fn in_front_of(url: &str) -> anyhow::Result<(Self, String)> {
        let mut proxied = url::Url::parse(url)?;
        let host = proxied.host_str().unwrap_or("127.0.0.1").to_owned();
        let port = proxied.port().unwrap_or(5432);
        let proxy = Self::start(&format!("{host}:{port}"))?;
        proxied
            .set_host(Some("127.0.0.1"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        proxied
            .set_port(Some(proxy.port))
            .map_err(|()| anyhow::anyhow!("`{url}` cannot take a port"))?;
        Ok((proxy, proxied.to_string()))
    }

    /// Cuts every open connection and stops listening until [`Proxy::up`].
    pub fn down(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut registry) = self.open.lock() {
            for stream in registry.drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Listens and accepts connections again.
    pub fn up(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` into `to` on a thread of its own until either side closes.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a loopback port")
}
