-- rsp store, schema version 9 (PostgreSQL): a register grant may restrict the PE labels
-- its identities set (issue 23; the SQLite 0009 says the format). NULL: any labels.
ALTER TABLE grants ADD COLUMN labels TEXT CHECK (labels IS NULL OR length(labels) <= 3200);
