// Migrations of the PostgreSQL store. Each version is a script run once, in
// order; a version, once released, never changes (add the next one instead).
// The functions do each step of a task's life server-side, in one round
// trip and one transaction, with the server's clock (now()).
#include "postgres/schema.hpp"

#include <array>

namespace ordo::detail::pg {
namespace {

// Version 1: jobs, workflows, global groups, and the functions.
constexpr const char* kVersion1 = R"SQL(
CREATE TABLE @S.jobs (
  id            bigserial PRIMARY KEY,
  type          text NOT NULL,
  args          bytea NOT NULL,
  state         text NOT NULL CHECK (state IN ('available', 'running', 'blocked', 'dead', 'completed')),
  level         smallint NOT NULL,
  attempt       integer NOT NULL DEFAULT 0,
  attempt_base  integer NOT NULL DEFAULT 0,
  max_attempts  integer NOT NULL,
  run_at        timestamptz NOT NULL,
  delayed       boolean NOT NULL DEFAULT false,
  retrying      boolean NOT NULL DEFAULT false,
  enqueued_at   timestamptz NOT NULL DEFAULT now(),
  owner         text,
  lease_until   timestamptz,
  checkpoint    bytea,
  last_error    text,
  idem_key      text,
  key_until     timestamptz,
  needs         text,
  global_groups text[],
  global_counts integer[],
  flow_id       bigint,
  flow_node     integer,
  pending       integer NOT NULL DEFAULT 0
);
CREATE INDEX jobs_ready ON @S.jobs (level, run_at) WHERE state = 'available';
CREATE INDEX jobs_leased ON @S.jobs (lease_until) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_key ON @S.jobs (idem_key) WHERE idem_key IS NOT NULL;
CREATE INDEX jobs_flow ON @S.jobs (flow_id, flow_node) WHERE flow_id IS NOT NULL;
CREATE INDEX jobs_dead ON @S.jobs (id) WHERE state = 'dead';
CREATE INDEX jobs_retained ON @S.jobs (key_until) WHERE state = 'completed';

CREATE TABLE @S.workflows (
  id         bigint PRIMARY KEY,
  name       text NOT NULL,
  idem_key   text,
  state      text NOT NULL CHECK (state IN ('running', 'completed')),
  nodes      integer NOT NULL,
  remaining  integer NOT NULL,
  failed     boolean NOT NULL DEFAULT false,
  key_until  timestamptz
);
CREATE UNIQUE INDEX workflows_key ON @S.workflows (idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE @S.flow_edges (
  flow_id   bigint NOT NULL,
  from_node integer NOT NULL,
  to_node   integer NOT NULL,
  PRIMARY KEY (flow_id, from_node, to_node)
);

CREATE TABLE @S.groups (
  name       text PRIMARY KEY,
  kind       text NOT NULL CHECK (kind IN ('count', 'rate')),
  lim        integer NOT NULL CHECK (lim >= 0),
  in_use     integer NOT NULL DEFAULT 0,
  peak       integer NOT NULL DEFAULT 0,
  per_second double precision,
  tat        timestamptz
);
CREATE TABLE @S.holders (
  group_name text NOT NULL,
  job_id     bigint NOT NULL,
  attempt    integer NOT NULL,
  owner      text NOT NULL,
  count      integer NOT NULL,
  since      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (group_name, job_id)
);
CREATE INDEX holders_job ON @S.holders (job_id);

CREATE TABLE @S.enqueue_batches (
  token text PRIMARY KEY,
  ids   bigint[] NOT NULL,
  at    timestamptz NOT NULL DEFAULT now()
);

-- Gives back the global permits of a job (its attempt ended or its lease ran out).
CREATE FUNCTION @S.give_back(p_job bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE h record; any_back boolean := false;
BEGIN
  FOR h IN DELETE FROM @S.holders WHERE job_id = p_job RETURNING group_name, count LOOP
    UPDATE @S.groups SET in_use = in_use - h.count WHERE name = h.group_name;
    any_back := true;
  END LOOP;
  RETURN any_back;
END $$;

-- Takes every global permit a job needs, or none. The caller has locked the
-- groups (in name order, so no two transactions wait for each other).
CREATE FUNCTION @S.take_permits(p_job bigint, p_attempt integer, p_owner text, p_groups text[], p_counts integer[])
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE grp record; need integer; step interval;
BEGIN
  FOR grp IN SELECT * FROM @S.groups WHERE name = ANY(p_groups) LOOP
    need := p_counts[array_position(p_groups, grp.name)];
    IF grp.kind = 'count' THEN
      IF grp.in_use + need > grp.lim THEN RETURN false; END IF;
    ELSE
      step := (1.0 / grp.per_second) * interval '1 second';
      IF greatest(coalesce(grp.tat, now()), now()) + need * step - now() > grp.lim * step THEN RETURN false; END IF;
    END IF;
  END LOOP;
  UPDATE @S.groups g SET in_use = g.in_use + n.c, peak = greatest(g.peak, g.in_use + n.c)
    FROM unnest(p_groups, p_counts) AS n(name, c) WHERE g.name = n.name AND g.kind = 'count';
  UPDATE @S.groups g SET tat = greatest(coalesce(g.tat, now()), now()) + n.c * (1.0 / g.per_second) * interval '1 second'
    FROM unnest(p_groups, p_counts) AS n(name, c) WHERE g.name = n.name AND g.kind = 'rate';
  INSERT INTO @S.holders (group_name, job_id, attempt, owner, count)
    SELECT n.name, p_job, p_attempt, p_owner, n.c FROM unnest(p_groups, p_counts) AS n(name, c)
    JOIN @S.groups g ON g.name = n.name AND g.kind = 'count';
  RETURN true;
END $$;

-- Enqueues a batch. p_token names the batch: run again after a lost
-- connection, the same token returns the ids of the first run. p_ids are
-- ids the caller reserved (reserve_ids), or NULL to draw them here.
-- p_notify: whether this commit wakes the fleet. NOTIFY serialises the
-- commits of notifying transactions server-wide, WAL flush included, so
-- ordo's own batches pass false and send wake() after their commit; an
-- enqueue inside a caller's transaction passes true.
CREATE FUNCTION @S.enqueue(p_token text, p_notify boolean, p_ids bigint[], p_types text[], p_args bytea[], p_levels integer[],
    p_max integer[], p_delay_ms bigint[], p_run_at timestamptz[], p_keys text[], p_needs text[], p_groups text[],
    p_counts text[])
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; i integer; n integer := coalesce(array_length(p_types, 1), 0); got bigint; missing text;
        keyed boolean;
BEGIN
  IF p_token IS NOT NULL THEN
    SELECT b.ids INTO ids FROM @S.enqueue_batches b WHERE b.token = p_token;
    IF FOUND THEN RETURN ids; END IF;
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(p_groups) AS t(gs) WHERE t.gs IS NOT NULL) THEN
    SELECT u.g INTO missing FROM unnest(p_groups) AS t(gs), unnest(t.gs::text[]) AS u(g)
      WHERE NOT EXISTS (SELECT 1 FROM @S.groups WHERE name = u.g) LIMIT 1;
    IF missing IS NOT NULL THEN
      RAISE EXCEPTION 'ordo: a durable task needs global group "%", which is not defined (set_global_limit or set_global_rate first)', missing
        USING ERRCODE = '22023';
    END IF;
  END IF;
  ids := coalesce(p_ids, ARRAY(SELECT nextval('@S.jobs_id_seq') FROM generate_series(1, n)));
  keyed := EXISTS (SELECT 1 FROM unnest(p_keys) AS k(key) WHERE k.key IS NOT NULL);
  INSERT INTO @S.jobs (id, type, args, state, level, max_attempts, run_at, delayed, idem_key, needs, global_groups, global_counts)
    SELECT ids[u.ord], u.t, u.a, 'available', u.l, u.m,
           CASE WHEN u.d IS NOT NULL THEN now() + u.d * interval '1 millisecond' ELSE coalesce(u.r, now()) END,
           u.d IS NOT NULL OR u.r IS NOT NULL, NULL, u.nd, u.g::text[], u.c::integer[]
    FROM unnest(p_types, p_args, p_levels, p_max, p_delay_ms, p_run_at, p_keys, p_needs, p_groups, p_counts)
         WITH ORDINALITY AS u(t, a, l, m, d, r, k, nd, g, c, ord)
    WHERE u.k IS NULL;
  FOR i IN 1 .. CASE WHEN keyed THEN n ELSE 0 END LOOP
    CONTINUE WHEN p_keys[i] IS NULL;
    DELETE FROM @S.jobs WHERE idem_key = p_keys[i] AND state = 'completed' AND key_until < now();
    got := NULL;
    INSERT INTO @S.jobs (id, type, args, state, level, max_attempts, run_at, delayed, idem_key, needs, global_groups, global_counts)
      VALUES (ids[i], p_types[i], p_args[i], 'available', p_levels[i], p_max[i],
              CASE WHEN p_delay_ms[i] IS NOT NULL THEN now() + p_delay_ms[i] * interval '1 millisecond' ELSE coalesce(p_run_at[i], now()) END,
              p_delay_ms[i] IS NOT NULL OR p_run_at[i] IS NOT NULL, p_keys[i], p_needs[i], p_groups[i]::text[], p_counts[i]::integer[])
      ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL DO NOTHING RETURNING id INTO got;
    IF got IS NULL THEN
      SELECT id INTO got FROM @S.jobs WHERE idem_key = p_keys[i];
      ids[i] := got;
    END IF;
  END LOOP;
  IF p_token IS NOT NULL THEN INSERT INTO @S.enqueue_batches (token, ids) VALUES (p_token, ids); END IF;
  IF p_notify THEN PERFORM pg_notify('@C', ''); END IF;
  RETURN ids;
END $$;

-- Wakes the fleet's claimers (a transaction of its own, which writes no WAL).
CREATE FUNCTION @S.wake() RETURNS void LANGUAGE sql AS $$ SELECT pg_notify('@C', ''); $$;

-- Ids for a client to hand out before its tasks are committed (asynchronous enqueues).
CREATE FUNCTION @S.reserve_ids(p_n integer) RETURNS SETOF bigint LANGUAGE sql AS $$
  SELECT nextval('@S.jobs_id_seq') FROM generate_series(1, p_n);
$$;

-- Claims up to p_n ready jobs for p_owner: by effective level (a job rises
-- one level per p_ageing_ms of waiting), then by age; a job needing global
-- groups only with all its permits, and at most p_global_room of those (the
-- claimer's idle threads: a permit is not held by a job waiting for a thread).
-- p_held: the jobs the claimer holds already. One of those that is available
-- lost its lease while its attempt still runs there: claimed by that process
-- again, the new attempt would wait for the old one (or run beside it), so
-- another process takes it, or that one once its attempt ended.
CREATE FUNCTION @S.claim(p_owner text, p_n integer, p_lease_ms bigint, p_ageing_ms bigint, p_levels integer,
                         p_types text[], p_global_room integer DEFAULT 2147483647, p_held bigint[] DEFAULT '{}')
RETURNS TABLE (o_id bigint, o_type text, o_args bytea, o_level smallint, o_attempt integer, o_base integer,
               o_max integer, o_checkpoint bytea, o_needs text, o_error text)
LANGUAGE plpgsql AS $$
DECLARE c record; cid bigint; got integer := 0; global_got integer := 0; cand bigint[];
BEGIN
  SELECT array_agg(k.id ORDER BY greatest(0, k.level - CASE WHEN p_ageing_ms > 0
           THEN floor(extract(epoch FROM now() - k.run_at) * 1000 / p_ageing_ms)::integer ELSE 0 END), k.run_at, k.id)
    INTO cand
    FROM generate_series(0, p_levels - 1) AS lv(l)
    CROSS JOIN LATERAL (
      SELECT j.id, j.level, j.run_at FROM @S.jobs j
      WHERE j.state = 'available' AND j.level = lv.l AND j.run_at <= now() AND j.type = ANY(p_types)
        AND j.id <> ALL(p_held)
      ORDER BY j.run_at LIMIT p_n + 16 FOR UPDATE SKIP LOCKED) AS k;
  IF cand IS NULL THEN RETURN; END IF;
  IF NOT EXISTS (SELECT 1 FROM @S.jobs x WHERE x.id = ANY(cand) AND x.global_groups IS NOT NULL) THEN
    -- No candidate needs a global group: the first p_n are claimed in one statement.
    RETURN QUERY UPDATE @S.jobs j SET state = 'running', attempt = j.attempt + 1, owner = p_owner,
        lease_until = now() + p_lease_ms * interval '1 millisecond'
      WHERE j.id = ANY(cand[1:p_n])
      RETURNING j.id, j.type, j.args, j.level, j.attempt, j.attempt_base, j.max_attempts, j.checkpoint, j.needs,
                j.last_error;
    RETURN;
  END IF;
  -- Every group any candidate needs, locked in name order before any is taken.
  PERFORM 1 FROM @S.groups WHERE name IN (SELECT unnest(x.global_groups) FROM @S.jobs x WHERE x.id = ANY(cand))
    ORDER BY name FOR UPDATE;
  FOREACH cid IN ARRAY cand LOOP
    EXIT WHEN got >= p_n;
    SELECT x.global_groups AS g, x.global_counts AS n, x.attempt AS a INTO c FROM @S.jobs x WHERE x.id = cid;
    IF c.g IS NOT NULL THEN
      -- Two statements: SQL does not promise to skip take_permits (which takes
      -- them) once the room check alone decides.
      CONTINUE WHEN global_got >= p_global_room;
      CONTINUE WHEN NOT @S.take_permits(cid, c.a + 1, p_owner, c.g, c.n);
      global_got := global_got + 1;
    END IF;
    RETURN QUERY UPDATE @S.jobs j SET state = 'running', attempt = j.attempt + 1, owner = p_owner,
        lease_until = now() + p_lease_ms * interval '1 millisecond'
      WHERE j.id = cid
      RETURNING j.id, j.type, j.args, j.level, j.attempt, j.attempt_base, j.max_attempts, j.checkpoint, j.needs,
                j.last_error;
    got := got + 1;
  END LOOP;
END $$;

-- Renews the leases of the attempts (id, attempt) that still hold their job;
-- returns those. An attempt missing from the answer has lost its job. Never
-- waits: a row another transaction has locked (its outcome being recorded,
-- an application's FOR UPDATE, a statement waiting for a deadlock to be
-- found) is renewed next time, and counts as held; waiting for it would hold
-- up the renewal of every other job of the process until their leases ran out.
CREATE FUNCTION @S.renew(p_ids bigint[], p_attempts integer[], p_lease_ms bigint) RETURNS SETOF bigint
LANGUAGE sql AS $$
  WITH free AS (
    SELECT j.id FROM @S.jobs j JOIN unnest(p_ids, p_attempts) AS a(id, attempt) ON j.id = a.id AND j.attempt = a.attempt
      WHERE j.state = 'running' FOR UPDATE OF j SKIP LOCKED),
  renewed AS (
    UPDATE @S.jobs j SET lease_until = now() + p_lease_ms * interval '1 millisecond' FROM free WHERE j.id = free.id)
  SELECT j.id FROM @S.jobs j JOIN unnest(p_ids, p_attempts) AS a(id, attempt) ON j.id = a.id AND j.attempt = a.attempt
    WHERE j.state = 'running';
$$;

-- A completed workflow node: successors whose predecessors are all done
-- become available; the last node ends the workflow.
CREATE FUNCTION @S.node_done(p_flow bigint, p_node integer, p_retain_ms bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE left_over integer; released integer;
BEGIN
  UPDATE @S.jobs s SET pending = s.pending - 1,
         state = CASE WHEN s.pending = 1 THEN 'available' ELSE s.state END,
         run_at = CASE WHEN s.pending = 1 THEN now() ELSE s.run_at END
    FROM @S.flow_edges e
    WHERE e.flow_id = p_flow AND e.from_node = p_node AND s.flow_id = p_flow AND s.flow_node = e.to_node
      AND s.state = 'blocked';
  GET DIAGNOSTICS released = ROW_COUNT;
  UPDATE @S.workflows SET remaining = remaining - 1 WHERE id = p_flow RETURNING remaining INTO left_over;
  IF left_over = 0 THEN PERFORM @S.end_workflow(p_flow, p_retain_ms); END IF;
  RETURN released > 0;
END $$;

CREATE FUNCTION @S.end_workflow(p_flow bigint, p_retain_ms bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM @S.flow_edges WHERE flow_id = p_flow;
  DELETE FROM @S.jobs WHERE flow_id = p_flow AND state = 'completed';
  UPDATE @S.workflows SET state = 'completed', key_until = now() + p_retain_ms * interval '1 millisecond'
    WHERE id = p_flow AND idem_key IS NOT NULL AND NOT failed;
  DELETE FROM @S.workflows WHERE id = p_flow AND (idem_key IS NULL OR failed);
END $$;

-- Records the outcome of attempts (id, attempt): fenced — an attempt that no
-- longer holds its job changes nothing. Returns the ids recorded.
CREATE FUNCTION @S.finish(p_ids bigint[], p_attempts integer[], p_ok boolean[], p_errors text[],
                          p_backoff_ms bigint[], p_retain_ms bigint)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE i integer; j record; done bigint[];
BEGIN
  -- The common case in one statement: a plain job that succeeded leaves no row.
  WITH d AS (
    DELETE FROM @S.jobs x USING unnest(p_ids, p_attempts, p_ok) AS a(id, attempt, ok)
    WHERE a.ok AND x.id = a.id AND x.attempt = a.attempt AND x.state = 'running'
      AND x.flow_id IS NULL AND x.idem_key IS NULL AND x.global_groups IS NULL
    RETURNING x.id)
  SELECT coalesce(array_agg(d.id), '{}') INTO done FROM d;
  RETURN QUERY SELECT unnest(done);
  -- Job rows before groups, as claim takes them (and in id order): a job
  -- row held by a claim that waits for a group held here would deadlock.
  PERFORM 1 FROM @S.jobs WHERE id = ANY(p_ids) AND id <> ALL(done) ORDER BY id FOR UPDATE;
  PERFORM 1 FROM @S.groups WHERE name IN (SELECT h.group_name FROM @S.holders h WHERE h.job_id = ANY(p_ids))
    ORDER BY name FOR UPDATE;
  FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
    CONTINUE WHEN p_ids[i] = ANY(done);
    SELECT * INTO j FROM @S.jobs WHERE id = p_ids[i] AND attempt = p_attempts[i] AND state = 'running' FOR UPDATE;
    CONTINUE WHEN NOT FOUND;  -- fenced: the lease ran out, the job went back (perhaps to another holder)
    PERFORM @S.give_back(j.id);
    IF p_ok[i] THEN
      IF j.flow_id IS NOT NULL THEN
        UPDATE @S.jobs SET state = 'completed', owner = NULL, lease_until = NULL WHERE id = j.id;
        PERFORM @S.node_done(j.flow_id, j.flow_node, p_retain_ms);
      ELSIF j.idem_key IS NOT NULL THEN
        UPDATE @S.jobs SET state = 'completed', owner = NULL, lease_until = NULL, args = '',
               key_until = now() + p_retain_ms * interval '1 millisecond' WHERE id = j.id;
      ELSE
        DELETE FROM @S.jobs WHERE id = j.id;
      END IF;
    ELSIF j.attempt - j.attempt_base >= j.max_attempts THEN
      UPDATE @S.jobs SET state = 'dead', owner = NULL, lease_until = NULL, last_error = p_errors[i] WHERE id = j.id;
    ELSE
      UPDATE @S.jobs SET state = 'available', owner = NULL, lease_until = NULL, last_error = p_errors[i],
             retrying = true, run_at = now() + p_backoff_ms[i] * interval '1 millisecond' WHERE id = j.id;
    END IF;
    RETURN NEXT j.id;
  END LOOP;
  -- No NOTIFY here: the client sends one after the commit (wake()).
END $$;

-- Takes back the jobs whose lease ran out (their holder died or stalled):
-- available again, or dead when that was their last attempt; their permits
-- return. A job keeps its run_at, so it goes back where it was in the queue
-- (and keeps its age for ageing), not behind everything enqueued since.
-- Also forgets retained keys whose time is up.
CREATE FUNCTION @S.reap() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE j record; n integer := 0;
BEGIN
  PERFORM 1 FROM @S.groups WHERE name IN (SELECT h.group_name FROM @S.holders h JOIN @S.jobs x ON x.id = h.job_id
    WHERE x.state = 'running' AND x.lease_until < now()) ORDER BY name FOR UPDATE;
  FOR j IN SELECT id, attempt, attempt_base, max_attempts, owner FROM @S.jobs
           WHERE state = 'running' AND lease_until < now() ORDER BY lease_until FOR UPDATE SKIP LOCKED LOOP
    PERFORM @S.give_back(j.id);
    UPDATE @S.jobs SET state = CASE WHEN j.attempt - j.attempt_base >= j.max_attempts THEN 'dead' ELSE 'available' END,
           owner = NULL, lease_until = NULL,
           last_error = 'attempt ' || j.attempt || ' lost its lease (holder ' || coalesce(j.owner, '?') || ' stopped renewing)'
      WHERE id = j.id;
    n := n + 1;
  END LOOP;
  IF n > 0 THEN PERFORM pg_notify('@C', ''); END IF;
  DELETE FROM @S.jobs WHERE state = 'completed' AND flow_id IS NULL AND key_until < now();
  DELETE FROM @S.workflows WHERE state = 'completed' AND key_until < now();
  DELETE FROM @S.enqueue_batches WHERE at < now() - interval '1 hour';
  RETURN n;
END $$;

-- Gives claimed jobs that never started back to the queue (a shutdown that
-- cancels): fenced like finish; the claim does not count as an attempt.
CREATE FUNCTION @S.release(p_ids bigint[], p_attempts integer[]) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
DECLARE i integer;
BEGIN
  PERFORM 1 FROM @S.jobs WHERE id = ANY(p_ids) ORDER BY id FOR UPDATE;  -- rows before groups, as in finish
  PERFORM 1 FROM @S.groups WHERE name IN (SELECT h.group_name FROM @S.holders h WHERE h.job_id = ANY(p_ids))
    ORDER BY name FOR UPDATE;
  FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
    PERFORM 1 FROM @S.jobs WHERE id = p_ids[i] AND attempt = p_attempts[i] AND state = 'running' FOR UPDATE;
    CONTINUE WHEN NOT FOUND;
    PERFORM @S.give_back(p_ids[i]);
    UPDATE @S.jobs SET state = 'available', owner = NULL, lease_until = NULL, attempt_base = attempt_base + 1
      WHERE id = p_ids[i];
    RETURN NEXT p_ids[i];
  END LOOP;
  PERFORM pg_notify('@C', '');
END $$;

CREATE FUNCTION @S.enqueue_workflow(p_name text, p_key text, p_types text[], p_args bytea[], p_levels integer[],
    p_max integer[], p_pending integer[], p_from integer[], p_to integer[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE fid bigint; n integer := array_length(p_types, 1);
BEGIN
  IF p_key IS NOT NULL THEN
    DELETE FROM @S.workflows WHERE idem_key = p_key AND state = 'completed' AND key_until < now();
  END IF;
  fid := nextval('@S.jobs_id_seq');
  INSERT INTO @S.workflows (id, name, idem_key, state, nodes, remaining) VALUES (fid, p_name, p_key, 'running', n, n)
    ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL DO NOTHING;
  IF NOT FOUND THEN
    SELECT id INTO fid FROM @S.workflows WHERE idem_key = p_key;
    RETURN fid;
  END IF;
  INSERT INTO @S.jobs (type, args, state, level, max_attempts, run_at, flow_id, flow_node, pending)
    SELECT u.t, u.a, CASE WHEN u.p = 0 THEN 'available' ELSE 'blocked' END, u.l, u.m, now(), fid, u.ord - 1, u.p
    FROM unnest(p_types, p_args, p_levels, p_max, p_pending) WITH ORDINALITY AS u(t, a, l, m, p, ord);
  INSERT INTO @S.flow_edges (flow_id, from_node, to_node) SELECT fid, e.f, e.t FROM unnest(p_from, p_to) AS e(f, t);
  PERFORM pg_notify('@C', '');
  RETURN fid;
END $$;

-- A dead job back for a fresh round of attempts (its attempt number, the
-- fence, keeps rising).
CREATE FUNCTION @S.retry_dead(p_id bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE @S.jobs SET state = 'available', attempt_base = attempt, retrying = false, run_at = now()
    WHERE id = p_id AND state = 'dead';
  IF NOT FOUND THEN RETURN false; END IF;
  PERFORM pg_notify('@C', '');
  RETURN true;
END $$;

-- Drops a dead job; a workflow node takes every node depending on it along
-- and the workflow fails (it ends once nothing else is left).
CREATE FUNCTION @S.discard_dead(p_id bigint, p_retain_ms bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE j record; gone integer; left_over integer;
BEGIN
  SELECT * INTO j FROM @S.jobs WHERE id = p_id AND state = 'dead' FOR UPDATE;
  IF NOT FOUND THEN RETURN false; END IF;
  IF j.flow_id IS NULL THEN
    DELETE FROM @S.jobs WHERE id = p_id;
    RETURN true;
  END IF;
  WITH RECURSIVE doomed(node) AS (
    SELECT j.flow_node
    UNION
    SELECT e.to_node FROM @S.flow_edges e JOIN doomed d ON e.flow_id = j.flow_id AND e.from_node = d.node)
  DELETE FROM @S.jobs x USING doomed d WHERE x.flow_id = j.flow_id AND x.flow_node = d.node AND x.state <> 'completed';
  GET DIAGNOSTICS gone = ROW_COUNT;
  UPDATE @S.workflows SET remaining = remaining - gone, failed = true WHERE id = j.flow_id RETURNING remaining INTO left_over;
  IF left_over = 0 THEN PERFORM @S.end_workflow(j.flow_id, p_retain_ms); END IF;
  RETURN true;
END $$;

-- Creates a global group or changes its limit (rate: per_second and burst).
CREATE FUNCTION @S.set_group(p_name text, p_kind text, p_limit integer, p_per_second double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO @S.groups (name, kind, lim, per_second) VALUES (p_name, p_kind, p_limit, p_per_second)
    ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, lim = excluded.lim, per_second = excluded.per_second;
  PERFORM pg_notify('@C', '');
END $$;

-- When the next delayed or retrying job falls due, or a rate group refills,
-- in milliseconds from now (NULL: nothing is waiting for a time).
CREATE FUNCTION @S.next_due_ms() RETURNS bigint LANGUAGE sql AS $$
  SELECT ceil(extract(epoch FROM least(
    (SELECT min(run_at) FROM @S.jobs WHERE state = 'available' AND run_at > now()),
    (SELECT min(tat) FROM @S.groups WHERE kind = 'rate' AND tat > now())) - now()) * 1000)::bigint;
$$;
)SQL";

constexpr std::array<const char*, kSchemaVersion> kMigrations = {kVersion1};

}  // namespace

std::string in_schema(std::string sql, const std::string& schema) {
  const std::string channel = schema + "_ready";
  for (std::size_t at = sql.find('@'); at != std::string::npos; at = sql.find('@', at)) {
    if (at + 1 < sql.size() && sql[at + 1] == 'S') {
      sql.replace(at, 2, schema);
      at += schema.size();
    } else if (at + 1 < sql.size() && sql[at + 1] == 'C') {
      sql.replace(at, 2, channel);
      at += channel.size();
    } else {
      ++at;
    }
  }
  return sql;
}

void migrate(Connection& conn, const std::string& schema) {
  conn.run_script("BEGIN");
  try {
    conn.exec("SELECT pg_advisory_xact_lock(hashtext($1))", {Param("ordo.migrate." + schema)});
    conn.run_script(in_schema(
        "CREATE SCHEMA IF NOT EXISTS @S;"
        "CREATE TABLE IF NOT EXISTS @S.schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
        schema));
    const int have = static_cast<int>(conn.exec(in_schema("SELECT coalesce(max(version), 0) FROM @S.schema_migrations", schema)).int64(0, 0));
    if (have > kSchemaVersion) {
      throw StoreError("ordo: postgres: schema '" + schema + "' is at version " + std::to_string(have) +
                       ", newer than this ordo knows (" + std::to_string(kSchemaVersion) + "): upgrade ordo");
    }
    for (int v = have + 1; v <= kSchemaVersion; ++v) {
      conn.run_script(in_schema(kMigrations[static_cast<std::size_t>(v - 1)], schema));
      conn.exec(in_schema("INSERT INTO @S.schema_migrations (version) VALUES ($1)", schema), {Param(std::int64_t{v})});
    }
    conn.run_script("COMMIT");
  } catch (...) {
    if (!conn.broken()) {
      try {
        conn.run_script("ROLLBACK");
      } catch (...) {  // the original error says more
      }
    }
    throw;
  }
}

}  // namespace ordo::detail::pg
