-- rsp store, schema version 3: ENRP Server IDs bound for good to the identity that first
-- proved them (issue 16, docs/ENRP-TRUST.md §4). A registrar refuses any other identity
-- claiming a bound Server ID, also after a restart and while the first is dead. Rows are
-- never updated; an operator who renames a registrar deletes its row by hand.
CREATE TABLE server_id_bindings (
    server_id  INTEGER NOT NULL PRIMARY KEY CHECK (server_id BETWEEN 1 AND 4294967295),
    spiffe_id  TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
