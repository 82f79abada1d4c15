-- rsp store on PostgreSQL, schema version 3: ../0003_server_id_bindings.sql.
CREATE TABLE server_id_bindings (
    server_id  BIGINT NOT NULL PRIMARY KEY CHECK (server_id BETWEEN 1 AND 4294967295),
    spiffe_id  TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
