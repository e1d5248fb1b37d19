-- queue-runtime schema, version 5: cluster-wide concurrency and rate limits.
--
-- A job of a task with `#[task(concurrency = N)]` stores its concurrency
-- key (the task's name, or the name, U+001F and the key that
-- `concurrency_key` took from its payload); a job of a task with `rate`
-- its rate key, formed the same way. `slot` is 1 while the job holds one
-- unit of its key's semaphore: from the claim that started it (or the
-- release that handed it a freed slot) to the end of its attempt.
-- `rate_window` is the start of the rate window a job deferred by its rate
-- limit holds a reserved start in.
--
-- `queue_ready.limited` is 1 for a claim-index row whose job has a limit
-- to check at claim (a rate key, or a concurrency key without a slot):
-- the claim reads the job's keys only for those rows, so jobs of tasks
-- without limits cost nothing more.
--
-- `queue_blocked` holds the jobs whose concurrency limit was full when a
-- claim took them (state 4, blocked), by key, priority and id: a job that
-- ends hands its slot to the first of them. `queue_semaphores` counts the
-- slots held per key; `queue_rates` counts the starts of the current (or
-- latest reserved) window per key. docs/flow-control.md tells the whole
-- protocol.
--
-- One change per statement (migrate.rs skips each whose column exists);
-- adding a column at the end is instant on MariaDB 10.11 and MySQL 8.
ALTER TABLE queue_jobs ADD COLUMN concurrency_key VARBINARY(1788) NULL;

ALTER TABLE queue_jobs ADD COLUMN rate_key VARBINARY(1788) NULL;

ALTER TABLE queue_jobs ADD COLUMN slot TINYINT UNSIGNED NOT NULL DEFAULT 0;

ALTER TABLE queue_jobs ADD COLUMN rate_window DATETIME(6) NULL;

ALTER TABLE queue_ready ADD COLUMN limited TINYINT UNSIGNED NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS queue_blocked (
    concurrency_key VARBINARY(1788)  NOT NULL,
    priority        TINYINT UNSIGNED NOT NULL,
    job_id          BIGINT UNSIGNED  NOT NULL,
    PRIMARY KEY (concurrency_key, priority, job_id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS queue_semaphores (
    concurrency_key VARBINARY(1788) NOT NULL,
    running         INT UNSIGNED    NOT NULL,
    lim             INT UNSIGNED    NOT NULL,
    updated_at      DATETIME(6)     NOT NULL,
    PRIMARY KEY (concurrency_key)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS queue_rates (
    rate_key     VARBINARY(1788)  NOT NULL,
    window_start DATETIME(6)      NOT NULL,
    starts       INT UNSIGNED     NOT NULL,
    lim          INT UNSIGNED     NOT NULL,
    window_ms    BIGINT UNSIGNED  NOT NULL,
    updated_at   DATETIME(6)      NOT NULL,
    PRIMARY KEY (rate_key)
) ENGINE = InnoDB;
