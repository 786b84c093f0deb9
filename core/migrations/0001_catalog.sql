-- Catalog, users, events, reviews, embeddings, profiles, statistics and the knowledge graph.
-- Postgres is the contract between loaders, workers and the gateway (as in Gorse).

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE items (
    id            bigserial PRIMARY KEY,
    external_id   text NOT NULL UNIQUE,
    title         text NOT NULL CHECK (title <> ''),
    description   text NOT NULL DEFAULT '',
    brand         text,
    -- Root first: {'Tools', 'Power Tools', 'Drills'}.
    category_path text[] NOT NULL DEFAULT '{}',
    price         numeric(12, 2) CHECK (price >= 0),
    attributes    jsonb NOT NULL DEFAULT '{}',
    -- sha256 of the text the encoder sees (core.catalog.embedding_text); a change re-embeds.
    content_hash  bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    search_tsv    tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', coalesce(brand, '')), 'B')
        || setweight(to_tsvector('english', description), 'C')
    ) STORED
);
CREATE INDEX items_search_tsv ON items USING gin (search_tsv);
CREATE INDEX items_updated_at ON items (updated_at);
CREATE INDEX items_brand ON items (lower(brand));
CREATE INDEX items_category ON items USING gin (category_path);

-- Embedding model versions. Workers fill every version that is 'building' or 'active'; readers
-- use the single 'active' one. Activating a new version is one UPDATE: no downtime, and the
-- old version's rows stay until it is dropped, so rolling back is activating it again.
CREATE TABLE embedding_models (
    version      text PRIMARY KEY,
    triton_model text NOT NULL,
    dim          integer NOT NULL CHECK (dim > 0),
    status       text NOT NULL CHECK (status IN ('building', 'active', 'retired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);
CREATE UNIQUE INDEX embedding_models_one_active ON embedding_models ((true)) WHERE status = 'active';

-- One row per (item, version). Each version gets its own partial HNSW index
-- (core.embeddings.ensure_index), so a version of another dimension fits beside it.
CREATE TABLE item_embeddings (
    item_id       bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    model_version text NOT NULL REFERENCES embedding_models (version) ON DELETE CASCADE,
    content_hash  bytea NOT NULL,
    embedding     vector NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, model_version)
);

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    external_id text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE event_type AS ENUM ('view', 'click', 'cart', 'purchase', 'review');

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    item_id     bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    type        event_type NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- When it reached us: freshness lag is measured from here.
    recorded_at timestamptz NOT NULL DEFAULT now(),
    -- Natural key of a loaded event (file + row identity): loading twice inserts nothing.
    -- NULL for live events from the gateway.
    source_key  text UNIQUE
);
CREATE INDEX events_user_time ON events (user_id, occurred_at DESC);
-- Profiles fold events past a per-user watermark (an event id).
CREATE INDEX events_user_id ON events (user_id, id);
CREATE INDEX events_item ON events (item_id);

CREATE TABLE reviews (
    id              bigserial PRIMARY KEY,
    external_id     text NOT NULL UNIQUE,
    item_id         bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    user_id         bigint REFERENCES users (id) ON DELETE SET NULL,
    rating          real CHECK (rating BETWEEN 0 AND 5),
    title           text NOT NULL DEFAULT '',
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sentiment_label text CHECK (sentiment_label IN ('negative', 'positive')),
    -- Probability that the review is positive.
    sentiment_prob  real,
    scored_at       timestamptz
);
CREATE INDEX reviews_unscored ON reviews (id) WHERE sentiment_label IS NULL;
CREATE INDEX reviews_item ON reviews (item_id);

CREATE TABLE user_profiles (
    user_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    model_version     text NOT NULL REFERENCES embedding_models (version) ON DELETE CASCADE,
    -- Decayed, event-weighted sum of item embeddings as of `as_of` (its direction is the profile).
    profile           vector NOT NULL,
    weight            double precision NOT NULL,
    -- {category: decayed weight} as of `as_of`.
    category_affinity jsonb NOT NULL DEFAULT '{}',
    -- Watermark: the last event folded in.
    last_event_id     bigint NOT NULL,
    as_of             timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, model_version)
);

CREATE TABLE item_stats (
    item_id              bigint PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
    -- Decayed, event-weighted count as of `popularity_as_of`.
    popularity           double precision NOT NULL DEFAULT 0,
    popularity_as_of     timestamptz,
    event_count          integer NOT NULL DEFAULT 0,
    rating_avg           real,
    rating_count         integer NOT NULL DEFAULT 0,
    sentiment_positive   real,
    sentiment_count      integer NOT NULL DEFAULT 0,
    predicted_department text,
    predicted_aisle      text,
    predicted_prob       real,
    -- items.content_hash the prediction was made from: a changed item is predicted again.
    predicted_hash       bytea,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Product knowledge graph: items, brands and categories (each category node knows its parent
-- through a category_parent edge), with weighted edges.
CREATE TABLE kg_nodes (
    id       bigserial PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('item', 'brand', 'category')),
    -- item: items.id; brand: lower-case name; category: the path joined with ' > '.
    key      text NOT NULL,
    label    text NOT NULL,
    item_id  bigint REFERENCES items (id) ON DELETE CASCADE,
    depth    integer NOT NULL DEFAULT 0,
    label_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', label)) STORED,
    UNIQUE (kind, key)
);
-- Query expansion looks up brands and categories by the words of a query.
CREATE INDEX kg_nodes_label_tsv ON kg_nodes USING gin (label_tsv) WHERE kind <> 'item';
CREATE INDEX kg_nodes_item ON kg_nodes (item_id) WHERE item_id IS NOT NULL;

CREATE TABLE kg_edges (
    src        bigint NOT NULL REFERENCES kg_nodes (id) ON DELETE CASCADE,
    dst        bigint NOT NULL REFERENCES kg_nodes (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('item_brand', 'item_category', 'category_parent', 'co_occurrence')),
    weight     real NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (src, kind, dst)
);
CREATE INDEX kg_edges_dst ON kg_edges (dst, kind);

-- Other words for a node (synonyms, other languages): "手机" -> smartphones.
CREATE TABLE kg_aliases (
    alias   text NOT NULL,
    node_id bigint NOT NULL REFERENCES kg_nodes (id) ON DELETE CASCADE,
    weight  real NOT NULL DEFAULT 1,
    PRIMARY KEY (alias, node_id)
);

-- Refresh jobs: one open run per job at most (a trigger while it runs joins that run).
CREATE TABLE job_runs (
    id          bigserial PRIMARY KEY,
    job         text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    total       integer NOT NULL DEFAULT 0,
    done        integer NOT NULL DEFAULT 0,
    dispatched_at timestamptz,
    -- Highest key and number of rows handed to tasks so far: work beyond the key (new items)
    -- is dispatched at the next tick, and the rest once everything dispatched is done.
    dispatched_max_id bigint NOT NULL DEFAULT 0,
    dispatched_rows integer NOT NULL DEFAULT 0,
    -- Last time a batch of the run committed: a run with a backlog and no progress for a while
    -- has lost tasks (a dead worker) and is dispatched again.
    progressed_at timestamptz,
    error       text
);
CREATE UNIQUE INDEX job_runs_one_open ON job_runs (job) WHERE finished_at IS NULL;
CREATE INDEX job_runs_recent ON job_runs (job, started_at DESC);
