-- rsp store, schema version 8: the audit chain's fork guard follows append order (issue
-- 20, docs/SECURITY.md "The audit log", docs/STORE.md "The fork guard").
--
-- Until now `UNIQUE (prev_hash)` refused a second row chaining from the same predecessor.
-- Its keys are hashes, so every record dirtied a random leaf of that index (~1.6 WAL pages
-- per record, most of a registration's SQLite cost). It is replaced by a BEFORE INSERT
-- trigger that is stricter and reads only rightmost b-tree entries: a new row must take
-- an id past every row and archive anchor, and its prev_hash must be the hash of its
-- chain's head (the chain's last row; with no live row, its latest anchor's last_hash;
-- for the local chain's first row, 32 zero bytes). So no fork, and no append anywhere but
-- at the head. SQLite has one writer at a time, so the head read inside the insert is
-- never stale.
--
-- SQLite cannot drop a UNIQUE column constraint: the table is rebuilt (the documented
-- ALTER TABLE procedure) with the same columns, checks and rows, ids and hashes copied
-- unchanged, then every trigger of audit_events is created again as 0001/0004/0006 left
-- it. audit_archives_continue (on audit_archives) names audit_events, and RENAME refuses
-- to run while a trigger names a missing table, so it is dropped and created again too.
DROP TRIGGER audit_archives_continue;

CREATE TABLE audit_events_v8 (
    id        INTEGER PRIMARY KEY,
    time_ms   INTEGER NOT NULL,
    actor     TEXT,
    serial    TEXT,
    remote    TEXT,
    namespace TEXT,
    pool      BLOB,
    pe_id     INTEGER,
    action    TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    detail    TEXT,
    prev_hash BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32),
    chain     TEXT    NOT NULL DEFAULT ''
        CHECK (chain = '' OR (chain LIKE 'spiffe://%' AND length(chain) <= 2048))
) STRICT;
INSERT INTO audit_events_v8 (id, time_ms, actor, serial, remote, namespace, pool, pe_id,
                             action, outcome, detail, prev_hash, hash, chain)
    SELECT id, time_ms, actor, serial, remote, namespace, pool, pe_id,
           action, outcome, detail, prev_hash, hash, chain
    FROM audit_events ORDER BY id;
-- Dropping the table drops its triggers (audit_events_no_update, _no_delete).
DROP TABLE audit_events;
ALTER TABLE audit_events_v8 RENAME TO audit_events;

-- As in 0001.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
-- As in 0006: a row may be deleted only when an anchor of its own chain covers it.
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.id > coalesce((SELECT max(last_id) FROM audit_archives WHERE chain = OLD.chain), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
-- As in 0006.
CREATE TRIGGER audit_archives_continue BEFORE INSERT ON audit_archives
BEGIN
    SELECT RAISE(ABORT, 'audit archive must start after the previous one')
    WHERE (NEW.chain = '' AND NEW.first_id != coalesce(
              (SELECT max(last_id) FROM audit_archives WHERE chain = ''), 0) + 1)
       OR NEW.first_id <= coalesce(
              (SELECT max(last_id) FROM audit_archives WHERE chain = NEW.chain), 0)
       OR NEW.first_prev_hash != coalesce(
              (SELECT last_hash FROM audit_archives WHERE chain = NEW.chain
               ORDER BY last_id DESC LIMIT 1), NEW.first_prev_hash);
    SELECT RAISE(ABORT, 'audit archive does not match the chain')
    WHERE NOT EXISTS (SELECT 1 FROM audit_events
                      WHERE id = NEW.first_id AND chain = NEW.chain
                        AND prev_hash = NEW.first_prev_hash)
       OR NOT EXISTS (SELECT 1 FROM audit_events
                      WHERE id = NEW.last_id AND chain = NEW.chain AND hash = NEW.last_hash);
END;

-- The fork guard. The head lookup walks the primary key back from the last row: at once
-- for the local chain, the only one a SQLite store holds (enrp::setup::audit_chain); a
-- registrar's chain (tests, or a store someone filled by hand) walks back over other
-- chains' rows. SQLite has no SHA-256, so a registrar's chain's first row is not checked
-- against its genesis here (verify checks it; PostgreSQL's trigger does too).
CREATE TRIGGER audit_events_append_at_head BEFORE INSERT ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit record must take an id past every record and archive')
    WHERE NEW.id <= coalesce((SELECT max(id) FROM audit_events), 0)
       OR NEW.id <= coalesce((SELECT max(last_id) FROM audit_archives), 0);
    SELECT RAISE(ABORT, 'audit record does not chain from the head of its chain')
    WHERE NEW.prev_hash IS NOT coalesce(
        (SELECT hash FROM audit_events WHERE chain = NEW.chain ORDER BY id DESC LIMIT 1),
        (SELECT last_hash FROM audit_archives WHERE chain = NEW.chain
         ORDER BY last_id DESC LIMIT 1),
        CASE WHEN NEW.chain = '' THEN zeroblob(32) ELSE NEW.prev_hash END);
END;
