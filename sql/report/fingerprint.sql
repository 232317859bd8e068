-- The catalog's fingerprint in the snapshot bootstrap.snapshot_now (snapshot.sql):
-- its row count and the sum of its rows' hashes, so that the order rows come in does
-- not matter. changes.sql gives the same as its first line.
SELECT count(*) || ':' || coalesce(sum(hashtextextended(e, 0)), 0)
FROM unnest(current_setting('bootstrap.snapshot_now')::text[]) AS e
