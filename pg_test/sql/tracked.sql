-- Tracked tables (DESIGN.md §2): every INSERT/UPDATE/DELETE on an ordinary table appends
-- versions of the row's record, so history/hydrate/diff work on it.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

CREATE TABLE public.orders (id uuid PRIMARY KEY, status text NOT NULL, total numeric);
INSERT INTO public.orders VALUES ('00000000-0000-7000-8000-0000000000a1', 'new', 10);
-- tracking gives existing rows their version 0
SELECT eventic.track('public.orders');
SELECT eventic.hydrate('00000000-0000-7000-8000-0000000000a1');
INSERT INTO public.orders VALUES ('00000000-0000-7000-8000-0000000000a2', 'new', 20);
UPDATE public.orders SET status = 'paid' WHERE id = '00000000-0000-7000-8000-0000000000a1';
UPDATE public.orders SET status = 'shipped', total = 12 WHERE id = '00000000-0000-7000-8000-0000000000a1';
-- an UPDATE that changes nothing appends nothing
UPDATE public.orders SET status = status;
SELECT version, changed_fields, data FROM eventic.history('00000000-0000-7000-8000-0000000000a1');
SELECT eventic.diff('00000000-0000-7000-8000-0000000000a1', 0, 2);
DELETE FROM public.orders WHERE id = '00000000-0000-7000-8000-0000000000a2';
SELECT version, deleted FROM eventic.history('00000000-0000-7000-8000-0000000000a2');
-- a deleted key inserted again continues its record
INSERT INTO public.orders VALUES ('00000000-0000-7000-8000-0000000000a2', 'again', 1);
SELECT version, deleted, data ->> 'status' AS status FROM eventic.history('00000000-0000-7000-8000-0000000000a2');
-- the class is schema.table, registered with its queue
SELECT class_name, queue_name FROM eventic.classes;
-- tracking twice is harmless
SELECT eventic.track('public.orders');
SELECT count(*) AS versions FROM eventic.records;

-- keys that are not uuids get a stable UUIDv5 (eventic.tracked_id finds it)
CREATE TABLE public.items (sku text PRIMARY KEY, qty int);
SELECT eventic.track('public.items', id_column => 'sku');
INSERT INTO public.items VALUES ('A-1', 5);
UPDATE public.items SET qty = 4 WHERE sku = 'A-1';
SELECT version, data FROM eventic.history(eventic.tracked_id('public.items', 'A-1'));
CREATE TABLE public.counters (n bigint PRIMARY KEY, v int);
SELECT eventic.track('public.counters', 'n');
INSERT INTO public.counters VALUES (42, 1);
SELECT eventic.hydrate(eventic.tracked_id('public.counters', '42')) ->> 'v' AS v;

-- untrack: changes are no longer versioned, history stays
SELECT eventic.untrack('public.items');
UPDATE public.items SET qty = 3 WHERE sku = 'A-1';
SELECT max(version) AS last_version FROM eventic.history(eventic.tracked_id('public.items', 'A-1'));

-- tables eventic cannot track: 22023, nothing created
CREATE TABLE public.no_id (name text);
CREATE TABLE public.not_unique (id uuid, v int);
CREATE TABLE public.bad_columns (id uuid PRIMARY KEY, version int, "Total Sum" int);
CREATE VIEW public.a_view AS SELECT 1 AS id;
SELECT code, message FROM pg_temp.try($$SELECT eventic.track('public.no_id')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.track('public.not_unique')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.track('public.bad_columns')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.track('public.a_view')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.track('public.no_such_table')$$);
SELECT count(*) AS eventic_triggers FROM pg_trigger WHERE tgname = 'eventic_track';

DROP TABLE public.orders, public.items, public.counters, public.no_id, public.not_unique, public.bad_columns;
DROP VIEW public.a_view;
