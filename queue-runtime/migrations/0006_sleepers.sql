-- queue-runtime schema, version 6: the sleeper registry, for wake-ups
-- across processes.
--
-- An idle runtime parks one connection of its own in `SELECT SLEEP(n)` and
-- registers that connection's id here, one row per queue it serves. An
-- enqueue that commits a ready job reads the rows of the job's queue in the
-- same round trip as its COMMIT and ends each sleep with `KILL QUERY
-- <conn_id>` (allowed on connections of the same user; others need
-- CONNECTION ADMIN or SUPER). `gen` changes with every registration, so a
-- process kills each sleep once; `db_user` is the sleeper's CURRENT_USER(),
-- so an enqueuer refused once kills only its own user's sleepers; rows past
-- `expires_at` (a sleeper that died) are ignored. docs/architecture.md,
-- "Wake-ups across processes", tells the protocol.
CREATE TABLE IF NOT EXISTS queue_sleepers (
    queue      VARCHAR(64)     NOT NULL,
    conn_id    BIGINT UNSIGNED NOT NULL,
    gen        BIGINT UNSIGNED NOT NULL,
    db_user    VARCHAR(400)    NOT NULL,
    owner      VARCHAR(64)     NOT NULL,
    expires_at DATETIME(6)     NOT NULL,
    PRIMARY KEY (queue, conn_id),
    KEY queue_sleepers_conn (conn_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
