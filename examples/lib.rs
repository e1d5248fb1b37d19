//! Shared helpers for the examples: finding the database.

/// The database URL for an example: `DATABASE_URL`, or the private MariaDB
/// that `scripts/db.sh` starts.
pub fn database_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/db.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("ensure")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/db.sh could not start a MariaDB server; set DATABASE_URL to use another one"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The URL of a fresh database named `name` on the examples' server: it is
/// dropped and created again, so each run of an example starts empty.
///
/// # Errors
/// If the server cannot be reached or the database cannot be created.
pub async fn demo_database(name: &str) -> Result<String, sqlx::Error> {
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "a plain database name"
    );
    let url = database_url();
    let (base, _) = url.rsplit_once('/').unwrap_or((&url, ""));
    let mut conn =
        <sqlx::MySqlConnection as sqlx::Connection>::connect(&format!("{base}/")).await?;
    // Safe: `name` is checked above to be a plain identifier.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut conn)
        .await?;
    Ok(format!("{base}/{name}"))
}

/// The URL of the database named `name` on the examples' server, created
/// if it does not exist but otherwise kept as it is (the dashboard reads the
/// demo's database while the demo fills it).
///
/// # Errors
/// If the server cannot be reached or the database cannot be created.
pub async fn existing_database(name: &str) -> Result<String, sqlx::Error> {
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "a plain database name"
    );
    let url = database_url();
    let (base, _) = url.rsplit_once('/').unwrap_or((&url, ""));
    let mut conn =
        <sqlx::MySqlConnection as sqlx::Connection>::connect(&format!("{base}/")).await?;
    // Safe: `name` is checked above to be a plain identifier.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE IF NOT EXISTS `{name}`"
    )))
    .execute(&mut conn)
    .await?;
    Ok(format!("{base}/{name}"))
}
