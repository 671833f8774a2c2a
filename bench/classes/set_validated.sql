-- eventic: the same set_field on one of 1000 identical records of class Validated, which has a
-- Pydantic-style JSON Schema: the new version is validated against it before it is stored.
\set n random(1, 1000)
\set r random(1, 1000000000)
SELECT eventic.set_field((SELECT id FROM bench_validated WHERE n = :n), 'title', to_jsonb('title ' || :r::text));
