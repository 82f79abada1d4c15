-- rsp store on PostgreSQL, schema version 4: ../0004_audit_archives.sql (audit retention).
CREATE TABLE audit_archives (
    last_id         BIGINT NOT NULL PRIMARY KEY CHECK (last_id > 0),
    first_id        BIGINT NOT NULL CHECK (first_id BETWEEN 1 AND last_id),
    first_prev_hash BYTEA  NOT NULL CHECK (octet_length(first_prev_hash) = 32),
    last_hash       BYTEA  NOT NULL CHECK (octet_length(last_hash) = 32),
    time_ms         BIGINT NOT NULL,
    file            TEXT   NOT NULL CHECK (length(file) BETWEEN 1 AND 4096),
    sha256          BYTEA  NOT NULL CHECK (octet_length(sha256) = 32)
);

-- An anchor continues the previous one (or starts at row 1) and names rows that exist with
-- those hashes: an anchor cannot be made up to excuse deleting other rows.
CREATE FUNCTION rsp_audit_archives_continue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.first_id != coalesce((SELECT max(last_id) FROM audit_archives), 0) + 1 THEN
        RAISE EXCEPTION 'audit archive must start after the previous one';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM audit_events
                   WHERE id = NEW.first_id AND prev_hash = NEW.first_prev_hash)
       OR NOT EXISTS (SELECT 1 FROM audit_events
                      WHERE id = NEW.last_id AND hash = NEW.last_hash) THEN
        RAISE EXCEPTION 'audit archive does not match the chain';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_archives_continue BEFORE INSERT ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION rsp_audit_archives_continue();
CREATE TRIGGER audit_archives_no_update BEFORE UPDATE ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION rsp_refuse_append_only();
CREATE TRIGGER audit_archives_no_delete BEFORE DELETE ON audit_archives
    FOR EACH ROW EXECUTE FUNCTION rsp_refuse_append_only();
CREATE TRIGGER audit_archives_no_truncate BEFORE TRUNCATE ON audit_archives
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_refuse_append_only();

-- audit_events stays append-only except for the archived prefix: a row may be deleted only
-- when an anchor covers it.
CREATE FUNCTION rsp_audit_events_delete_archived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.id > coalesce((SELECT max(last_id) FROM audit_archives), 0) THEN
        RAISE EXCEPTION 'audit_events is append-only';
    END IF;
    RETURN OLD;
END;
$$;
DROP TRIGGER audit_events_no_delete ON audit_events;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION rsp_audit_events_delete_archived();
