-- rsp store, schema version 7: a revocation is permanent (docs/STORE.md, "Revocations
-- are permanent"). No API or command lifts one, and registrars apply revocations as rows
-- appear (at start, and in a fleet through the change feed): a row edited or deleted
-- in the database would leave every running registrar still denying what the store no
-- longer says, until each restarts. So the database refuses both, as it does for the
-- audit log.
CREATE TRIGGER revocations_no_update BEFORE UPDATE ON revocations
BEGIN
    SELECT RAISE(ABORT, 'revocations is append-only');
END;
CREATE TRIGGER revocations_no_delete BEFORE DELETE ON revocations
BEGIN
    SELECT RAISE(ABORT, 'revocations is append-only');
END;
