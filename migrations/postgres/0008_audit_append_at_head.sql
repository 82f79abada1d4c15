-- rsp store, schema version 8 (PostgreSQL): the audit chain's fork guard stays
-- `UNIQUE (prev_hash)` here (0001). SQLite's 0008 replaces that index by a trigger that
-- admits a row only at its chain's head, because the hash-keyed index cost SQLite most
-- of a registration's database work; PostgreSQL keeps the index in its buffer cache and
-- pays little for it, while the same trigger in PL/pgSQL cost it ~16 µs of CPU per record
-- (docs/BENCHMARKS.md, "an append-ordered fork guard"; docs/STORE.md "The fork guard").
-- This version only records that decision where an operator looking at the schema sees it.
COMMENT ON CONSTRAINT audit_events_prev_hash_key ON audit_events IS
    'the audit fork guard on PostgreSQL: no two records chain from one predecessor (schema 8 keeps it; SQLite uses the trigger audit_events_append_at_head instead)';
