//! Connecting: refused and unresolvable servers fail fast with their cause,
//! other schemes are refused, passwords stay out of messages, TLS works.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_runtime::{Client, ClientOptions, Error, TaskError, task};
use queue_tests::TestDb;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::setup;

/// How long a refused or unresolvable server may take to fail. Generous
/// for a loaded machine; the pool's acquire timeout (10 s) used to pass
/// before the failure was reported.
const FAST: Duration = Duration::from_secs(3);

/// A password that appears nowhere but in the URLs of these tests.
const SECRET: &str = "s3cret-7f3a9";

#[task(queue = "connections", name = "tests.connections.noop")]
async fn noop(n: u32) -> Result<(), TaskError> {
    let _ = n;
    Ok(())
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// `url` with its host and port replaced, keeping credentials, database
/// and parameters.
fn with_host_port(url: &str, host: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!(
        "{scheme}://{}{host}:{port}{tail}",
        userinfo.unwrap_or_default()
    )
}

/// `url` with its password replaced by `password`.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (userinfo, host) = rest.split_once('@').expect("a URL with credentials");
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The host and port of `url`.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").expect("a URL with a scheme").1;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().expect("a numeric port")),
        None => (host_port.to_owned(), 3306),
    }
}

/// A TCP proxy to the database server that can be shut, as a server that
/// goes away: its port then refuses connections and the connections it
/// carried are cut.
struct Proxy {
    port: u16,
    accept: JoinHandle<()>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pipes = Arc::new(Mutex::new(Vec::new()));
        let pipes2 = pipes.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                pipes2.lock().unwrap().push(pipe);
            }
        });
        Proxy {
            port,
            accept,
            pipes,
        }
    }

    /// Stops listening and cuts every connection.
    async fn shut(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let pipes = std::mem::take(&mut *self.pipes.lock().unwrap());
        for pipe in pipes {
            pipe.abort();
            let _ = pipe.await;
        }
    }
}

/// Runs `f`, returning its result and how long it took.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

fn assert_refused(what: &str, e: &Error, took: Duration) {
    let text = e.to_string();
    assert!(
        text.to_lowercase().contains("refused"),
        "{what}: expected an error saying the connection was refused, got `{text}` after {took:?}"
    );
    assert!(
        took < FAST,
        "{what}: failed after {took:?} (`{text}`), not at once"
    );
    assert!(
        matches!(e, Error::Database(_)),
        "{what}: a refused connection is a database error (the runtime's outage handling counts it): {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_fails_fast_saying_refused() {
    let url = format!(
        "mysql://queue:{SECRET}@127.0.0.1:{}/queue",
        closed_port().await
    );
    let (result, took) = timed(Client::connect(&url)).await;
    let e = result.expect_err("nothing listens on the port");
    assert_refused("Client::connect", &e, took);
    assert!(!format!("{e} {e:?}").contains(SECRET), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_unresolvable_host_fails_fast_saying_so() {
    let (result, took) = timed(Client::connect("mysql://u:p@nonexistent.invalid/db")).await;
    let e = result.expect_err("the host does not resolve");
    let text = e.to_string();
    assert!(
        text.contains("nonexistent.invalid")
            && (text.contains("lookup") || text.contains("resolve")),
        "expected an error naming the host that does not resolve, got `{text}`"
    );
    assert!(took < FAST, "failed after {took:?} (`{text}`), not at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_saying_refused_after_the_server_went_away() {
    queue_tests::init_tracing();
    let db = TestDb::new().await;
    let proxy = Proxy::start(host_port(&db.url)).await;
    let client = Client::connect(&with_host_port(&db.url, "127.0.0.1", proxy.port))
        .await
        .expect("connect through the proxy");
    client.migrate().await.unwrap();
    noop::with(1).enqueue(&client).await.unwrap();
    assert_eq!(client.stats().await.unwrap().total.ready, 1);

    proxy.shut().await;

    let (result, took) = timed(client.stats()).await;
    assert_refused("stats", &result.expect_err("the server is gone"), took);
    let (result, took) = timed(noop::with(2).enqueue(&client)).await;
    assert_refused("enqueue", &result.expect_err("the server is gone"), took);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_mysql_urls_are_refused() {
    for url in [
        format!("postgres://u:{SECRET}@127.0.0.1:5432/db"),
        format!("postgresql://u:{SECRET}@127.0.0.1/db"),
        format!("sqlite://{SECRET}.db"),
    ] {
        let (result, took) = timed(Client::connect(&url)).await;
        let e = result.expect_err("not a MySQL URL");
        let text = e.to_string();
        assert!(
            matches!(e, Error::InvalidArgument(_)) && text.contains("mysql://"),
            "{url}: expected an invalid argument naming mysql://, got {e:?}"
        );
        assert!(!text.contains(SECRET), "{text}");
        assert!(took < FAST, "{url}: refused after {took:?}");
    }
    for url in ["not a url", "mysql://u:p@127.0.0.1:notaport/db"] {
        let e = Client::connect(url).await.expect_err("not a valid URL");
        assert!(matches!(e, Error::InvalidArgument(_)), "{url}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_errors_and_debug_output() {
    let (db, client) = setup().await;
    let wrong = with_password(&db.url, SECRET);
    let e = Client::connect(&wrong)
        .await
        .expect_err("the password is wrong");
    let shown = format!("{e} {e:?}");
    assert!(
        e.db_code() == Some(1045),
        "expected access denied, got {shown}"
    );
    assert!(!shown.contains(SECRET), "the password is in `{shown}`");

    // A URL sqlx cannot parse must not be echoed either.
    let bad = format!("mysql://queue:{SECRET}@127.0.0.1:99999/queue");
    let e = Client::connect(&bad)
        .await
        .expect_err("the port is invalid");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(SECRET), "the password is in `{shown}`");

    let password = db
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("the test URL has a password");
    let options = ClientOptions::new().acquire_timeout(Duration::from_secs(5));
    let client2 = Client::connect_with(&db.url, options.clone())
        .await
        .unwrap();
    for shown in [
        format!("{client:?}"),
        format!("{client2:?}"),
        format!("{:?}", client.pool()),
        format!("{options:?}"),
    ] {
        assert!(
            !shown.contains(&format!(":{password}@")) && !shown.contains("password"),
            "the password is in `{shown}`"
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_timeout_is_the_users() {
    let (db, client) = setup().await;
    let options = ClientOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300));
    let client2 = Client::connect_with(&db.url, options).await.unwrap();
    assert_eq!(client2.pool().options().get_max_connections(), 1);
    // The one connection is taken: the next acquire waits 300 ms, not 10 s.
    let held = client2.pool().acquire().await.unwrap();
    let (result, took) = timed(client2.stats()).await;
    let e = result.expect_err("the pool's only connection is held");
    assert!(
        matches!(e, Error::Database(sqlx::Error::PoolTimedOut)),
        "{e:?}"
    );
    assert!(took < FAST, "timed out after {took:?}");
    drop(held);
    client2.stats().await.unwrap();
    drop(client);
    db.drop_db().await;
}

/// The CA of the test server's TLS certificate: `QUEUE_DB_CA`, or the one
/// `scripts/db.sh ca` prints.
#[cfg(feature = "tls")]
fn test_ca() -> String {
    if let Ok(ca) = std::env::var("QUEUE_DB_CA")
        && !ca.trim().is_empty()
    {
        return ca.trim().to_owned();
    }
    let out = std::process::Command::new("bash")
        .arg(queue_tests::db_script())
        .arg("ca")
        .output()
        .expect("run scripts/db.sh ca");
    assert!(
        out.status.success(),
        "scripts/db.sh ca failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `url` with `params` added to its query string.
#[cfg(feature = "tls")]
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Connects with `params` and returns the session's TLS cipher; panics
/// with what to do when the server offers no TLS or another CA signed it.
#[cfg(feature = "tls")]
async fn tls_cipher(url: &str, params: &str) -> String {
    let client = Client::connect(&with_params(url, params))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect with `{params}` to {}: {e}\n\
                 The TLS tests need a server with TLS whose certificate (for 127.0.0.1) \
                 is signed by the CA at `scripts/db.sh ca` (or $QUEUE_DB_CA): the server \
                 that scripts/db.sh starts is; one an older db.sh started is not \
                 (run scripts/db.sh restart), nor is a DATABASE_URL naming another server.",
                queue_tests::redact_url(url)
            )
        });
    let row: (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(client.pool())
        .await
        .unwrap();
    row.1
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_identity_with_the_test_ca() {
    let (db, _client) = setup().await;
    let params = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", test_ca());
    let cipher = tls_cipher(&db.url, &params).await;
    assert!(!cipher.is_empty(), "no TLS cipher with `{params}`");
    db.drop_db().await;
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_encrypts_the_session() {
    let (db, _client) = setup().await;
    let cipher = tls_cipher(&db.url, "ssl-mode=REQUIRED").await;
    assert!(!cipher.is_empty(), "no TLS cipher with ssl-mode=REQUIRED");
    db.drop_db().await;
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_ca_rejects_a_server_signed_by_an_unknown_ca() {
    let (db, _client) = setup().await;
    // Without `ssl-ca`, only the public web roots are trusted, and the test
    // server's CA is none of them: the certificate is really checked.
    let e = Client::connect(&with_params(&db.url, "ssl-mode=VERIFY_CA"))
        .await
        .expect_err("the test CA is not a trusted root");
    let text = e.to_string();
    assert!(
        text.contains("certificate") && text.contains("UnknownIssuer"),
        "expected the certificate to be rejected, got {e:?}"
    );
    db.drop_db().await;
}

#[cfg(not(feature = "tls"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_urls_need_the_tls_feature() {
    let e = Client::connect("mysql://u:p@127.0.0.1:1/db?ssl-mode=REQUIRED")
        .await
        .expect_err("built without TLS");
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("`tls` feature")),
        "{e:?}"
    );
}
