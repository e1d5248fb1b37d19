//! A database of its own per test, on the server of `DATABASE_URL` (or
//! the private one of `scripts/db.sh`), for this crate's tests.

#![allow(dead_code)]

use std::process::Command;

use sqlx::Connection;

/// The server's URL: `DATABASE_URL`, else the private server of
/// `scripts/db.sh` (started if needed).
pub(crate) fn server_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.trim().is_empty()
    {
        return url.trim().to_owned();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new("bash")
        .arg(root.join("scripts/db.sh"))
        .arg("ensure")
        .current_dir(&root)
        .output()
        .expect("run scripts/db.sh");
    assert!(
        out.status.success(),
        "set DATABASE_URL or let scripts/db.sh start a server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `url` naming `database` instead of its own.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let query = rest[end..].find('?').map_or("", |i| &rest[end + i..]);
    format!("{scheme}://{}/{database}{query}", &rest[..end])
}

/// A fresh database (dropped by [`drop_database`]) and its URL.
pub(crate) async fn database() -> (String, String) {
    let server = server_url();
    let name = format!("qt_{:08x}", fastrand::u32(..));
    let mut conn = sqlx::MySqlConnection::connect(&with_database(&server, ""))
        .await
        .expect("connect to the test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut conn)
        .await
        .unwrap();
    (name.clone(), with_database(&server, &name))
}

pub(crate) async fn drop_database(name: &str) {
    let mut conn = sqlx::MySqlConnection::connect(&with_database(&server_url(), ""))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .execute(&mut conn)
        .await
        .unwrap();
}
