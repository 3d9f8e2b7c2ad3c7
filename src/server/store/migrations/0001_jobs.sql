-- onnx-cle job store: records, idempotency keys and the queue (src/server/store/pg.rs).
-- `record` holds the job's JSON record; the columns beside it are the queue's state and
-- override the record's fields of the same name.
CREATE TABLE cle_jobs (
    id               text PRIMARY KEY,
    state            text NOT NULL
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    record           jsonb NOT NULL,
    created_ms       bigint NOT NULL,
    started_ms       bigint,
    finished_ms      bigint,
    attempts         integer NOT NULL DEFAULT 0,
    stage            text,
    owner            text,
    lease_token      text,
    lease_until      timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false
);

-- The queue: claims take the lowest id among the queued rows (ids are time-ordered).
CREATE INDEX cle_jobs_queued ON cle_jobs (id) WHERE state = 'queued';
-- The lease reaper.
CREATE INDEX cle_jobs_running ON cle_jobs (lease_until) WHERE state = 'running';
-- Retention.
CREATE INDEX cle_jobs_finished ON cle_jobs (finished_ms)
    WHERE state IN ('succeeded', 'failed', 'canceled');
-- GET /jobs?state=…
CREATE INDEX cle_jobs_state_id ON cle_jobs (state, id);

CREATE TABLE cle_idempotency_keys (
    key_sha256  text PRIMARY KEY,
    fingerprint text NOT NULL,
    job_id      text NOT NULL,
    created_ms  bigint NOT NULL
);
CREATE INDEX cle_idempotency_keys_created ON cle_idempotency_keys (created_ms);

-- Wakes idle workers and long-polls on every replica: `queued:<id>` when a job (re)enters the
-- queue, `<state>:<id>` when it finishes, `cancel:<id>` when a running job is to stop,
-- `deleted:<id>`. Claims, stages and lease renewals notify nobody (NOTIFY serializes commits,
-- so the hot path stays quiet).
CREATE FUNCTION cle_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('cle_jobs', 'deleted:' || OLD.id);
        RETURN OLD;
    END IF;
    IF (TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state) AND NEW.state <> 'running' THEN
        PERFORM pg_notify('cle_jobs', NEW.state || ':' || NEW.id);
    ELSIF TG_OP = 'UPDATE' AND NEW.cancel_requested AND NOT OLD.cancel_requested THEN
        PERFORM pg_notify('cle_jobs', 'cancel:' || NEW.id);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER cle_jobs_notify AFTER INSERT OR UPDATE OR DELETE ON cle_jobs
    FOR EACH ROW EXECUTE FUNCTION cle_jobs_notify();
