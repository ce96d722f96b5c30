-- Kept in step with ../sqlite/0004_checks_without_in_lists.sql, which rewrites SQLite's
-- `state IN (…)` checks as OR chains: SQLite builds a temporary index for each IN-list check it
-- evaluates. PostgreSQL evaluates `IN (…)` directly, so its constraints stay as they are and
-- this version only records that both backends are at schema 4.
SELECT 1;
