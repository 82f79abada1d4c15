-- rsp store, schema version 6 (PostgreSQL): one audit hash chain per registrar; the same
-- meaning as migrations/0006_audit_chains.sql, which explains it. ADD COLUMN with a
-- constant default rewrites no row (PostgreSQL 11+) and fires no trigger.
ALTER TABLE audit_events ADD COLUMN chain TEXT NOT NULL DEFAULT ''
    CHECK (chain = '' OR (chain LIKE 'spiffe://%' AND length(chain) <= 2048));
ALTER TABLE audit_archives ADD COLUMN chain TEXT NOT NULL DEFAULT ''
    CHECK (chain = '' OR (chain LIKE 'spiffe://%' AND length(chain) <= 2048));
-- A registrar's chain head is its newest row: with N registrars appending to one table,
-- finding it must not walk back over the others' rows (the writer reads it per commit).
CREATE INDEX audit_events_chain_id ON audit_events (chain, id);

CREATE OR REPLACE FUNCTION rsp_audit_archives_continue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.chain = '' AND NEW.first_id != coalesce(
           (SELECT max(last_id) FROM audit_archives WHERE chain = ''), 0) + 1)
       OR NEW.first_id <= coalesce(
           (SELECT max(last_id) FROM audit_archives WHERE chain = NEW.chain), 0)
       OR NEW.first_prev_hash != coalesce(
           (SELECT last_hash FROM audit_archives WHERE chain = NEW.chain
            ORDER BY last_id DESC LIMIT 1), NEW.first_prev_hash) THEN
        RAISE EXCEPTION 'audit archive must start after the previous one';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_events
                   WHERE id = NEW.first_id AND chain = NEW.chain
                     AND prev_hash = NEW.first_prev_hash)
       OR NOT EXISTS (SELECT 1 FROM audit_events
                      WHERE id = NEW.last_id AND chain = NEW.chain
                        AND hash = NEW.last_hash) THEN
        RAISE EXCEPTION 'audit archive does not match the chain';
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION rsp_audit_events_delete_archived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id > coalesce((SELECT max(last_id) FROM audit_archives WHERE chain = OLD.chain), 0) THEN
        RAISE EXCEPTION 'audit_events is append-only';
    END IF;
    RETURN OLD;
END;
$$;
