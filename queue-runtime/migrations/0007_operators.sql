-- queue-runtime schema, version 7: what operators see.
--
-- `queue_runtimes` is the registry of live runtimes: one row per runtime,
-- keyed by its lease owner id (`rt-<hex>`, as stored in
-- `queue_jobs.lease_owner`), written at `Runtime::start`, refreshed every
-- 10 s by the runtime's rescuer (a duty it runs anyway), deleted at a clean
-- shutdown. A row whose `heartbeat_at` is minutes old is a runtime that
-- died: `Client::runtimes` ignores it and the next runtime's hourly pass
-- deletes it.
CREATE TABLE IF NOT EXISTS queue_runtimes (
    owner        VARCHAR(64)  NOT NULL,
    host         VARCHAR(255) NOT NULL,
    pid          INT UNSIGNED NOT NULL,
    queues       TEXT         NOT NULL,
    concurrency  INT UNSIGNED NOT NULL,
    in_flight    INT UNSIGNED NOT NULL DEFAULT 0,
    started_at   DATETIME(6)  NOT NULL,
    heartbeat_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (owner),
    KEY queue_runtimes_heartbeat (heartbeat_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Per-minute counts of attempts, per queue and task: started (at claim),
-- succeeded, failed (and retried later) and dead. Each runtime counts in
-- memory and adds its counts with `INSERT … ON DUPLICATE KEY UPDATE` in the
-- acknowledgement transaction its acker writes anyway (or alone, at most
-- once a second): one statement per batch, none per job. Rows older than a
-- day are deleted by the runtimes' hourly pass.
CREATE TABLE IF NOT EXISTS queue_throughput (
    minute    DATETIME        NOT NULL,
    queue     VARCHAR(64)     NOT NULL,
    task      VARCHAR(255)    NOT NULL,
    started   BIGINT UNSIGNED NOT NULL DEFAULT 0,
    succeeded BIGINT UNSIGNED NOT NULL DEFAULT 0,
    failed    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    dead      BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue, task)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Every failed attempt's error, oldest first, as a JSON array of
-- `{"attempt": n, "at": "<RFC 3339>", "error": "<text>"}`: the last 20
-- attempts, each text cut at 2,000 characters (`last_error` keeps the
-- whole last one). Appended by the same UPDATE that records the retry or
-- the death; NULL for a job that never failed. Adding a column at the end
-- is instant on MariaDB 10.11 and MySQL 8.
ALTER TABLE queue_jobs ADD COLUMN errors MEDIUMTEXT NULL;
