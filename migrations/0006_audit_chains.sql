-- rsp store, schema version 6: one audit hash chain per registrar (issue 19 item 3,
-- docs/STORE.md "The audit log in a fleet"). Every record and every archive anchor
-- belongs to a chain: '' is the local chain (a store of one registrar: every SQLite store,
-- and every record written before this version), otherwise the appending registrar's
-- SPIFFE ID (a store shared by a fleet). Existing rows join the local chain unchanged
-- (their hashes do not cover the chain; records of a named chain hash it, crates/store
-- src/audit). ADD COLUMN with a constant default rewrites no row and fires no trigger,
-- so the append-only triggers stay in place.
--
-- prev_hash stays UNIQUE over the whole table, not only per chain: each named chain
-- starts from its own genesis hash (derived from its key), and hashes do not collide, so
-- two chains never share a prev_hash and a fork stays impossible within each one; keeping
-- the constraint spares a rebuild of the whole table.
ALTER TABLE audit_events ADD COLUMN chain TEXT NOT NULL DEFAULT ''
    CHECK (chain = '' OR (chain LIKE 'spiffe://%' AND length(chain) <= 2048));
ALTER TABLE audit_archives ADD COLUMN chain TEXT NOT NULL DEFAULT ''
    CHECK (chain = '' OR (chain LIKE 'spiffe://%' AND length(chain) <= 2048));
-- No (chain, id) index on SQLite: its store has only the local chain, whose head is the
-- last row (walking the primary key back finds it at once). PostgreSQL has one.

-- An anchor continues the previous one of its chain: on the local chain (contiguous ids)
-- it starts right after it, on a named chain (ids shared with other chains) after it,
-- and in both it chains from its last hash; it names rows of that chain with those
-- hashes, so an anchor cannot be made up to excuse deleting other rows.
DROP TRIGGER audit_archives_continue;
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

-- A row may be deleted only when an anchor of its own chain covers it.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.id > coalesce((SELECT max(last_id) FROM audit_archives WHERE chain = OLD.chain), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
