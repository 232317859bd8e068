-- aurora-bootstrap: make IAM database users on Aurora PostgreSQL.
--
-- Idempotent: a second run with the same inputs changes nothing. It reads its inputs
-- from transaction-local settings, which the job sets with set_config(..., true):
--   bootstrap.iam_users    JSON list of {"name": ..., "roles": [...]}
--   bootstrap.master_user  the user running this script; never made an IAM user
--   bootstrap.prune        true: managed users no longer listed lose LOGIN and rds_iam
--   bootstrap.group_roles  JSON object {"group": [grant, ...]}: GROUP_ROLES, resolved
--                          (unset: no group is declared)
--
-- It makes the roles, which are the cluster's; sql/privileges.sql then gives the groups
-- their privileges, in each database (see there).
--
-- To run it by hand, in one transaction:
--   psql -v ON_ERROR_STOP=1 --single-transaction \
--     -c "SELECT set_config('bootstrap.iam_users', '[{\"name\": \"app_user\", \"roles\": [\"app_readonly\"]}]', true),
--                set_config('bootstrap.master_user', current_user, true),
--                set_config('bootstrap.prune', 'false', true),
--                set_config('bootstrap.group_roles', '{\"app_readonly\": []}', true)" \
--     -f sql/init.sql
--
-- The users this script manages are the members of the role aurora_bootstrap_managed;
-- the listed roles it granted them itself (the only ones it revokes when they are no
-- longer listed) are recorded in that role's comment. Group roles it creates carry the
-- comment 'managed by aurora-bootstrap (group role)'. verify and prune only ever touch
-- managed users. The users block below says what is written per user, and why.
-- Names from the inputs reach SQL only through format('%I'). Comments are read with a
-- correlated lookup in pg_shdescription: shobj_description() costs a query per call,
-- and a join lets stale catalog statistics pick a plan quadratic in the users.


-- Group roles: each group GROUP_ROLES declares is a NOLOGIN role, made here if missing
-- (what each may do, database by database, is sql/privileges.sql's work).
DO $$
DECLARE
    group_marker CONSTANT text := 'managed by aurora-bootstrap (group role)';
    declared CONSTANT jsonb :=
        coalesce(nullif(current_setting('bootstrap.group_roles', true), ''), '{}')::jsonb;
    r record;
BEGIN
    IF jsonb_typeof(declared) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'bootstrap.group_roles must be a JSON object, got %', jsonb_typeof(declared);
    END IF;
    FOR r IN
        SELECT g.name, p.oid IS NULL AS missing
        FROM jsonb_object_keys(declared) AS g(name)
        LEFT JOIN pg_roles p ON p.rolname = g.name
        WHERE p.oid IS NULL
           OR (SELECT d.description FROM pg_shdescription d
               WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass)
              = 'managed by aurora-bootstrap'  -- marked as a user by an earlier version
        ORDER BY 1
    LOOP
        IF r.missing THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r.name);
        END IF;
        EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, group_marker);
    END LOOP;
END
$$;


-- IAM users. Each step only acts on what is missing, so a no-op run only reads.
--
-- What is written per user, and why. From PostgreSQL 16 a CREATEROLE master holds
-- ADMIN OPTION on every role it created, and every statement that checks ADMIN
-- OPTION on a role (COMMENT ON ROLE, ALTER ROLE, GRANT or REVOKE of it) walks all
-- of those memberships: one such statement per user makes a run O(users^2). So the
-- only per-user statements are CREATE ROLE for a new user (the floor: psql pays it
-- too), ALTER ROLE for a user whose LOGIN must be restored or, when pruning, taken,
-- and REVOKE of a listed role the job granted and no longer lists. Everything else is
-- one statement per run or per role:
-- - managed users are the members of the role aurora_bootstrap_managed (the marker),
--   granted to all new and adopted users in one GRANT;
-- - the listed roles the job granted each user (the only ones it revokes when they
--   are no longer listed) are recorded as JSON in that role's comment, one COMMENT
--   per run when the record changes;
-- - rds_iam and each listed role are granted in one GRANT naming all new members.
-- Users marked by earlier versions with a comment of their own
-- ('managed by aurora-bootstrap' and their granted roles) are made members, and
-- their record moved, in the same transaction; their comments are left as they are.
DO $$
DECLARE
    marker CONSTANT text := 'managed by aurora-bootstrap';  -- earlier versions' users
    group_marker CONSTANT text := 'managed by aurora-bootstrap (group role)';
    managed CONSTANT text := 'aurora_bootstrap_managed';
    record_prefix CONSTANT text :=
        'aurora-bootstrap: its members are the users aurora-bootstrap manages; ';
    master CONSTANT text := current_setting('bootstrap.master_user');
    master_oid CONSTANT oid := (SELECT oid FROM pg_roles WHERE rolname = master);
    listed jsonb := current_setting('bootstrap.iam_users')::jsonb;
    prune CONSTANT boolean := current_setting('bootstrap.prune')::boolean;
    pg16 CONSTANT boolean := current_setting('server_version_num')::int >= 160000;
    managed_oid oid;
    comment_was text;
    recorded jsonb;  -- {"user": ["role", ...]}: listed roles the job granted each user
    recorded_now jsonb;
    granted_now text[] := '{}';  -- 'user:role' for each listed role granted in this run
    legacy text[];  -- users marked by an earlier version's comment
    retired text[];  -- managed users no longer listed, when pruning
    r record;
BEGIN
    IF jsonb_typeof(listed) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'bootstrap.iam_users must be a JSON list, got %', jsonb_typeof(listed);
    END IF;

    -- rds_iam disables password login: never for the user that runs this script.
    FOR r IN
        SELECT u.name FROM jsonb_to_recordset(listed) AS u(name text)
        WHERE u.name IN (master, session_user, current_user, managed)
    LOOP
        RAISE EXCEPTION 'refusing to make % an IAM user', r.name
            USING HINT = 'the master user would lose its password login, and '
                         || managed || ' is the marker of managed users; remove it from IAM_USERS';
    END LOOP;

    -- The marker role and, in its comment, the record of granted roles.
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = managed) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', managed);
    END IF;
    managed_oid := managed::regrole;
    comment_was := (SELECT d.description FROM pg_shdescription d
                    WHERE d.objoid = managed_oid AND d.classoid = 'pg_authid'::regclass);
    recorded := coalesce(substring(comment_was FROM '(\{.*\})$')::jsonb -> 'granted', '{}');

    -- Group roles that are listed but do not exist yet.
    FOR r IN
        SELECT DISTINCT g.role
        FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
        CROSS JOIN LATERAL unnest(coalesce(u.roles, '{}')) AS g(role)
        WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = g.role)
          AND g.role NOT IN (SELECT name FROM jsonb_to_recordset(listed) AS l(name text))
        ORDER BY 1
    LOOP
        EXECUTE format('CREATE ROLE %I NOLOGIN', r.role);
        EXECUTE format('COMMENT ON ROLE %I IS %L', r.role, group_marker);
    END LOOP;

    -- Groups an earlier version marked as users: named as a role by a listed user,
    -- or with a member other than the master user (which, from PostgreSQL 16, is a
    -- member of every role it created).
    FOR r IN
        SELECT p.rolname AS name
        FROM pg_roles p
        WHERE (SELECT d.description FROM pg_shdescription d
               WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass) = marker
          AND p.rolname NOT IN (SELECT name FROM jsonb_to_recordset(listed) AS l(name text))
          AND (p.rolname IN (SELECT g FROM jsonb_to_recordset(listed) AS u(roles text[]),
                                  unnest(coalesce(u.roles, '{}')) AS g)
               OR EXISTS (SELECT FROM pg_auth_members a
                          WHERE a.roleid = p.oid AND a.member <> master_oid))
        ORDER BY 1
    LOOP
        EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, group_marker);
    END LOOP;

    -- Users an earlier version marked with a comment of their own: they join the
    -- marker role below, and the roles their comment recorded join the record.
    SELECT coalesce(array_agg(l.name ORDER BY l.name), '{}'),
           recorded || coalesce(jsonb_object_agg(l.name, l.granted)
                                FILTER (WHERE jsonb_array_length(l.granted) > 0), '{}')
    INTO legacy, recorded
    FROM (
        SELECT p.rolname AS name,
               coalesce(substring(c.comment FROM '^managed by aurora-bootstrap (\{.*\})$')::jsonb
                        -> 'granted', '[]') AS granted
        FROM pg_roles p
        CROSS JOIN LATERAL (
            SELECT d.description AS comment FROM pg_shdescription d
            WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass) AS c
        WHERE c.comment ~ '^managed by aurora-bootstrap( \{.*\})?$'
          AND p.rolname NOT IN (master, session_user, current_user)
          AND NOT EXISTS (SELECT FROM pg_auth_members a
                          WHERE a.member = p.oid AND a.roleid = managed_oid)
    ) AS l;

    -- From PostgreSQL 16 the master may only alter roles it holds ADMIN OPTION on, as
    -- it does on those it created. A listed user made by another administrator whose
    -- LOGIN must be restored is named here with the fix, before anything fails
    -- midway. The direct membership is looked up first: pg_has_role walks all of the
    -- master's memberships.
    IF pg16 THEN
        FOR r IN
            SELECT u.name
            FROM jsonb_to_recordset(listed) AS u(name text)
            JOIN pg_roles p ON p.rolname = u.name
            -- CASE fixes the order: pg_has_role only where nothing cheaper decides.
            WHERE CASE WHEN p.rolcanlogin AND p.rolconnlimit <> 0 THEN false
                       WHEN EXISTS (SELECT FROM pg_auth_members a
                                    WHERE a.roleid = p.oid AND a.member = master_oid
                                      AND a.admin_option) THEN false
                       ELSE NOT pg_has_role(master, p.oid, 'USAGE WITH ADMIN OPTION') END
            ORDER BY 1
            LIMIT 1
        LOOP
            RAISE EXCEPTION 'the master user % cannot give role % LOGIN (or lift its connection limit of 0): it has no ADMIN OPTION on it',
                master, r.name
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('From PostgreSQL 16 only a role holding ADMIN OPTION on %I '
                                      'may alter it; it was created by another administrator.',
                                      r.name),
                      HINT = format('As a superuser or as its creator: GRANT %I TO %I WITH ADMIN OPTION',
                                    r.name, master);
        END LOOP;
    END IF;

    -- Users: create the missing ones (all in this one block, one round trip), and
    -- restore LOGIN where it was taken and a connection limit of 0 (no connection at
    -- all: back to no limit; any other limit is the administrator's). On PostgreSQL
    -- 15 a user that does not inherit (NOINHERIT) cannot use its groups: it does.
    FOR r IN
        SELECT u.name, p.oid IS NULL AS missing,
               concat(CASE WHEN NOT p.rolcanlogin THEN ' LOGIN' END,
                      CASE WHEN p.rolconnlimit = 0 THEN ' CONNECTION LIMIT -1' END,
                      CASE WHEN NOT pg16 AND NOT p.rolinherit
                                AND jsonb_array_length(coalesce(u.roles, '[]')) > 0
                           THEN ' INHERIT' END) AS repair
        FROM jsonb_to_recordset(listed) AS u(name text, roles jsonb)
        LEFT JOIN pg_roles p ON p.rolname = u.name
        WHERE p.oid IS NULL OR NOT p.rolcanlogin OR p.rolconnlimit = 0
           OR (NOT pg16 AND NOT p.rolinherit AND jsonb_array_length(coalesce(u.roles, '[]')) > 0)
        ORDER BY 1
    LOOP
        IF r.missing THEN
            EXECUTE format('CREATE ROLE %I WITH LOGIN', r.name);
        ELSE
            EXECUTE format('ALTER ROLE %I WITH%s', r.name, r.repair);
        END IF;
    END LOOP;

    -- Roles the job granted earlier (in the record) and no longer lists are revoked;
    -- grants made by anyone else are never touched. From PostgreSQL 16 a membership
    -- belongs to its grantor, so the job revokes its own grant by name.
    FOR r IN
        WITH dropped AS MATERIALIZED (
            SELECT u.name, p.oid AS member, g.role
            FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
            JOIN pg_roles p ON p.rolname = u.name
            CROSS JOIN LATERAL jsonb_array_elements_text(
                coalesce(recorded -> u.name, '[]')) AS g(role)
            WHERE g.role <> ALL (coalesce(u.roles, '{}'))
        )
        SELECT x.name, x.role, gr.rolname AS grantor
        FROM dropped x
        JOIN pg_roles gp ON gp.rolname = x.role
        JOIN pg_auth_members a ON a.member = x.member AND a.roleid = gp.oid
        JOIN pg_roles gr ON gr.oid = a.grantor
        WHERE pg_has_role(current_user, a.grantor, 'USAGE')
        ORDER BY 1, 2
    LOOP
        IF pg16 THEN
            EXECUTE format('REVOKE %I FROM %I GRANTED BY %I', r.role, r.name, r.grantor);
        ELSE
            EXECUTE format('REVOKE %I FROM %I', r.role, r.name);
        END IF;
    END LOOP;

    -- Memberships: the marker, rds_iam and the listed roles, where not already a
    -- member. One GRANT per role, naming all its new members.
    FOR r IN
        SELECT w.role, array_agg(DISTINCT w.name ORDER BY w.name) AS names
        FROM (
            SELECT g.role, u.name
            FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
            CROSS JOIN LATERAL unnest(ARRAY[managed, 'rds_iam'] || coalesce(u.roles, '{}'))
                AS g(role)
            JOIN pg_roles pu ON pu.rolname = u.name
            JOIN pg_roles pr ON pr.rolname = g.role
            WHERE NOT EXISTS (
                SELECT FROM pg_auth_members a WHERE a.member = pu.oid AND a.roleid = pr.oid)
            UNION
            SELECT managed, n FROM unnest(legacy) AS n
        ) AS w
        GROUP BY w.role
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT %I TO %s', r.role,
                       (SELECT string_agg(format('%I', n), ', ') FROM unnest(r.names) AS n));
        IF r.role NOT IN ('rds_iam', managed) THEN
            granted_now := granted_now || ARRAY(SELECT n || ':' || r.role FROM unnest(r.names) AS n);
        END IF;
    END LOOP;

    -- From PostgreSQL 16 each membership says whether its member inherits the role's
    -- privileges: a listed role held only without INHERIT gives the user none of
    -- them. One GRANT per role gives them INHERIT (the master's own grant changes, or
    -- one of its own is added beside another administrator's).
    IF pg16 THEN
        FOR r IN
            SELECT g.role, string_agg(format('%I', u.name), ', ' ORDER BY u.name) AS names
            FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
            CROSS JOIN LATERAL unnest(coalesce(u.roles, '{}')) AS g(role)
            JOIN pg_roles pu ON pu.rolname = u.name
            JOIN pg_roles pr ON pr.rolname = g.role
            -- The memberships held only without INHERIT, found in one pass over the
            -- catalog: a lookup per user scanned every member of its group (the
            -- planner kept only the role in the index condition), 10,000 users in a
            -- group taking 7 s.
            JOIN (SELECT a.member, a.roleid FROM pg_auth_members a
                  GROUP BY a.member, a.roleid
                  HAVING NOT bool_or(a.inherit_option)) AS w
              ON w.member = pu.oid AND w.roleid = pr.oid
            GROUP BY g.role
            ORDER BY 1
        LOOP
            EXECUTE format('GRANT %I TO %s WITH INHERIT TRUE', r.role, r.names);
        END LOOP;
    END IF;

    -- The record: for listed users, the recorded roles still listed and those granted
    -- now; for others that still exist, what was recorded (a pruned user may be
    -- listed again).
    recorded_now := (
        WITH wanted AS (  -- listed users and their roles, as one object: keyed lookups
            SELECT jsonb_object_agg(u.name, coalesce(u.roles, '[]')) AS j
            FROM jsonb_to_recordset(listed) AS u(name text, roles jsonb)
        )
        SELECT coalesce(jsonb_object_agg(x.name, x.roles), '{}')
        FROM (
            SELECT y.name, jsonb_agg(DISTINCT y.role ORDER BY y.role) AS roles
            FROM (
                SELECT e.key AS name, g.role
                FROM wanted
                CROSS JOIN jsonb_each(recorded) AS e
                CROSS JOIN LATERAL jsonb_array_elements_text(e.value) AS g(role)
                WHERE CASE WHEN wanted.j ? e.key THEN (wanted.j -> e.key) ? g.role
                           ELSE EXISTS (SELECT FROM pg_roles WHERE rolname = e.key) END
                UNION
                SELECT split_part(n, ':', 1), split_part(n, ':', 2) FROM unnest(granted_now) AS n
            ) AS y
            GROUP BY y.name
        ) AS x
    );
    IF comment_was IS DISTINCT FROM
       record_prefix || jsonb_build_object('granted', recorded_now)::text THEN
        EXECUTE format('COMMENT ON ROLE %I IS %L', managed,
                       record_prefix || jsonb_build_object('granted', recorded_now)::text);
    END IF;

    -- Prune: managed users no longer listed keep their objects (never dropped) and
    -- stay managed, but lose LOGIN and rds_iam. From PostgreSQL 16 a membership
    -- belongs to its grantor, so each rds_iam grant is revoked as the grantor recorded
    -- it; one the master cannot act for (another administrator's) stays, and the job
    -- reports it. Group roles are not users: one given LOGIN by hand stays.
    IF prune THEN
        retired := ARRAY(
            SELECT p.rolname
            FROM pg_auth_members m
            JOIN pg_roles p ON p.oid = m.member
            WHERE m.roleid = managed_oid
              AND NOT m.admin_option  -- from PostgreSQL 16 its creator is a member too
              AND p.rolname NOT IN (SELECT name FROM jsonb_to_recordset(listed) AS l(name text))
              AND p.rolname NOT IN (master, session_user, current_user));
        FOR r IN
            SELECT gr.rolname AS grantor,
                   string_agg(format('%I', p.rolname), ', ' ORDER BY p.rolname) AS names
            FROM pg_roles p
            JOIN pg_auth_members a ON a.member = p.oid AND a.roleid = 'rds_iam'::regrole
            JOIN pg_roles gr ON gr.oid = a.grantor
            WHERE p.rolname = ANY (retired)
              AND (NOT pg16 OR pg_has_role(current_user, a.grantor, 'USAGE'))
            GROUP BY gr.rolname
            ORDER BY 1
        LOOP
            IF pg16 THEN
                EXECUTE format('REVOKE rds_iam FROM %s GRANTED BY %I', r.names, r.grantor);
            ELSE
                EXECUTE format('REVOKE rds_iam FROM %s', r.names);
            END IF;
        END LOOP;
        -- From PostgreSQL 16 a user another administrator made can only be altered
        -- with ADMIN OPTION on it, which the master lacks: it keeps LOGIN, and the job
        -- reports it with the grant that lets the next run retire it.
        FOR r IN
            SELECT p.rolname AS name
            FROM pg_roles p
            WHERE p.rolcanlogin AND p.rolname = ANY (retired)
              AND CASE WHEN NOT pg16 THEN true
                       WHEN EXISTS (SELECT FROM pg_auth_members a
                                    WHERE a.roleid = p.oid AND a.member = master_oid
                                      AND a.admin_option) THEN true
                       ELSE pg_has_role(master, p.oid, 'USAGE WITH ADMIN OPTION') END
            ORDER BY 1
        LOOP
            EXECUTE format('ALTER ROLE %I WITH NOLOGIN', r.name);
        END LOOP;
    END IF;
END
$$;
