-- queue-runtime schema, version 1.
--
-- `queue_jobs` holds every job that is not finished: its payload and
-- bookkeeping. A job's state is one of 0 ready, 1 scheduled, 2 running,
-- 3 dead; each state but ready has its own nullable time column, indexed,
-- so each background duty scans only the rows that concern it
-- (NULL keys sort first and are never in the scanned range).
--
-- `queue_ready` is the claim index: one narrow row per ready job, clustered
-- on (queue, priority, seq). `seq` grows with every row that enters, so a
-- worker can resume *after* the last row it claimed instead of rescanning
-- the delete-marked rows that earlier claims left at the head of the index
-- (docs/architecture.md explains why).
--
-- Every statement is `CREATE TABLE IF NOT EXISTS`: safe to run again after a
-- process died before the migration's row in queue_schema_migrations.
CREATE TABLE IF NOT EXISTS queue_jobs (
    id               BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
    task             VARCHAR(255)     NOT NULL,
    queue            VARCHAR(64)      NOT NULL,
    priority         TINYINT UNSIGNED NOT NULL,
    state            TINYINT UNSIGNED NOT NULL,
    payload          LONGTEXT         NOT NULL,
    attempts         INT UNSIGNED     NOT NULL DEFAULT 0,
    max_attempts     INT UNSIGNED     NOT NULL,
    deadline_ms      BIGINT UNSIGNED  NULL,
    run_at           DATETIME(6)      NOT NULL,
    scheduled_at     DATETIME(6)      NULL,
    lease_expires_at DATETIME(6)      NULL,
    lease_owner      VARCHAR(64)      NULL,
    dead_at          DATETIME(6)      NULL,
    last_error       TEXT             NULL,
    created_at       DATETIME(6)      NOT NULL,
    updated_at       DATETIME(6)      NOT NULL,
    PRIMARY KEY (id),
    KEY queue_jobs_scheduled (scheduled_at),
    KEY queue_jobs_lease (lease_expires_at),
    KEY queue_jobs_dead (dead_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS queue_ready (
    queue    VARCHAR(64)      NOT NULL,
    priority TINYINT UNSIGNED NOT NULL,
    seq      BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
    job_id   BIGINT UNSIGNED  NOT NULL,
    PRIMARY KEY (queue, priority, seq),
    KEY queue_ready_seq (seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per recurring task: the last tick that fired. A tick fires by
-- moving `last_tick` forward with a conditional UPDATE in the same
-- transaction that enqueues its job, so each tick fires once cluster-wide.
CREATE TABLE IF NOT EXISTS queue_cron (
    task       VARCHAR(255) NOT NULL,
    expression VARCHAR(255) NOT NULL,
    timezone   VARCHAR(64)  NOT NULL,
    last_tick  DATETIME(6)  NOT NULL,
    next_tick  DATETIME(6)  NULL,
    updated_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (task)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
