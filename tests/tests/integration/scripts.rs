//! `scripts/db.sh` recognises its own server when `CARGO_TARGET_DIR` points
//! elsewhere (a newcomer who exported it was told the port was "taken by
//! another process", and `scripts/demo` then advised installing MariaDB).

use std::process::Command;

use sqlx::Row;

#[tokio::test]
async fn db_script_uses_its_own_server_started_under_another_target_dir() {
    let (db, client) = crate::setup().await;
    let row = sqlx::query("SELECT @@socket, @@port")
        .fetch_one(client.pool())
        .await
        .unwrap();
    let socket: String = row.get(0);
    let port: u32 = row.get(1);
    db.drop_db().await;
    if !socket.ends_with("/mariadb/sock") {
        // DATABASE_URL names a server that scripts/db.sh did not start:
        // there is no private server to recognise.
        eprintln!("skipped: the server ({socket}) is not a private server of scripts/db.sh");
        return;
    }
    let elsewhere = std::env::temp_dir().join(format!("queue-db-sh-{}", std::process::id()));
    let run = |cmd: &str| {
        Command::new("bash")
            .arg(queue_tests::db_script())
            .arg(cmd)
            .env("CARGO_TARGET_DIR", &elsewhere)
            .env("QUEUE_DB_PORT", port.to_string())
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let ensure = run("ensure");
    let stderr = String::from_utf8_lossy(&ensure.stderr);
    assert!(ensure.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&ensure.stdout).trim(),
        format!("mysql://queue:queue@127.0.0.1:{port}/queue")
    );
    let dir = socket.trim_end_matches("/sock");
    assert!(
        stderr.contains(&format!("using the private server under {dir}")),
        "{stderr}"
    );
    // `status` here does not claim it (a `stop` here would not stop it).
    let status = run("status");
    assert!(!status.status.success());
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .contains(&format!("port {port} is the private server under {dir}")),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let _ = std::fs::remove_dir_all(&elsewhere);
}
