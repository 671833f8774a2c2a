-- Upgrade eventic 0.1.0 -> 0.2.0 (ALTER EXTENSION eventic UPDATE).
\echo Use "ALTER EXTENSION eventic UPDATE TO '0.2.0'" to load this file. \quit
