-- rsp store, schema version 5: the shared control plane's change feed (docs/STORE.md, "The
-- shared control plane"). On PostgreSQL (migrations/postgres/0005_control_feed.sql) every
-- write to a control-plane table notifies the fleet's registrars at commit. A SQLite store
-- belongs to one registrar, which applies its own changes as it makes them: there is no
-- fleet to tell, so this version changes nothing here (it exists so that both backends
-- have the same versions).
SELECT 1;
