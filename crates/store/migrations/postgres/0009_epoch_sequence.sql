-- Claims draw their lease epochs from a sequence instead of the one-row `lease_counter`, whose
-- row lock every claim held to its commit: claims of different tasks no longer wait for each
-- other.
--
-- The invariant is unchanged: a claim's epoch (the runner's GAPLESS_ATTEMPT_TOKEN) is larger
-- than every epoch a claim handed out before, for any task of any run. A sequence with CACHE 1
-- hands its values out in call order across sessions, and a claim draws its value after it took
-- its cells' holds, so a later claim of the same cell draws a larger one. Other transitions
-- still move a task's epoch by one (release, requeue, split): those values fence the task's
-- earlier readers and are never handed to a runner.
CREATE SEQUENCE lease_epochs AS BIGINT MINVALUE 1 CACHE 1;

-- The next value is one more than the largest epoch so far (1 on a new database).
SELECT setval('lease_epochs', GREATEST(last_epoch, 1), last_epoch >= 1)
FROM (SELECT GREATEST(
          (SELECT last FROM lease_counter WHERE id = 1),
          (SELECT COALESCE(MAX(lease_epoch), 0) FROM tasks)) AS last_epoch) AS counter;

DROP TABLE lease_counter;

-- Every node asks for the running runs with claimable work whenever any node completes a
-- task; the answer should cost what the running runs cost, not what the history of runs does.
CREATE INDEX runs_running ON runs (pipeline, created_at) WHERE state = 'running';
