-- The baseline of issue 13: the ten-line audit trigger a Postgres user writes instead of
-- eventic (exactly as in the issue). Loaded by the records and classes groups; re-runnable.
CREATE TABLE IF NOT EXISTS audit_history (hist_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  table_oid oid NOT NULL, op text NOT NULL, changed_at timestamptz NOT NULL DEFAULT now(), record jsonb);
CREATE OR REPLACE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit_history (table_oid, op, record) VALUES (TG_RELID, TG_OP, to_jsonb(NEW)); RETURN NULL; END $$;
