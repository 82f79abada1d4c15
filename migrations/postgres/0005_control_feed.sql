-- rsp store on PostgreSQL, schema version 5: the shared control plane's change feed
-- (docs/STORE.md, "The shared control plane"). Every statement that writes a control-plane
-- table notifies channel `rsp_control` with the table's name. PostgreSQL delivers a NOTIFY
-- when its transaction commits and never for one rolled back, and folds identical notices
-- of one transaction into one: a registrar hears of exactly what was committed, whichever
-- registrar, CLI or psql session wrote it, so no write path can forget to tell the fleet.
-- Left out: the audit tables (each registrar's own record), peers and server_id_bindings
-- (what one registrar learnt of its ENRP peers).
CREATE FUNCTION rsp_control_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rsp_control', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER trust_domains_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON trust_domains
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
CREATE TRIGGER grants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
CREATE TRIGGER revocations_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
CREATE TRIGGER admin_tokens_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON admin_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
CREATE TRIGGER namespaces_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON namespaces
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
CREATE TRIGGER pools_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pools
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
CREATE TRIGGER default_namespaces_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON default_namespaces
    FOR EACH STATEMENT EXECUTE FUNCTION rsp_control_changed();
