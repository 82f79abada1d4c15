-- rsp store on PostgreSQL, schema version 7: a revocation is permanent (see the SQLite
-- file of the same version for why). rsp_refuse_append_only() is version 1's.
CREATE TRIGGER revocations_no_update BEFORE UPDATE ON revocations
    FOR EACH ROW EXECUTE FUNCTION rsp_refuse_append_only();
CREATE TRIGGER revocations_no_delete BEFORE DELETE ON revocations
    FOR EACH ROW EXECUTE FUNCTION rsp_refuse_append_only();
-- TRUNCATE fires no row trigger.
CREATE TRIGGER revocations_no_truncate BEFORE TRUNCATE ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_refuse_append_only();
