//! Connecting a [`Client`](crate::Client): the URL's checks, the pool's
//! options, and connect errors that name the server (never the password).
//!
//! A server that refuses connections, or a host that does not resolve,
//! fails [`Client::connect`](crate::Client::connect) at once: its first
//! connection is made outside the pool, which sqlx 0.9 would retry until
//! the acquire timeout. Every call of an existing client whose server went
//! away fails at once too, but only in builds with the workspace's patched
//! sqlx-core (`vendor/README.md`): `[patch]` applies to the workspace being
//! built, so a host application elsewhere needs the same entry, or its
//! calls wait the acquire timeout and say "pool timed out". A server that
//! accepts connections but does not answer takes the acquire timeout,
//! which [`ClientOptions`] sets.

use std::io;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{
    MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlSslMode,
};
use sqlx::{Connection, Executor};

use crate::error::{Error, Result};

/// How [`Client::connect_with`](crate::Client::connect_with) builds its
/// pool. [`Client::connect`](crate::Client::connect) uses the defaults.
///
/// ```
/// use std::time::Duration;
/// use queue_runtime::ClientOptions;
///
/// let options = ClientOptions::new()
///     .max_connections(50)
///     .acquire_timeout(Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    max_connections: u32,
    acquire_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl ClientOptions {
    /// The defaults: up to 20 connections, a 10-s acquire timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most connections the pool opens (default 20; at least 1). The
    /// runtime's own statements share them with the application's calls.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a call waits for a connection (default 10 s): for a free
    /// one when all are in use, or for a new one from a server that
    /// accepts connections but does not answer. A refused connection or an
    /// unresolvable host fails at once, whatever this says.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

/// The pool of a new client: `url` checked and parsed, one connection made
/// and closed (so that a server that cannot be reached fails here, at
/// once), then the pool connected, each connection's time zone set to UTC.
pub(crate) async fn connect_pool(url: &str, options: &ClientOptions) -> Result<MySqlPool> {
    connect_pool_with(parse_url(url)?, options).await
}

/// [`connect_pool`] with sqlx's connect options.
pub(crate) async fn connect_pool_with(
    connect_options: MySqlConnectOptions,
    options: &ClientOptions,
) -> Result<MySqlPool> {
    let server = server_name(&connect_options);
    // A first connection outside the pool fails at once with the cause,
    // patched sqlx-core or not; then the pool makes its own.
    let probe = MySqlConnection::connect_with(&connect_options)
        .await
        .map_err(|e| Error::Database(naming_server(e, &server)))?;
    let _ = probe.close().await;
    MySqlPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(crate::store::SESSION_SETUP).await?;
                Ok(())
            })
        })
        .connect_with(connect_options)
        .await
        .map_err(|e| Error::Database(naming_server(e, &server)))
}

/// `url` as sqlx's connect options, or [`Error::InvalidArgument`] for
/// another database's URL, a URL that does not parse, or one that requires
/// TLS in a build without it. Messages never quote the URL (it holds the
/// password).
pub(crate) fn parse_url(url: &str) -> Result<MySqlConnectOptions> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(Error::InvalidArgument(
            "the database URL has no scheme; expected mysql://user:password@host:port/database"
                .to_owned(),
        ));
    };
    if !scheme.eq_ignore_ascii_case("mysql") && !scheme.eq_ignore_ascii_case("mariadb") {
        return Err(Error::InvalidArgument(format!(
            "unsupported database URL scheme `{scheme}`: the queue runtime needs MySQL or MariaDB \
             (mysql://user:password@host:port/database)"
        )));
    }
    let options = MySqlConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidArgument(format!("invalid database URL: {e}")))?;
    let requires_tls = matches!(
        options.get_ssl_mode(),
        MySqlSslMode::Required | MySqlSslMode::VerifyCa | MySqlSslMode::VerifyIdentity
    );
    if requires_tls && !cfg!(feature = "tls") {
        return Err(Error::InvalidArgument(format!(
            "the database URL requires TLS (ssl-mode={:?}) but this build has none: \
             enable queue-runtime's `tls` feature",
            options.get_ssl_mode()
        )));
    }
    Ok(options)
}

/// Where `options` connect, for messages: `host:port` or the socket path.
fn server_name(options: &MySqlConnectOptions) -> String {
    match options.get_socket() {
        Some(path) => path.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// `e` with the server named, if it is an I/O error (refused, unresolvable
/// host, unreachable network). The kind stays, so the error still reads
/// as a connection error (`is_connection_error`).
fn naming_server(e: sqlx::Error, server: &str) -> sqlx::Error {
    match e {
        sqlx::Error::Io(io) => sqlx::Error::Io(io::Error::new(
            io.kind(),
            format!("cannot connect to {server}: {io}"),
        )),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(url: &str) -> String {
        match parse_url(url) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{url}: expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn other_schemes_are_refused_without_quoting_the_url() {
        for url in [
            "postgres://u:hunter2@h/db",
            "postgresql://u:hunter2@h/db",
            "sqlite://hunter2.db",
            "u:hunter2@h/db",
        ] {
            let m = invalid(url);
            assert!(m.contains("mysql://"), "{url}: {m}");
            assert!(!m.contains("hunter2"), "{url}: {m}");
        }
    }

    #[test]
    fn mysql_and_mariadb_schemes_parse() {
        for url in ["mysql://u:p@h:3307/db", "MariaDB://u:p@h:3307/db"] {
            let options = parse_url(url).unwrap();
            assert_eq!(server_name(&options), "h:3307");
        }
    }

    #[test]
    fn an_unparsable_url_is_an_invalid_argument_without_the_password() {
        let m = invalid("mysql://u:hunter2@h:99999/db");
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn tls_urls_need_the_feature() {
        let result = parse_url("mysql://u:p@h/db?ssl-mode=VERIFY_IDENTITY");
        if cfg!(feature = "tls") {
            assert!(result.is_ok(), "{result:?}");
        } else {
            let m = invalid("mysql://u:p@h/db?ssl-mode=VERIFY_IDENTITY");
            assert!(m.contains("`tls` feature"), "{m}");
        }
        assert!(parse_url("mysql://u:p@h/db?ssl-mode=PREFERRED").is_ok());
    }

    #[test]
    fn io_errors_name_the_server_and_keep_their_kind() {
        let refused = sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let named = naming_server(refused, "127.0.0.1:3306");
        assert!(crate::error::is_connection_error(&named));
        let sqlx::Error::Io(io) = &named else {
            panic!("{named:?}")
        };
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            named
                .to_string()
                .contains("cannot connect to 127.0.0.1:3306")
        );
    }
}
