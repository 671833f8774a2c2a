-- Included by every regression file (\i): a fresh extension, and pg_temp.try(sql) that runs a
-- statement and returns its SQLSTATE ('00000' when it succeeds), message, DETAIL and HINT.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS eventic CASCADE;
DROP SCHEMA IF EXISTS eventic CASCADE;
CREATE EXTENSION eventic;
RESET client_min_messages;
CREATE FUNCTION pg_temp.try(sql text, OUT code text, OUT message text, OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    code := '00000';
    message := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
END
$$;
