-- Whether a cached list was made from the user's whole state. During a first load the warm-up
-- asked the gateway while the refresh was still embedding the users' items and before the
-- graph existed: every Scientific user got the cold-start popular list, and it served for the
-- hour of the TTL after `aisle refresh all` had finished (2026-12-07). A list that is not
-- complete serves only while what it lacked is still missing (gateway/recommendation_cache.py).
ALTER TABLE recommendations ADD COLUMN complete boolean NOT NULL DEFAULT true;
-- Lists stored before this column existed may be such lists: let the warm-up renew them all.
UPDATE recommendations SET expires_at = now();
