-- rsp store, schema version 1 (ARCHITECTURE.md §6; crates/trust/src/db, crates/trust/src/audit).
--
-- Conventions: times are unix milliseconds (INTEGER); pool handles, hashes and patterns that
-- may hold arbitrary bytes are BLOBs; tables are STRICT so a wrong type is an error, not a
-- silent conversion. The same statements are meant to run on PostgreSQL later (fleet mode),
-- so nothing here depends on SQLite-only behaviour except STRICT and the triggers.

-- Independent handlespaces (spec §12.9: 1-63 bytes of a-z 0-9 - .).
CREATE TABLE namespaces (
    name       TEXT    NOT NULL PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    created_ms INTEGER NOT NULL
) STRICT;

-- Pools declared by an operator: limits and policy. Pools that are only registered into
-- live in the in-memory handlespace and have no row here.
CREATE TABLE pools (
    namespace  TEXT    NOT NULL REFERENCES namespaces (name) ON DELETE CASCADE,
    handle     BLOB    NOT NULL CHECK (length(handle) BETWEEN 1 AND 32),
    -- Spec policy type (RFC 5356 numbering); NULL: the first registration decides.
    policy     INTEGER CHECK (policy IS NULL OR policy BETWEEN 0 AND 4294967295),
    -- Maximum number of pool elements; NULL: the registrar-wide limit.
    max_pes    INTEGER CHECK (max_pes IS NULL OR max_pes > 0),
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, handle)
) STRICT;

-- Trust domains: the local one (exactly one row with is_local = 1) and federated ones.
CREATE TABLE trust_domains (
    name       TEXT    NOT NULL PRIMARY KEY,
    is_local   INTEGER NOT NULL CHECK (is_local IN (0, 1)),
    roots_pem  TEXT    NOT NULL,
    crls_pem   TEXT,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX trust_domains_one_local ON trust_domains (is_local) WHERE is_local = 1;

-- Grants (ARCHITECTURE.md §3): identity pattern, namespace pattern, pool pattern, actions.
CREATE TABLE grants (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    identity   TEXT    NOT NULL,
    namespace  TEXT    NOT NULL,
    pools      BLOB    NOT NULL CHECK (length(pools) BETWEEN 1 AND 256),
    -- Comma-separated action names in Action::ALL order, e.g. 'register,resolve'.
    actions    TEXT    NOT NULL CHECK (length(actions) > 0),
    created_ms INTEGER NOT NULL,
    UNIQUE (identity, namespace, pools)
) STRICT;

-- Revocations: a certificate serial of a trust domain, a SPIFFE ID, or a whole trust domain.
CREATE TABLE revocations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT    NOT NULL CHECK (kind IN ('serial', 'spiffe_id', 'trust_domain')),
    -- The serial's or identity's trust domain; for kind 'trust_domain' the domain itself.
    trust_domain TEXT    NOT NULL,
    -- Serial in lowercase hex, the SPIFFE ID, or the trust domain.
    value        TEXT    NOT NULL,
    reason       TEXT,
    created_ms   INTEGER NOT NULL,
    UNIQUE (kind, trust_domain, value)
) STRICT;

-- Admin API bearer tokens `rsp_<id>_<secret>`: only the argon2id hash of the secret is kept.
CREATE TABLE admin_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
    hash       TEXT    NOT NULL CHECK (hash LIKE '$argon2id$%'),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
) STRICT;

-- ENRP peers (filled by the peering issue): configured addresses and what was learnt.
CREATE TABLE peers (
    address      TEXT    NOT NULL PRIMARY KEY,
    spiffe_id    TEXT,
    server_id    INTEGER CHECK (server_id IS NULL OR server_id BETWEEN 1 AND 4294967295),
    created_ms   INTEGER NOT NULL,
    last_seen_ms INTEGER
) STRICT;

-- The audit log: append-only, hash-chained. Row n carries prev_hash = hash of row n-1
-- (32 zero bytes for row 1) and hash = SHA-256(prev_hash || canonical encoding of row n);
-- ids are contiguous from 1. UNIQUE (prev_hash) makes a fork impossible even if two writers
-- race (and so hash is unique too in an intact chain). The triggers stop accidental UPDATE/DELETE by the application; deliberate tampering
-- with the file is what the chain detects (trust::audit::verify).
CREATE TABLE audit_events (
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
    prev_hash BLOB    NOT NULL UNIQUE CHECK (length(prev_hash) = 32),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;
-- No secondary index: each costs every insert a b-tree update, and the filtered queries
-- of trust::audit::query walk the primary key from the cursor. Add indexes together with
-- queries that use them (and measure the insert cost).

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
