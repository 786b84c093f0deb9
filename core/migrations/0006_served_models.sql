-- Which model made each stored prediction, so that a new classifier or sentiment model predicts
-- again what an older one predicted (workers/jobs/served_model.py). `served_models` holds, per
-- refresh job, the identity of the model Triton serves (its ensemble's weights_fingerprint) as a
-- worker last saw it; a prediction stamped with another identity is pending again. Predictions
-- made before this migration carry no stamp, and are predicted again once a worker has looked.
CREATE TABLE served_models (
    job         text PRIMARY KEY,
    identity    text NOT NULL,
    observed_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE item_stats ADD COLUMN predicted_model text;
ALTER TABLE reviews ADD COLUMN sentiment_model text;
