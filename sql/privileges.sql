-- aurora-bootstrap: the privileges of the declared group roles, in the database it runs in.
--
-- Roles are the cluster's, privileges each database's: sql/init.sql makes the roles
-- once, then this file runs in every database the run visits (DB_NAME, in init.sql's
-- own transaction; then each other database GROUP_ROLES names, and each where a
-- declared group holds anything, in a transaction of its own). It reads:
--   bootstrap.group_roles  JSON object {"group": {"member_of": [role, ...], "grants":
--                          [{"database", "schemas", "owners", "objects",
--                          "privileges": {"kind": [privilege, ...]}}, ...]}}: GROUP_ROLES
--                          with every default and access level resolved
--   bootstrap.master_user  the user running this script
--   bootstrap.prune        true: also revoke what the document does not give
--   bootstrap.exact        false for the shipped default, which only adds (default true)
--   bootstrap.roles_here   true in DB_NAME, where the groups' memberships (the cluster's)
--                          are managed and the other databases found (default true)
--   bootstrap.check_only   true (verify): change nothing; list each difference in
--                          bootstrap.drift
-- and leaves in bootstrap.findings (a JSON list) what it could not act on, and in
-- bootstrap.elsewhere (a JSON list) the other databases where a declared group holds
-- privileges that the document does not name.
--
-- To run it by hand, after init.sql, in each database (here: reports):
--   psql -d reports -v ON_ERROR_STOP=1 --single-transaction \
--     -c "SELECT set_config('bootstrap.group_roles', '{\"analyst\": {\"member_of\": [], \"grants\": [{\"database\": \"reports\", \"schemas\": [\"rpt\"], \"owners\": [\"master\"], \"objects\": null, \"privileges\": {\"schema\": [\"USAGE\"], \"tables\": [\"SELECT\"]}}]}}', true),
--                set_config('bootstrap.master_user', current_user, true),
--                set_config('bootstrap.prune', 'false', true),
--                set_config('bootstrap.roles_here', 'false', true)" \
--     -f sql/privileges.sql \
--     -c "SELECT current_setting('bootstrap.findings')"
--
-- A declared group holds, here, exactly what the document gives it: every ACL item
-- naming it on this database, its schemas, relations, columns, sequences and
-- functions, whoever granted it, with or without grant option, and the default
-- privileges of any owner, per schema or global (in DB_NAME also its memberships).
-- What it lacks is granted; under PRUNE what it holds beyond the document is revoked,
-- each item as its grantor (with CASCADE: what the group passed on goes too, and the
-- change report shows it), and a grant option it was not given is taken back from a
-- privilege it keeps. PUBLIC's and other roles' privileges are never looked at.
--
-- The master acts on an object as a member of the role that owns it (its grant is
-- then recorded as the owner's), revokes another grantor's item as that grantor (SET
-- ROLE, where it may), and sets default privileges as a member of the owner (from
-- PostgreSQL 16 with INHERIT). Naming an object needs USAGE on its schema. Whatever
-- the master cannot do is a finding with the statement that does it and who may run
-- it, and the rest applies; under verify it is drift like any other difference.
--
-- One query compares what the groups hold with what the document gives them; the
-- statements it leads to are grouped, one GRANT or REVOKE naming up to 1,000 objects
-- that need the same privileges, so that the work is that of GRANT ... ON ALL
-- TABLES, and the round trips are this one statement, whatever the objects.
DO $$
DECLARE
    declared CONSTANT jsonb := current_setting('bootstrap.group_roles')::jsonb;
    master CONSTANT text := current_setting('bootstrap.master_user');
    prune CONSTANT boolean := current_setting('bootstrap.prune')::boolean;
    check_only CONSTANT boolean :=
        coalesce(nullif(current_setting('bootstrap.check_only', true), ''), 'false')::boolean;
    exact CONSTANT boolean :=
        coalesce(nullif(current_setting('bootstrap.exact', true), ''), 'true')::boolean;
    roles_here CONSTANT boolean :=
        coalesce(nullif(current_setting('bootstrap.roles_here', true), ''), 'true')::boolean;
    pg16 CONSTANT boolean := current_setting('server_version_num')::int >= 160000;
    -- What the document does not give is revoked (PRUNE) or reported (verify); never
    -- for the shipped default, which only adds.
    undeclared CONSTANT boolean := exact AND (prune OR check_only);
    master_oid oid;
    search_path_was CONSTANT text := current_setting('search_path');
    findings jsonb[] := '{}';
    problems jsonb[];  -- what this pass could not act on
    drift jsonb[] := '{}';
    elsewhere jsonb := '[]';
    revoked boolean;
    r record;
BEGIN
    IF jsonb_typeof(declared) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'bootstrap.group_roles must be a JSON object, got %', jsonb_typeof(declared);
    END IF;
    master_oid := (SELECT oid FROM pg_roles WHERE rolname = master);
    -- The comparison sorts a row per object and privilege: in memory, not on disk,
    -- and not compiled (JIT took seconds longer than running it). With no schema on
    -- the search path, regclass names every object with its own.
    PERFORM set_config('work_mem', '64MB', true),
            set_config('jit', 'off', true),
            set_config('search_path', '', true);

    -- What is not there (yet): a group (sql/init.sql makes them; an INIT_SQL of one's
    -- own may not), a schema, an owner, a named object, a role to be a member of.
    -- Nothing can be held on what does not exist: warnings, and the next run picks
    -- them up; a group that is missing is drift.
    drift := ARRAY(
        SELECT jsonb_build_object('role', g.name, 'problem', 'missing')
        FROM jsonb_object_keys(declared) AS g(name)
        WHERE check_only AND roles_here
          AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = g.name)
        ORDER BY 1);
    findings := ARRAY(
        WITH d AS (
            SELECT g.key AS grp, x.*
            FROM jsonb_each(declared) AS g
            CROSS JOIN LATERAL jsonb_to_recordset(g.value -> 'grants')
                AS x(database text, schemas text[], owners text[], objects text[])
            WHERE x.database = current_database()
        )
        SELECT jsonb_build_object('level', 'warning', 'problem', 'group_missing',
                                  'database', current_database(), 'group', g.name)
        FROM jsonb_object_keys(declared) AS g(name)
        WHERE NOT check_only AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = g.name)
        UNION ALL
        SELECT DISTINCT jsonb_build_object('level', 'warning', 'problem', 'schema_missing',
                                           'database', current_database(), 'schema', s.name,
                                           'group', d.grp)
        FROM d CROSS JOIN LATERAL unnest(d.schemas) AS s(name)
        WHERE s.name <> '*' AND NOT EXISTS (SELECT FROM pg_namespace n WHERE n.nspname = s.name)
        UNION ALL
        SELECT DISTINCT jsonb_build_object('level', 'warning', 'problem', 'owner_missing',
                                           'database', current_database(), 'owner', o.name,
                                           'group', d.grp)
        FROM d CROSS JOIN LATERAL unnest(d.owners) AS o(name)
        WHERE d.objects IS NULL AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = o.name)
        UNION ALL
        SELECT DISTINCT jsonb_build_object('level', 'warning', 'problem', 'object_missing',
                                           'database', current_database(), 'schema', n.nspname,
                                           'object', o.name, 'group', d.grp)
        FROM d
        CROSS JOIN LATERAL unnest(d.schemas) AS s(name)
        JOIN pg_namespace n ON n.nspname = s.name
        CROSS JOIN LATERAL unnest(d.objects) AS o(name)
        WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = n.oid
                            AND c.relname = o.name AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S'))
          AND NOT EXISTS (SELECT FROM pg_proc f WHERE f.pronamespace = n.oid AND f.proname = o.name)
        UNION ALL
        SELECT DISTINCT jsonb_build_object('level', 'warning', 'problem', 'role_missing',
                                           'group', g.key, 'member_of', m.name)
        FROM jsonb_each(declared) AS g
        CROSS JOIN LATERAL jsonb_array_elements_text(g.value -> 'member_of') AS m(name)
        WHERE roles_here AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = m.name));

    -- Memberships, the cluster's: in DB_NAME alone. Each declared group is a member of
    -- exactly the roles member_of names, granted with INHERIT (from PostgreSQL 16 a
    -- membership without it gives the group none of the role's privileges). From 16 a
    -- membership belongs to its grantor, and is revoked GRANTED BY it; a grant needs
    -- ADMIN OPTION on the role. On 15 CREATEROLE grants and revokes any role but a
    -- superuser's. The 16 columns are read through the row's JSON, so that one text
    -- serves 15 too.
    IF roles_here THEN
        FOR r IN
            WITH managed AS (
                SELECT p.oid, p.rolname, g.value -> 'member_of' AS member_of
                FROM jsonb_each(declared) AS g JOIN pg_roles p ON p.rolname = g.key
            ),
            want AS (
                SELECT m.oid AS grp, p.oid AS role
                FROM managed m
                CROSS JOIN LATERAL jsonb_array_elements_text(m.member_of) AS w(name)
                JOIN pg_roles p ON p.rolname = w.name
            ),
            have AS (
                SELECT a.member AS grp, a.roleid AS role, a.grantor, a.admin_option,
                       coalesce((to_jsonb(a) ->> 'inherit_option')::boolean, true) AS inherit
                FROM pg_auth_members a
                WHERE a.member IN (SELECT oid FROM managed)
            ),
            diff AS (
                -- Wanted and not held with INHERIT: granted (by the master, with it).
                SELECT 'grant' AS action, w.grp, w.role, NULL::oid AS grantor,
                       CASE WHEN EXISTS (SELECT FROM have h WHERE (h.grp, h.role) = (w.grp, w.role))
                            THEN 'membership_without_inherit' ELSE 'membership_missing' END
                           AS problem
                FROM want w
                WHERE NOT EXISTS (SELECT FROM have h
                                  WHERE (h.grp, h.role) = (w.grp, w.role) AND h.inherit)
                UNION ALL
                SELECT 'revoke', h.grp, h.role, h.grantor, 'membership_undeclared'
                FROM have h
                WHERE undeclared AND NOT EXISTS (SELECT FROM want w
                                                 WHERE (w.grp, w.role) = (h.grp, h.role))
                UNION ALL
                SELECT 'revoke_option', h.grp, h.role, h.grantor, 'admin_option_undeclared'
                FROM have h
                WHERE undeclared AND h.admin_option
                  AND EXISTS (SELECT FROM want w WHERE (w.grp, w.role) = (h.grp, h.role))
            )
            SELECT d.action, d.problem, g.rolname AS grp, p.rolname AS role,
                   gr.rolname AS grantor,
                   CASE
                       WHEN d.action = 'grant' THEN
                           pg_has_role(master, d.role, 'USAGE WITH ADMIN OPTION')
                           OR (NOT pg16 AND NOT p.rolsuper
                               AND (SELECT rolcreaterole FROM pg_roles WHERE oid = master_oid))
                       WHEN pg16 THEN pg_has_role(master, d.grantor, 'USAGE')
                       ELSE pg_has_role(master, d.role, 'USAGE WITH ADMIN OPTION')
                            OR (NOT p.rolsuper
                                AND (SELECT rolcreaterole FROM pg_roles WHERE oid = master_oid))
                   END AS can_act,
                   CASE d.action
                       WHEN 'grant' THEN format('GRANT %I TO %I%s', p.rolname, g.rolname,
                                                CASE WHEN pg16 THEN ' WITH INHERIT TRUE' ELSE '' END)
                       ELSE format('REVOKE %s%I FROM %I%s CASCADE',
                                   CASE d.action WHEN 'revoke_option' THEN 'ADMIN OPTION FOR ' ELSE '' END,
                                   p.rolname, g.rolname,
                                   CASE WHEN pg16 THEN format(' GRANTED BY %I', gr.rolname) ELSE '' END)
                   END AS statement
            FROM diff d
            JOIN pg_roles g ON g.oid = d.grp
            JOIN pg_roles p ON p.oid = d.role
            LEFT JOIN pg_roles gr ON gr.oid = d.grantor
            ORDER BY d.action <> 'revoke', d.action, g.rolname, p.rolname, gr.rolname
        LOOP
            IF check_only THEN
                drift := array_append(drift, jsonb_strip_nulls(jsonb_build_object(
                    'role', r.grp, 'problem', r.problem, 'member_of', r.role,
                    'grantor', r.grantor,
                    'fix', CASE WHEN NOT r.can_act THEN r.statement || ', as ' || CASE
                               WHEN r.action = 'grant' THEN 'a role with ADMIN OPTION on ' || quote_ident(r.role)
                               ELSE quote_ident(r.grantor) || ' or a superuser' END END)));
            ELSIF r.can_act THEN
                EXECUTE r.statement;
            ELSE
                findings := array_append(findings, jsonb_strip_nulls(jsonb_build_object(
                    'level', 'warning',
                    'problem', CASE WHEN r.action = 'grant' THEN 'membership_not_granted'
                                    ELSE 'membership_not_revoked' END,
                    'group', r.grp, 'member_of', r.role, 'grantor', r.grantor,
                    'as', CASE WHEN r.action = 'grant'
                               THEN 'a role with ADMIN OPTION on ' || quote_ident(r.role)
                               ELSE quote_ident(r.grantor) || ' or a superuser' END,
                    'statement', r.statement)));
            END IF;
        END LOOP;
    END IF;

    -- Privileges. A second pass follows a pass that revoked: a revoke's CASCADE may
    -- have taken from another declared group what it held only through this one.
    FOR pass IN 1..2 LOOP
        revoked := false;
        problems := '{}';
        FOR r IN
            WITH managed AS (
                SELECT p.oid FROM jsonb_object_keys(declared) AS g(name)
                JOIN pg_roles p ON p.rolname = g.name
            ),
            -- The grants for this database, each with its group.
            grants AS (
                SELECT p.oid AS grp, x.schemas, x.owners, x.objects, x.privileges
                FROM jsonb_each(declared) AS g
                JOIN pg_roles p ON p.rolname = g.key
                CROSS JOIN LATERAL jsonb_to_recordset(g.value -> 'grants')
                    AS x(database text, schemas text[], owners text[], objects text[],
                         privileges jsonb)
                WHERE x.database = current_database()
            ),
            -- Each existing schema a grant names.
            nsp AS (
                SELECT g.grp, n.oid, n.nspowner AS owner, g.owners, g.objects, g.privileges
                FROM grants g
                JOIN pg_namespace n
                  ON n.nspname = ANY (g.schemas)
                  OR ('*' = ANY (g.schemas)
                      AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema')
            ),
            -- What each grant gives on each of its schemas, per kind of object: joined
            -- to the objects, rather than taken apart for each of them.
            given AS (
                SELECT n.grp, n.oid AS nsp, k.key AS kind, p.privilege
                FROM nsp n
                CROSS JOIN LATERAL jsonb_each(n.privileges) AS k
                CROSS JOIN LATERAL jsonb_array_elements_text(k.value) AS p(privilege)
            ),
            -- kind: d database, n schema, r relation, s sequence, c column (sub: its
            -- number), f function or procedure, D default privileges (obj: the schema,
            -- 0 for global ones; sub: the object type; owner: the role whose new
            -- objects they cover); nsp: the schema an object is in. Rows may repeat
            -- (two grants naming one schema).
            want(kind, obj, sub, owner, nsp, grp, privilege) AS (
                -- Databases are the cluster's: all of them, from DB_NAME.
                SELECT 'd', db.oid, '', db.datdba, 0::oid, p.oid, w.privilege
                FROM jsonb_each(declared) AS g
                JOIN pg_roles p ON p.rolname = g.key
                CROSS JOIN LATERAL jsonb_to_recordset(g.value -> 'grants')
                    AS x(database text, privileges jsonb)
                CROSS JOIN LATERAL jsonb_array_elements_text(x.privileges -> 'database') AS w(privilege)
                JOIN pg_database db ON db.datname = x.database
                WHERE roles_here
                UNION ALL
                SELECT 'n', n.oid, '', n.owner, n.oid, n.grp, p.privilege
                FROM nsp n
                CROSS JOIN LATERAL jsonb_array_elements_text(n.privileges -> 'schema') AS p(privilege)
                UNION ALL
                SELECT CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END, c.oid, '', c.relowner,
                       n.oid, n.grp, p.privilege
                FROM nsp n
                JOIN pg_class c ON c.relnamespace = n.oid
                               AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                               AND (n.objects IS NULL OR c.relname = ANY (n.objects))
                JOIN given p ON (p.grp, p.nsp) = (n.grp, n.oid)
                            AND p.kind = CASE c.relkind WHEN 'S' THEN 'sequences' ELSE 'tables' END
                UNION ALL
                SELECT 'f', f.oid, '', f.proowner, n.oid, n.grp, p.privilege
                FROM nsp n
                JOIN pg_proc f ON f.pronamespace = n.oid
                              AND (n.objects IS NULL OR f.proname = ANY (n.objects))
                JOIN given p ON (p.grp, p.nsp, p.kind) = (n.grp, n.oid, 'functions')
                UNION ALL
                SELECT 'D', n.oid, k.objtype, o.oid, n.oid, n.grp, p.privilege
                FROM nsp n
                CROSS JOIN LATERAL unnest(n.owners) AS w(name)
                JOIN pg_roles o ON o.rolname = w.name
                CROSS JOIN (VALUES ('tables', 'r'), ('sequences', 'S'), ('functions', 'f'))
                    AS k(kind, objtype)
                CROSS JOIN LATERAL jsonb_array_elements_text(n.privileges -> k.kind) AS p(privilege)
                WHERE n.objects IS NULL
            ),
            -- Every ACL item naming a declared group, of any grantor.
            have(kind, obj, sub, owner, nsp, grp, privilege, grantor, grantable) AS (
                SELECT 'd', db.oid, '', db.datdba, 0::oid, a.grantee, a.privilege_type, a.grantor,
                       a.is_grantable
                FROM pg_database db CROSS JOIN LATERAL aclexplode(db.datacl) AS a
                WHERE roles_here AND a.grantee IN (SELECT oid FROM managed)
                UNION ALL
                SELECT 'n', ns.oid, '', ns.nspowner, ns.oid, a.grantee, a.privilege_type,
                       a.grantor, a.is_grantable
                FROM pg_namespace ns CROSS JOIN LATERAL aclexplode(ns.nspacl) AS a
                WHERE ns.nspacl IS NOT NULL AND a.grantee IN (SELECT oid FROM managed)
                UNION ALL
                SELECT CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END, c.oid, '', c.relowner,
                       c.relnamespace, a.grantee, a.privilege_type, a.grantor, a.is_grantable
                FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
                WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relacl IS NOT NULL
                  AND a.grantee IN (SELECT oid FROM managed)
                UNION ALL
                SELECT 'c', t.attrelid, t.attnum::text, c.relowner, c.relnamespace, a.grantee,
                       a.privilege_type, a.grantor, a.is_grantable
                FROM pg_attribute t
                JOIN pg_class c ON c.oid = t.attrelid
                CROSS JOIN LATERAL aclexplode(t.attacl) AS a
                WHERE t.attacl IS NOT NULL AND NOT t.attisdropped
                  AND a.grantee IN (SELECT oid FROM managed)
                UNION ALL
                SELECT 'f', f.oid, '', f.proowner, f.pronamespace, a.grantee, a.privilege_type,
                       a.grantor, a.is_grantable
                FROM pg_proc f CROSS JOIN LATERAL aclexplode(f.proacl) AS a
                WHERE f.proacl IS NOT NULL AND a.grantee IN (SELECT oid FROM managed)
                UNION ALL
                SELECT 'D', x.defaclnamespace, x.defaclobjtype::text, x.defaclrole,
                       x.defaclnamespace, a.grantee, a.privilege_type, a.grantor, a.is_grantable
                FROM pg_default_acl x CROSS JOIN LATERAL aclexplode(x.defaclacl) AS a
                WHERE a.grantee IN (SELECT oid FROM managed)
            ),
            -- Both sides of each (object, group, privilege), by grouping (the owner is
            -- part of what default privileges are, and of no other object's key): an
            -- owner holds every privilege on what it owns already.
            cmp AS (
                SELECT kind, obj, sub, owner, nsp, grp, privilege,
                       bool_or(grantor IS NULL) AS wanted, bool_or(grantor IS NOT NULL) AS held,
                       array_agg(grantor) FILTER (WHERE grantor IS NOT NULL) AS grantors,
                       array_agg(grantor) FILTER (WHERE grantable) AS optioned
                FROM (SELECT kind, obj, sub, owner, nsp, grp, privilege, NULL::oid AS grantor,
                             false AS grantable
                      FROM want
                      UNION ALL
                      SELECT * FROM have) AS k
                WHERE owner <> grp
                GROUP BY kind, obj, sub, owner, nsp, grp, privilege
            ),
            diff AS (
                SELECT 'grant' AS action, kind, obj, sub, nsp, grp, owner, owner AS grantor,
                       privilege
                FROM cmp WHERE wanted AND NOT held
                UNION ALL
                SELECT 'revoke', c.kind, c.obj, c.sub, c.nsp, c.grp, c.owner, g.grantor,
                       c.privilege
                FROM cmp c CROSS JOIN LATERAL unnest(c.grantors) AS g(grantor)
                WHERE undeclared AND NOT c.wanted
                UNION ALL
                SELECT 'revoke_option', c.kind, c.obj, c.sub, c.nsp, c.grp, c.owner, g.grantor,
                       c.privilege
                FROM cmp c CROSS JOIN LATERAL unnest(c.optioned) AS g(grantor)
                WHERE undeclared AND c.wanted
            ),
            per AS (
                SELECT action, kind, obj, sub, nsp, grp, owner, grantor,
                       string_agg(privilege || CASE WHEN kind = 'c' THEN ' (' || quote_ident(
                                      (SELECT t.attname FROM pg_attribute t
                                       WHERE t.attrelid = obj AND t.attnum = sub::int)) || ')'
                                  ELSE '' END, ', ' ORDER BY privilege) AS privs,
                       jsonb_agg(privilege ORDER BY privilege) AS privileges
                FROM diff
                GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
            ),
            -- What the master may do as each owner and grantor: once per role, not per
            -- object.
            able AS (
                SELECT x.oid, x.rolname, x.rolsuper,
                       pg_has_role(master, x.oid, 'USAGE') AS usage,
                       pg_has_role(master, x.oid, CASE WHEN pg16 THEN 'SET' ELSE 'MEMBER' END)
                           AS can_set,
                       pg_has_role(master, x.oid, CASE WHEN pg16 THEN 'USAGE' ELSE 'MEMBER' END)
                           AS defaults
                FROM pg_roles x
                WHERE x.oid IN (SELECT owner FROM per UNION SELECT grantor FROM per)
            ),
            routed AS (
                SELECT p.*, o.rolname AS owner_name, o.rolsuper AS owner_super,
                       w.rolname AS grantor_name,
                       -- direct: as the master itself; set: SET ROLE to `may` first.
                       CASE
                           WHEN p.kind = 'D' THEN
                               CASE WHEN o.defaults THEN 'direct' WHEN o.can_set THEN 'set' END
                           WHEN p.action = 'grant' THEN
                               CASE WHEN o.usage THEN 'direct' WHEN o.can_set THEN 'set' END
                           WHEN p.grantor = master_oid THEN 'direct'
                           WHEN p.grantor = p.owner AND o.usage THEN 'direct'
                           WHEN w.can_set THEN 'set'
                       END AS route,
                       CASE WHEN p.action = 'grant' OR p.kind = 'D' THEN o.rolname
                            ELSE w.rolname END AS may
                FROM per p
                JOIN able o ON o.oid = p.owner
                JOIN able w ON w.oid = p.grantor
            ),
            -- Naming an object needs USAGE on its schema, as whoever acts: once per
            -- role and schema.
            usage AS (
                SELECT x.actor, x.nsp, has_schema_privilege(x.actor, x.nsp, 'USAGE') AS ok
                FROM (SELECT DISTINCT CASE route WHEN 'set' THEN may ELSE master END AS actor, nsp
                      FROM routed
                      WHERE kind IN ('r', 's', 'c', 'f') AND route IS NOT NULL) AS x
            ),
            -- Each object named as a statement takes it (search_path is empty here, so
            -- regclass and regprocedure name every object with its schema).
            stated AS (
                SELECT n.*, pg_get_userbyid(n.grp) AS group_name,
                       coalesce(NOT u.ok, false) AS no_usage,
                       CASE n.kind
                           WHEN 'd' THEN format('%s%s ON DATABASE ', n.verb, n.privs)
                           WHEN 'n' THEN format('%s%s ON SCHEMA ', n.verb, n.privs)
                           WHEN 's' THEN format('%s%s ON SEQUENCE ', n.verb, n.privs)
                           WHEN 'f' THEN format('%s%s ON ROUTINE ', n.verb, n.privs)
                           WHEN 'D' THEN format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s',
                                                n.owner_name,
                                                CASE WHEN n.obj <> 0 THEN ' IN SCHEMA ' ELSE '' END)
                           ELSE format('%s%s ON TABLE ', n.verb, n.privs)
                       END AS head,
                       CASE WHEN n.kind = 'D'
                            THEN format(' %s%s ON %s %s %I', n.verb, n.privs, n.on_kind, n.prep,
                                        pg_get_userbyid(n.grp))
                            ELSE format(' %s %I%s', n.prep, pg_get_userbyid(n.grp),
                                        CASE WHEN n.action = 'grant' THEN '' ELSE ' CASCADE' END)
                       END AS tail,
                       CASE n.kind
                           WHEN 'd' THEN (SELECT quote_ident(db.datname) FROM pg_database db
                                          WHERE db.oid = n.obj)
                           WHEN 'n' THEN n.obj::regnamespace::text
                           WHEN 'f' THEN n.obj::regprocedure::text
                           WHEN 'D' THEN CASE WHEN n.obj <> 0 THEN n.obj::regnamespace::text END
                           ELSE n.obj::regclass::text
                       END AS target
                FROM (SELECT t.*,
                             CASE t.action WHEN 'grant' THEN 'GRANT ' WHEN 'revoke' THEN 'REVOKE '
                                           ELSE 'REVOKE GRANT OPTION FOR ' END AS verb,
                             CASE WHEN t.action = 'grant' THEN 'TO' ELSE 'FROM' END AS prep,
                             CASE t.sub WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                                        WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES'
                                        WHEN 'n' THEN 'SCHEMAS' WHEN 'L' THEN 'LARGE OBJECTS'
                             END AS on_kind
                      FROM routed t) AS n
                LEFT JOIN usage u ON n.kind IN ('r', 's', 'c', 'f') AND n.route IS NOT NULL
                                 AND u.nsp = n.nsp
                                 AND u.actor = CASE n.route WHEN 'set' THEN n.may ELSE master END
            ),
            decided AS (
                SELECT x.*,
                       -- The names of what is reported rather than done.
                       CASE WHEN x.disposition = 'run' THEN NULL
                            WHEN x.kind = 'd' THEN 'database ' || x.target
                            WHEN x.kind = 'n' THEN 'schema ' || x.target
                            WHEN x.kind = 's' THEN 'sequence ' || x.target
                            WHEN x.kind = 'r' THEN
                                (SELECT CASE c.relkind WHEN 'v' THEN 'view'
                                                       WHEN 'm' THEN 'materialized view'
                                                       WHEN 'f' THEN 'foreign table'
                                                       ELSE 'table' END
                                 FROM pg_class c WHERE c.oid = x.obj) || ' ' || x.target
                            WHEN x.kind = 'c' THEN
                                'table column ' || x.target || '.' || quote_ident(
                                    (SELECT t.attname FROM pg_attribute t
                                     WHERE t.attrelid = x.obj AND t.attnum = x.sub::int))
                            WHEN x.kind = 'f' THEN
                                (SELECT CASE f.prokind WHEN 'p' THEN 'procedure'
                                                       WHEN 'a' THEN 'aggregate'
                                                       ELSE 'function' END
                                 FROM pg_proc f WHERE f.oid = x.obj) || ' ' || x.target
                            -- As the change report names them (pg_identify_object).
                            ELSE format('default acl for role %I%s on %s', x.owner_name,
                                        CASE WHEN x.obj <> 0 THEN ' in schema ' || x.target
                                             ELSE '' END,
                                        lower(x.on_kind))
                       END AS object,
                       CASE WHEN x.disposition <> 'run' AND x.nsp <> 0 THEN
                           (SELECT ns.nspname::text FROM pg_namespace ns WHERE ns.oid = x.nsp)
                       END AS schema_name
                FROM (SELECT s.*,
                             -- Who may do it: the owner or grantor; for pg_database_owner,
                             -- which can have no members, the database's owner itself.
                             CASE WHEN s.may = 'pg_database_owner'
                                  THEN (SELECT pg_get_userbyid(d.datdba) FROM pg_database d
                                        WHERE d.datname = current_database())
                                  ELSE s.may END AS who,
                             CASE WHEN s.kind = 'd'
                                  THEN (SELECT db.datname::text FROM pg_database db
                                        WHERE db.oid = s.obj)
                                  ELSE current_database() END AS database,
                             CASE WHEN s.no_usage THEN
                                 (SELECT quote_ident(pg_get_userbyid(
                                             CASE WHEN nn.nspowner = 'pg_database_owner'::regrole
                                                  THEN d.datdba ELSE nn.nspowner END))
                                  FROM pg_namespace nn, pg_database d
                                  WHERE nn.oid = s.nsp AND d.datname = current_database())
                             END AS schema_owner,
                             CASE WHEN check_only THEN 'drift'
                                  WHEN s.route IS NULL OR s.no_usage THEN 'finding'
                                  ELSE 'run' END AS disposition
                      FROM stated s) AS x
            ),
            -- What the master does: one statement for the objects that need the same,
            -- as the same role (as GRANT ... ON ALL TABLES IN SCHEMA would).
            runs AS (
                SELECT d.action <> 'grant' AS revoking, d.route, d.who, d.head, d.tail,
                       d.head || string_agg(coalesce(d.target, ''), ', ') || d.tail AS statement
                FROM decided d WHERE d.disposition = 'run'
                GROUP BY d.action <> 'grant', d.route, d.who, d.head, d.tail
            ),
            -- What differs (verify), alike but for the object in one entry; where the
            -- master may not act, who may, and the statement.
            drifts AS (
                SELECT x.database, x.group_name, x.difference, x.privileges, x.grantor_shown,
                       min(x.object) AS first,
                       jsonb_agg(x.object ORDER BY x.object) AS objects, count(*) AS n,
                       CASE WHEN x.fix_usage IS NOT NULL THEN x.fix_usage
                            WHEN x.fix_as IS NOT NULL THEN
                                format('as %s: %s%s%s', quote_ident(x.fix_as), x.fix_head,
                                       string_agg(coalesce(x.target, ''), ', ' ORDER BY x.target),
                                       x.fix_tail) END AS fix
                FROM (SELECT d.*,
                             CASE d.action WHEN 'grant' THEN 'privilege_missing'
                                           WHEN 'revoke' THEN 'privilege_undeclared'
                                           ELSE 'grant_option_undeclared' END AS difference,
                             CASE WHEN d.action <> 'grant' THEN d.grantor_name END AS grantor_shown,
                             CASE WHEN d.no_usage THEN
                                 format('as %s: GRANT USAGE ON SCHEMA %I TO %I', d.schema_owner,
                                        d.schema_name,
                                        CASE d.route WHEN 'set' THEN d.who ELSE master END)
                             END AS fix_usage,
                             CASE WHEN d.route IS NULL AND NOT d.no_usage THEN d.who END AS fix_as,
                             CASE WHEN d.route IS NULL AND NOT d.no_usage THEN d.head END AS fix_head,
                             CASE WHEN d.route IS NULL AND NOT d.no_usage THEN d.tail END AS fix_tail
                      FROM decided d WHERE d.disposition = 'drift') AS x
                GROUP BY x.database, x.group_name, x.difference, x.privileges, x.grantor_shown,
                         x.fix_usage, x.fix_as, x.fix_head, x.fix_tail
            ),
            -- What the master could not do, one finding per statement it would have
            -- run: the objects (the first 50, and their count), who may run it, and
            -- the statement; for an owner that can have members, the membership that
            -- lets the next run do it.
            finds AS (
                SELECT x.problem, x.database, x.group_name, x.schema_name, x.owned_by, x.grantor_shown,
                       x.actor, x.head,
                       (array_agg(x.object ORDER BY x.object))[1:50] AS objects, count(*) AS n,
                       x.head || coalesce(string_agg(x.target, ', ' ORDER BY x.target), '')
                              || x.tail AS statement,
                       CASE
                           WHEN x.problem = 'no_schema_usage' THEN
                               format('as %s: GRANT USAGE ON SCHEMA %I TO %I', x.schema_owner,
                                      x.schema_name, x.actor)
                           WHEN x.problem IN ('not_owner_member', 'default_privileges_not_set',
                                              'default_privileges_not_revoked')
                                AND x.owned_by <> 'pg_database_owner' AND NOT x.owner_super THEN
                               format('GRANT %I TO %I%s', x.owned_by, master,
                                      CASE WHEN pg16 THEN ' WITH INHERIT TRUE' ELSE '' END)
                       END AS fix
                FROM (SELECT d.*,
                             CASE
                                 WHEN d.no_usage THEN 'no_schema_usage'
                                 WHEN d.kind = 'D' AND d.action = 'grant'
                                     THEN 'default_privileges_not_set'
                                 WHEN d.kind = 'D' THEN 'default_privileges_not_revoked'
                                 WHEN d.action = 'grant' THEN 'not_owner_member'
                                 ELSE 'privilege_not_revoked' END AS problem,
                             CASE WHEN d.action = 'grant' OR d.kind = 'D' THEN d.owner_name END
                                 AS owned_by,
                             CASE WHEN d.action <> 'grant' AND d.kind <> 'D' THEN d.grantor_name END
                                 AS grantor_shown,
                             CASE WHEN d.no_usage AND d.route = 'direct' THEN master
                                  ELSE d.who END AS actor
                      FROM decided d WHERE d.disposition = 'finding') AS x
                GROUP BY x.problem, x.database, x.group_name, x.schema_name, x.owned_by, x.grantor_shown,
                         x.actor, x.owner_super, x.schema_owner, x.head, x.tail
            )
            SELECT 'run' AS disposition, u.revoking,
                   CASE WHEN u.route = 'set' THEN u.who END AS who, u.statement,
                   NULL::jsonb AS item, '' AS k1, '' AS k2
            FROM runs u
            UNION ALL
            SELECT 'drift', NULL, NULL, NULL,
                   jsonb_strip_nulls(jsonb_build_object(
                       'role', d.group_name, 'problem', d.difference, 'database', d.database,
                       'privileges', d.privileges, 'grantor', d.grantor_shown, 'fix', d.fix)
                       || CASE WHEN d.n = 1 THEN jsonb_build_object('object', d.objects -> 0)
                               ELSE jsonb_build_object('objects', d.objects, 'count', d.n) END),
                   d.first, d.group_name
            FROM drifts d
            UNION ALL
            SELECT 'finding', NULL, NULL, NULL,
                   jsonb_strip_nulls(jsonb_build_object(
                       'level', 'warning', 'problem', f.problem, 'database', f.database,
                       'group', f.group_name, 'schema', f.schema_name, 'owner', f.owned_by,
                       'grantor', f.grantor_shown, 'objects', to_jsonb(f.objects), 'count', f.n,
                       'as', f.actor, 'statement', f.statement, 'fix', f.fix)),
                   f.problem || ' ' || f.group_name, coalesce(f.schema_name, '') || f.head
            FROM finds f
            -- Revokes first (what they cascade to is seen by the next pass).
            ORDER BY 1, 2 DESC, 6, 7, 4
        LOOP
            IF r.disposition = 'drift' THEN
                drift := array_append(drift, r.item);
            ELSIF r.disposition = 'finding' THEN
                problems := array_append(problems, r.item);
            -- As the grantor (or owner) itself, where the master acts through SET ROLE.
            ELSIF r.who IS NOT NULL THEN
                EXECUTE format('SET LOCAL ROLE %I', r.who);
                EXECUTE r.statement;
                EXECUTE 'SET LOCAL ROLE NONE';
                revoked := revoked OR r.revoking;
            ELSE
                EXECUTE r.statement;
                revoked := revoked OR r.revoking;
            END IF;
        END LOOP;
        EXIT WHEN check_only OR NOT revoked OR pass = 2;
    END LOOP;
    findings := findings || problems;

    -- The other databases where a declared group holds privileges (pg_shdepend lists
    -- a role's ACL items in every database) that the document does not name: the run
    -- visits them too. One the master cannot connect to is a finding.
    IF roles_here AND exact THEN
        FOR r IN
            SELECT db.datname,
                   db.datallowconn AND has_database_privilege(master, db.oid, 'CONNECT') AS reachable,
                   jsonb_agg(DISTINCT p.rolname ORDER BY p.rolname) AS groups
            FROM pg_shdepend s
            JOIN pg_roles p ON p.oid = s.refobjid
            JOIN pg_database db ON db.oid = s.dbid
            WHERE s.deptype = 'a' AND s.refclassid = 'pg_authid'::regclass
              AND p.rolname IN (SELECT jsonb_object_keys(declared))
              AND s.classid IN ('pg_class'::regclass, 'pg_namespace'::regclass,
                                'pg_proc'::regclass, 'pg_default_acl'::regclass)
              AND db.datname <> current_database()
              AND db.datname NOT IN (
                  SELECT x.database FROM jsonb_each(declared) AS g
                  CROSS JOIN LATERAL jsonb_to_recordset(g.value -> 'grants') AS x(database text))
            GROUP BY db.datname, db.oid, db.datallowconn
            ORDER BY db.datname
        LOOP
            IF r.reachable THEN
                elsewhere := elsewhere || to_jsonb(r.datname);
            ELSE
                IF check_only THEN
                    drift := array_append(drift, jsonb_build_object(
                        'roles', r.groups, 'problem', 'privileges_unreachable',
                        'database', r.datname,
                        'fix', format('GRANT CONNECT ON DATABASE %I TO %I, as its owner',
                                      r.datname, master)));
                ELSE
                    findings := array_append(findings, jsonb_build_object(
                        'level', 'warning', 'problem', 'database_unreachable',
                        'database', r.datname, 'groups', r.groups,
                        'fix', format('GRANT CONNECT ON DATABASE %I TO %I, as its owner',
                                      r.datname, master)));
                END IF;
            END IF;
        END LOOP;
    END IF;

    PERFORM set_config('search_path', search_path_was, true),
            set_config('bootstrap.findings', to_jsonb(findings)::text, true),
            set_config('bootstrap.drift', to_jsonb(drift)::text, true),
            set_config('bootstrap.elsewhere', elsewhere::text, true);
END
$$;
