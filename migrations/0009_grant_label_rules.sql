-- rsp store, schema version 9: a register grant may restrict the PE labels its identities
-- set (issue 23, docs/PROTOCOL-EXTENSIONS.md §2 "Who may set which labels"). NULL: any
-- labels (every grant made before this version); otherwise the rules, one `key=pattern`
-- per line (label keys and values are printable ASCII without line breaks, so a newline
-- never occurs inside a rule); an empty string: no label at all. At most 32 rules of at
-- most 97 bytes each (identity::LabelRules).
ALTER TABLE grants ADD COLUMN labels TEXT CHECK (labels IS NULL OR length(labels) <= 3200);
