-- queue-runtime schema, version 8: the Galera node each runtime claims
-- through (`wsrep_gcomm_uuid`; NULL off Galera), so that runtimes on
-- different nodes of a cluster claim disjoint lanes of the claim index
-- instead of racing for its head (docs/scaling.md, "Claim lanes").
ALTER TABLE queue_runtimes ADD COLUMN node VARCHAR(64) NULL;
