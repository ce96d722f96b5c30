-- Lease epochs come from a sequence instead of the one-row `lease_counter`, whose row lock every
-- claim held to its commit: claims of different tasks no longer wait for each other.
--
-- The invariant is unchanged: every value `tasks.lease_epoch` takes is larger than every value
-- any task held before, so a runner's GAPLESS_ATTEMPT_TOKEN grows across runs for a cell. A
-- sequence with CACHE 1 hands its values out in call order across sessions, and a claim draws
-- its value after it took the cells' holds, so a later claim of the same cell draws a larger one.
-- The trigger draws the new value for every statement that moves an epoch (claims, releases,
-- requeues, splits, and any written by hand), so no statement can hand out `epoch + 1` that
-- another task already holds.
CREATE SEQUENCE lease_epochs AS BIGINT MINVALUE 1 CACHE 1;

-- The next value is one more than the largest epoch so far (1 on a new database).
SELECT setval('lease_epochs', GREATEST(last_epoch, 1), last_epoch >= 1)
FROM (SELECT GREATEST(
          (SELECT last FROM lease_counter WHERE id = 1),
          (SELECT COALESCE(MAX(lease_epoch), 0) FROM tasks)) AS last_epoch) AS counter;

DROP TABLE lease_counter;

CREATE FUNCTION next_lease_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.lease_epoch := nextval('lease_epochs');
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_lease_epoch BEFORE UPDATE OF lease_epoch ON tasks
    FOR EACH ROW WHEN (NEW.lease_epoch IS DISTINCT FROM OLD.lease_epoch)
    EXECUTE FUNCTION next_lease_epoch();
