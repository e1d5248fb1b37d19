-- queue-runtime schema, version 4: paused queues.
--
-- One row per paused queue. While its row exists no runtime claims from the
-- queue: jobs are still enqueued (and scheduled ones still come due) but
-- wait, and jobs already running run to their end. Every runtime reads this
-- table once per poll interval, so a pause or resume reaches all of them
-- within one interval, and a restarted runtime finds the queue still paused.
CREATE TABLE IF NOT EXISTS queue_paused (
    queue     VARCHAR(64) NOT NULL,
    paused_at DATETIME(6) NOT NULL,
    PRIMARY KEY (queue)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
