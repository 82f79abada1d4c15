-- rsp store, schema version 2: per-identity default namespaces (ARCHITECTURE.md §3).
-- An ASAP request without the Namespace parameter (0x8100, spec §12.9) goes to the
-- namespace of the most specific rule matching its identity (trust::default_namespace);
-- with none, to `default`. A namespace that a rule names cannot be deleted (no ON DELETE:
-- the registrar would otherwise keep sending requests to a namespace that is gone).
CREATE TABLE default_namespaces (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    identity   TEXT    NOT NULL UNIQUE,
    namespace  TEXT    NOT NULL REFERENCES namespaces (name),
    created_ms INTEGER NOT NULL
) STRICT;
