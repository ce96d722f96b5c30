-- PostgreSQL draws lease epochs from a sequence from this version on (see
-- ../postgres/0009_epoch_sequence.sql). SQLite's writers are serialized, so its claims keep
-- drawing them from `lease_counter` in the claim's transaction: nothing changes here.
SELECT 1;
