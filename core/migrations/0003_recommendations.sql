-- Each user's recommendations as last computed by the gateway's Recommend pipeline, so a plain
-- Recommend (no context items, no filters, no explanation) is one indexed read instead of the
-- pipeline (~24 ms of CPU across Postgres, Triton and the gateway; docs/api.md).
-- A row serves only while the user's events are the ones the pipeline saw (the same newest id
-- and the same count, so the user's own events take effect at once: read-your-writes), the
-- ranker is the one that made it, and it has not expired (AISLE_RECOMMEND_CACHE_TTL_S after it was
-- made, less up to a fifth: what other users did reaches it within that time).
CREATE TABLE recommendations (
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    model_version  text NOT NULL REFERENCES embedding_models (version) ON DELETE CASCADE,
    ranker_version text NOT NULL,
    -- The newest event of the user the pipeline saw, and how many it saw: ids are handed out
    -- before commit, so an event that commits late can have an id below the newest one seen.
    last_event_id  bigint NOT NULL,
    event_count    integer NOT NULL,
    -- In served order (after diversification), with the ranker's scores.
    item_ids       bigint[] NOT NULL,
    scores         real[] NOT NULL CHECK (cardinality(scores) = cardinality(item_ids)),
    computed_at    timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (user_id, model_version)
);
-- The warm-up job looks for the expired rows, the earliest first.
CREATE INDEX recommendations_expiry ON recommendations (model_version, expires_at);
