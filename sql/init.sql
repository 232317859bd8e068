-- aurora-bootstrap: make IAM database users on Aurora PostgreSQL.
--
-- Idempotent: a second run with the same inputs changes nothing. It reads its inputs
-- from transaction-local settings, which the job sets with set_config(..., true):
--   bootstrap.iam_users    JSON list of {"name": ..., "roles": [...]}
--   bootstrap.master_user  the user running this script; never made an IAM user
--   bootstrap.prune        true: managed users no longer listed lose LOGIN and rds_iam
--
-- To run it by hand, in one transaction:
--   psql -v ON_ERROR_STOP=1 --single-transaction \
--     -c "SELECT set_config('bootstrap.iam_users', '[{\"name\": \"app_user\", \"roles\": [\"app_readonly\"]}]', true),
--                set_config('bootstrap.master_user', current_user, true),
--                set_config('bootstrap.prune', 'false', true)" \
--     -f sql/init.sql
--
-- Every role this script creates or provisions carries a marker comment: users
-- 'managed by aurora-bootstrap', followed by {"granted": [...]} (the listed roles this
-- script granted itself, the only ones it revokes when they are no longer listed);
-- group roles 'managed by aurora-bootstrap (group role)'. verify and prune only ever
-- touch users with the marker. Earlier versions marked groups as users: such a group
-- (named as a role by a listed user, or with a member other than the master user) is
-- re-marked as a group.
-- Names from the inputs reach SQL only through format('%I'). Comments are read with a
-- correlated lookup in pg_shdescription: shobj_description() costs a query per call,
-- and a join lets stale catalog statistics pick a plan quadratic in the users.


-- Group roles: a starting point, to be edited to fit the application's schemas.
DO $$
DECLARE
    group_marker CONSTANT text := 'managed by aurora-bootstrap (group role)';
    grp text;
BEGIN
    FOREACH grp IN ARRAY ARRAY['app_readonly', 'app_readwrite'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = grp) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', grp);
            EXECUTE format('COMMENT ON ROLE %I IS %L', grp, group_marker);
        ELSIF (SELECT d.description FROM pg_shdescription d
               WHERE d.objoid = grp::regrole AND d.classoid = 'pg_authid'::regclass)
              = 'managed by aurora-bootstrap' THEN
            -- Marked as a user by an earlier version.
            EXECUTE format('COMMENT ON ROLE %I IS %L', grp, group_marker);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO app_readonly, app_readwrite;

-- Tables and sequences already in schema public. Only objects the master user owns
-- (directly or through a role) can be granted on; other owners' objects are left to
-- them, rather than failing the whole run on "permission denied".
DO $$
DECLARE
    obj record;
BEGIN
    FOR obj IN
        SELECT p.kind, format('%I.%I', n.nspname, c.relname) AS rel, p.grp,
               string_agg(p.privilege, ', ' ORDER BY p.privilege) AS privileges
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN (VALUES
            ('TABLE', 'app_readonly', 'SELECT'),
            ('TABLE', 'app_readwrite', 'SELECT'),
            ('TABLE', 'app_readwrite', 'INSERT'),
            ('TABLE', 'app_readwrite', 'UPDATE'),
            ('TABLE', 'app_readwrite', 'DELETE'),
            ('SEQUENCE', 'app_readwrite', 'USAGE'),
            ('SEQUENCE', 'app_readwrite', 'SELECT')
        ) AS p(kind, grp, privilege)
          ON p.kind = CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END
        WHERE n.nspname = 'public'
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND pg_has_role(c.relowner, 'USAGE')
          AND NOT CASE c.relkind
                WHEN 'S' THEN has_sequence_privilege(p.grp, c.oid, p.privilege)
                ELSE has_table_privilege(p.grp, c.oid, p.privilege) END
        GROUP BY 1, 2, 3
        ORDER BY 2, 3
    LOOP
        EXECUTE format('GRANT %s ON %s %s TO %I', obj.privileges, obj.kind, obj.rel, obj.grp);
    END LOOP;
END
$$;

-- Tables the master user creates later get the same privileges.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO app_readonly;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app_readwrite;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO app_readwrite;


-- IAM users. Each step only acts on what is missing, so a no-op run only reads.
DO $$
DECLARE
    marker CONSTANT text := 'managed by aurora-bootstrap';
    group_marker CONSTANT text := 'managed by aurora-bootstrap (group role)';
    master CONSTANT text := current_setting('bootstrap.master_user');
    master_oid CONSTANT oid := (SELECT oid FROM pg_roles WHERE rolname = master);
    listed jsonb := current_setting('bootstrap.iam_users')::jsonb;
    prune CONSTANT boolean := current_setting('bootstrap.prune')::boolean;
    pg16 CONSTANT boolean := current_setting('server_version_num')::int >= 160000;
    granted_now text[] := '{}';  -- 'user:role' for each listed role granted in this run
    retired text[];  -- managed users no longer listed, when pruning
    r record;
BEGIN
    IF jsonb_typeof(listed) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'bootstrap.iam_users must be a JSON list, got %', jsonb_typeof(listed);
    END IF;

    -- rds_iam disables password login: never for the user that runs this script.
    FOR r IN
        SELECT u.name FROM jsonb_to_recordset(listed) AS u(name text)
        WHERE u.name IN (master, session_user, current_user)
    LOOP
        RAISE EXCEPTION 'refusing to make the master user % an IAM user', r.name
            USING HINT = 'rds_iam would disable its password login; remove it from IAM_USERS';
    END LOOP;

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

    -- From PostgreSQL 16 the master may only alter or comment on roles it holds ADMIN
    -- OPTION on, as it does on those it created. A listed user made by another
    -- administrator that needs either is named here with the fix, before anything
    -- fails midway. The direct membership is looked up first: pg_has_role walks all
    -- of the master's memberships.
    IF pg16 THEN
        FOR r IN
            SELECT u.name
            FROM jsonb_to_recordset(listed) AS u(name text)
            JOIN pg_roles p ON p.rolname = u.name
            WHERE (NOT p.rolcanlogin
                   OR coalesce((SELECT d.description FROM pg_shdescription d
                                WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass),
                               '') !~ '^managed by aurora-bootstrap( \{.*\})?$')
              AND NOT EXISTS (SELECT FROM pg_auth_members a
                              WHERE a.roleid = p.oid AND a.member = master_oid AND a.admin_option)
              AND NOT pg_has_role(master, p.oid, 'USAGE WITH ADMIN OPTION')
            ORDER BY 1
            LIMIT 1
        LOOP
            RAISE EXCEPTION 'the master user % cannot provision role %: it has no ADMIN OPTION on it',
                master, r.name
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('From PostgreSQL 16 only a role holding ADMIN OPTION on %I '
                                      'may alter it or comment on it; it was created by another '
                                      'administrator.', r.name),
                      HINT = format('As a superuser or as its creator: GRANT %I TO %I WITH ADMIN OPTION',
                                    r.name, master);
        END LOOP;
    END IF;

    -- Users: create, or make sure they can log in. A new user gets its marker at
    -- once, naming the listed roles granted to it below: from PostgreSQL 16 each
    -- COMMENT checks the master's ADMIN OPTION by walking all the master's
    -- memberships, which is cheapest while the new users have none of their own.
    FOR r IN
        SELECT u.name, p.oid IS NULL AS missing,
               CASE WHEN cardinality(coalesce(u.roles, '{}')) = 0 THEN marker
                    ELSE marker || ' ' || jsonb_build_object('granted', (
                        SELECT jsonb_agg(DISTINCT g ORDER BY g) FROM unnest(u.roles) AS g))::text
               END AS comment
        FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
        LEFT JOIN pg_roles p ON p.rolname = u.name
        WHERE p.oid IS NULL OR NOT p.rolcanlogin
        ORDER BY 1
    LOOP
        IF r.missing THEN
            EXECUTE format('CREATE ROLE %I WITH LOGIN', r.name);
            EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, r.comment);
        ELSE
            EXECUTE format('ALTER ROLE %I WITH LOGIN', r.name);
        END IF;
    END LOOP;

    -- Roles the job granted earlier (recorded in the marker) and no longer lists are
    -- revoked; grants made by anyone else are never touched. From PostgreSQL 16 a
    -- membership belongs to its grantor, so the job revokes its own grant by name.
    FOR r IN
        WITH dropped AS MATERIALIZED (
            -- Per user, once: recorded roles that are no longer listed.
            SELECT u.name, p.oid AS member, g.role
            FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
            JOIN pg_roles p ON p.rolname = u.name
            CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(substring(
                (SELECT d.description FROM pg_shdescription d
                 WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass)
                FROM '^managed by aurora-bootstrap (\{.*\})$'
            )::jsonb -> 'granted', '[]')) AS g(role)
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

    -- Memberships: rds_iam and the listed roles, where not already a member. One
    -- GRANT per role, naming all its new members: from PostgreSQL 16 every GRANT
    -- checks the master's ADMIN OPTION by walking all its memberships, which grow
    -- with each role it creates, so a GRANT per user would cost O(users^2). The
    -- listed roles granted here are recorded, so that they can be revoked later.
    FOR r IN
        SELECT g.role, array_agg(u.name ORDER BY u.name) AS names
        FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
        CROSS JOIN LATERAL unnest('{rds_iam}' || coalesce(u.roles, '{}')) AS g(role)
        JOIN pg_roles pu ON pu.rolname = u.name
        JOIN pg_roles pr ON pr.rolname = g.role
        WHERE NOT EXISTS (
            SELECT FROM pg_auth_members a WHERE a.member = pu.oid AND a.roleid = pr.oid)
        GROUP BY g.role
        ORDER BY 1
    LOOP
        EXECUTE format('GRANT %I TO %s', r.role,
                       (SELECT string_agg(format('%I', n), ', ') FROM unnest(r.names) AS n));
        IF r.role <> 'rds_iam' THEN
            granted_now := granted_now || ARRAY(SELECT n || ':' || r.role FROM unnest(r.names) AS n);
        END IF;
    END LOOP;

    -- The marker that lets verify and prune recognise the users this job manages:
    -- 'managed by aurora-bootstrap', followed by {"granted": [...]} when the job has
    -- granted listed roles itself (still listed ones from before, and today's).
    FOR r IN
        WITH present AS (
            SELECT u.name, coalesce(u.roles, '{}') AS roles,
                   coalesce((SELECT d.description FROM pg_shdescription d
                             WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass),
                            '') AS comment
            FROM jsonb_to_recordset(listed) AS u(name text, roles text[])
            JOIN pg_roles p ON p.rolname = u.name
        ), granted AS (
            SELECT c.name, e.role
            FROM present c
            CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(substring(
                c.comment FROM '^managed by aurora-bootstrap (\{.*\})$')::jsonb -> 'granted', '[]')
            ) AS e(role)
            WHERE e.role = ANY (c.roles)
            UNION
            SELECT split_part(n, ':', 1), split_part(n, ':', 2) FROM unnest(granted_now) AS n
        ), wanted AS (
            SELECT c.name, c.comment,
                   CASE WHEN count(g.role) = 0 THEN marker
                        ELSE marker || ' ' || jsonb_build_object(
                            'granted', jsonb_agg(DISTINCT g.role ORDER BY g.role))::text
                   END AS comment_wanted
            FROM present c
            LEFT JOIN granted g ON g.name = c.name
            GROUP BY c.name, c.comment
        )
        SELECT name, comment_wanted FROM wanted
        WHERE comment IS DISTINCT FROM comment_wanted
        ORDER BY 1
    LOOP
        EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, r.comment_wanted);
    END LOOP;

    -- Prune: managed users no longer listed keep their objects (never dropped) but lose
    -- LOGIN and rds_iam. Group roles are not users: one given LOGIN by hand stays. From
    -- PostgreSQL 16 a membership belongs to its grantor, so each rds_iam grant is
    -- revoked as the grantor recorded it; one the master cannot act for (another
    -- administrator's) stays, and the job reports it.
    IF prune THEN
        retired := ARRAY(
            SELECT p.rolname
            FROM pg_roles p
            WHERE (SELECT d.description FROM pg_shdescription d
                   WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass)
                  ~ '^managed by aurora-bootstrap( \{.*\})?$'
              AND p.rolname NOT IN (SELECT name FROM jsonb_to_recordset(listed) AS l(name text))
              AND p.rolname NOT IN (master, session_user, current_user)
              AND NOT ((SELECT d.description FROM pg_shdescription d
                        WHERE d.objoid = p.oid AND d.classoid = 'pg_authid'::regclass) = marker
                       AND (p.rolname IN (SELECT g FROM jsonb_to_recordset(listed) AS u(roles text[]),
                                               unnest(coalesce(u.roles, '{}')) AS g)
                            OR EXISTS (SELECT FROM pg_auth_members a
                                       WHERE a.roleid = p.oid AND a.member <> master_oid))));
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
        FOR r IN
            SELECT p.rolname AS name
            FROM pg_roles p
            WHERE p.rolcanlogin AND p.rolname = ANY (retired)
            ORDER BY 1
        LOOP
            EXECUTE format('ALTER ROLE %I WITH NOLOGIN', r.name);
        END LOOP;
    END IF;
END
$$;
