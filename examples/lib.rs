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
