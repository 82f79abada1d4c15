-- rsp store, schema version 4: audit retention (issue 18 item 5, docs/SECURITY.md
-- "Audit retention"). `enrpd audit archive` moves a prefix of audit_events into a gzip'd
-- JSON Lines file and deletes it here; each archive leaves one anchor row, so that the
-- chain still verifies from the archived head (trust::audit::verify starts from the
-- latest anchor) and the archive files verify against the anchors.
CREATE TABLE audit_archives (
    -- The last archived row id; the next archive starts after it.
    last_id         INTEGER NOT NULL PRIMARY KEY CHECK (last_id > 0),
    first_id        INTEGER NOT NULL CHECK (first_id BETWEEN 1 AND last_id),
    -- prev_hash of row first_id: what the archive chains from.
    first_prev_hash BLOB    NOT NULL CHECK (length(first_prev_hash) = 32),
    -- hash of row last_id: what the first remaining row chains from.
    last_hash       BLOB    NOT NULL CHECK (length(last_hash) = 32),
    -- When the archive was made, unix ms.
    time_ms         INTEGER NOT NULL,
    -- The archive file as written (its path), and the SHA-256 of its bytes.
    file            TEXT    NOT NULL CHECK (length(file) BETWEEN 1 AND 4096),
    sha256          BLOB    NOT NULL CHECK (length(sha256) = 32)
) STRICT;

-- An anchor continues the previous one (or starts at row 1) and names rows that exist
-- with those hashes: an anchor cannot be made up to excuse deleting other rows.
CREATE TRIGGER audit_archives_continue BEFORE INSERT ON audit_archives
BEGIN
    SELECT RAISE(ABORT, 'audit archive must start after the previous one')
    WHERE NEW.first_id != coalesce((SELECT max(last_id) FROM audit_archives), 0) + 1;
    SELECT RAISE(ABORT, 'audit archive does not match the chain')
    WHERE NOT EXISTS (SELECT 1 FROM audit_events
                      WHERE id = NEW.first_id AND prev_hash = NEW.first_prev_hash)
       OR NOT EXISTS (SELECT 1 FROM audit_events
                      WHERE id = NEW.last_id AND hash = NEW.last_hash);
END;
CREATE TRIGGER audit_archives_no_update BEFORE UPDATE ON audit_archives
BEGIN
    SELECT RAISE(ABORT, 'audit_archives is append-only');
END;
CREATE TRIGGER audit_archives_no_delete BEFORE DELETE ON audit_archives
BEGIN
    SELECT RAISE(ABORT, 'audit_archives is append-only');
END;

-- audit_events stays append-only except for the archived prefix: a row may be deleted
-- only when an anchor covers it (every row up to the latest anchor is in a verified
-- archive). The archive writes the anchor together with the first rows' deletion and
-- deletes the rest in chunks right after; any other DELETE is refused as before.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.id > coalesce((SELECT max(last_id) FROM audit_archives), 0)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
