-- rsp store, schema version 8 (PostgreSQL): the audit chain's fork guard follows append
-- order; the same meaning as migrations/0008_audit_append_at_head.sql, which explains it.
-- PostgreSQL drops the UNIQUE constraint in place (no rebuild; rows untouched).
ALTER TABLE audit_events DROP CONSTRAINT audit_events_prev_hash_key;

-- Under MVCC a read inside a trigger does not by itself serialise two inserters: two
-- transactions could both see the same head. So the trigger first takes the store's
-- write lock (db::WRITE_LOCK = 0x727370, re-entrant: rsp's writers hold it already from
-- Store::begin), then reads the head. In READ COMMITTED each query of a VOLATILE PL/pgSQL
-- function takes a fresh snapshot, so once the lock is held the head read sees every
-- committed row; a REPEATABLE READ or SERIALIZABLE snapshot could predate the lock, so
-- appends in those are refused (rsp appends only in READ COMMITTED).
-- The head lookups use the primary key and audit_events_chain_id (0006): rightmost
-- entries, no hash-keyed index.
-- The three reads are one query (each query of a PL/pgSQL function is an executor start:
-- a first version with one query per read cost PostgreSQL ~25 µs of CPU per record).
CREATE FUNCTION rsp_audit_events_append_at_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at RECORD;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit records are appended in READ COMMITTED transactions only';
    END IF;
    PERFORM pg_advisory_xact_lock(7500656);
    SELECT greatest((SELECT max(id) FROM audit_events),
                    (SELECT max(last_id) FROM audit_archives)) AS last_id,
           coalesce(
               (SELECT hash FROM audit_events WHERE chain = NEW.chain
                ORDER BY id DESC LIMIT 1),
               (SELECT last_hash FROM audit_archives WHERE chain = NEW.chain
                ORDER BY last_id DESC LIMIT 1),
               CASE WHEN NEW.chain = '' THEN decode(repeat('00', 32), 'hex')
                    -- store::audit::Chain::genesis
                    ELSE sha256('rsp-audit-genesis-v2'::bytea || '\x00'::bytea
                                || convert_to(NEW.chain, 'UTF8')) END) AS head
      INTO at;
    IF NEW.id <= coalesce(at.last_id, 0) THEN
        RAISE EXCEPTION 'audit record must take an id past every record and archive';
    END IF;
    IF NEW.prev_hash IS DISTINCT FROM at.head THEN
        RAISE EXCEPTION 'audit record does not chain from the head of its chain';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_events_append_at_head BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION rsp_audit_events_append_at_head();
