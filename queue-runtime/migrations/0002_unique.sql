-- queue-runtime schema, version 2: unique jobs.
--
-- A job enqueued with a unique key is not enqueued again while a job of the
-- same task with that key is ready, scheduled or running: the enqueue
-- returns the pending job's id. The key is released when the job succeeds
-- or is cancelled (its row is deleted) and when it dies (the key is set to
-- NULL). The column holds the task's name (at most 255 characters), U+001F
-- and the key (at most 191), so one single-column index keeps keys apart
-- per task; rows without a key store NULL, which the unique index allows
-- any number of times and keeps small (measured: enqueue_many of 1,000,000
-- jobs ~10 % slower than without the index; ~17 % with a (task, key) index).
-- Version 3 makes the column compare byte for byte.
--
-- One change per statement: MySQL commits each DDL statement by itself, so
-- a process that dies between them leaves the column without its index.
-- migrate.rs skips each statement whose change is already there (the column
-- exists, the index exists), looked up in information_schema, since MySQL 8
-- has no `ADD COLUMN IF NOT EXISTS`.
ALTER TABLE queue_jobs ADD COLUMN unique_key VARCHAR(447) NULL AFTER task;

ALTER TABLE queue_jobs ADD UNIQUE KEY queue_jobs_unique (unique_key);
