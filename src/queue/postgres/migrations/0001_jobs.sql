-- robustd job queue, schema version 1: jobs with leases, the published result per content key, the fleet.
CREATE TABLE robustd.jobs (
    id               text PRIMARY KEY,
    key              text NOT NULL,                       -- content key (model, external data, config)
    kind             text NOT NULL CHECK (kind IN ('eval', 'train')),
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    name             text NOT NULL,
    dropped_as       text NOT NULL,
    record           text NOT NULL,                       -- the job record at intake (YAML, robustd.job/v1)
    input_dir        text NOT NULL,                       -- the job's files in the shared store
    attempts         integer NOT NULL DEFAULT 0,          -- claims (starts) so far
    lost_leases      integer NOT NULL DEFAULT 0,          -- starts that ended with the worker gone
    worker           text,                                -- who holds (or last held) the lease
    lease_token      bigint,                              -- fencing token of the current claim
    lease_expires_at timestamptz,
    queued_at        timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    stage            text,
    progress         double precision,
    result_dir       text,
    dedup_of         text,
    error            text,                                -- one-line cause
    error_report     text                                 -- error.yaml's content
);
-- The claim scans queued jobs (and running ones whose lease expired) oldest first.
CREATE INDEX jobs_claimable ON robustd.jobs (queued_at, id) WHERE state IN ('queued', 'running');
-- One running job per content key: an identical job waits, then is answered from the first one's result.
CREATE UNIQUE INDEX jobs_one_running_per_key ON robustd.jobs (key) WHERE state = 'running';
CREATE INDEX jobs_finished ON robustd.jobs (state, finished_at DESC);

-- Dedupe: the one published result of a content key.
CREATE TABLE robustd.published (
    key          text PRIMARY KEY,
    job          text NOT NULL,
    result_dir   text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

-- The fleet: every `robustd run` registers and heartbeats here.
CREATE TABLE robustd.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    devices      text[] NOT NULL,
    ingest       boolean NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
