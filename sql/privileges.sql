-- aurora-bootstrap: the privileges of the declared group roles, in the database it runs in.
--
-- Roles are the cluster's, privileges each database's: sql/init.sql makes the roles
-- once, then this file runs in every database the run visits (DB_NAME, in init.sql's
-- own transaction, then each other database GROUP_ROLES names, each in a transaction
-- of its own). It reads:
--   bootstrap.group_roles  JSON object {"group": [{"database", "schemas", "access",
--                          "owners"}, ...]}: GROUP_ROLES with every default resolved
--   bootstrap.master_user  the user running this script
--   bootstrap.prune        true: also revoke what the document no longer declares
--   bootstrap.check_only   true (verify): change nothing; list what is missing or
--                          undeclared in bootstrap.drift
-- and leaves in bootstrap.findings (a JSON list) what it could not act on.
--
-- To run it by hand, after init.sql, in each database (here: reports):
--   psql -d reports -v ON_ERROR_STOP=1 --single-transaction \
--     -c "SELECT set_config('bootstrap.group_roles', '{\"analyst\": [{\"database\": \"reports\", \"schemas\": [\"rpt\"], \"access\": \"read\", \"owners\": [\"master\"]}]}', true),
--                set_config('bootstrap.master_user', current_user, true),
--                set_config('bootstrap.prune', 'false', true)" \
--     -f sql/privileges.sql \
--     -c "SELECT current_setting('bootstrap.findings')"
--
-- What the two access levels give a group, on each schema a grant names ("*": every
-- schema but PostgreSQL's own):
--   read   CONNECT on the database, USAGE on the schema, SELECT on its tables, views,
--          materialized views, foreign tables (all of GRANT's TABLE) and sequences
--   write  read, and INSERT, UPDATE, DELETE on those tables, USAGE on the sequences
-- and the same by default on what each listed owner creates there later.
--
-- The declared groups are the ones whose privileges the document decides: what such
-- a group holds here on this database, its schemas, their tables and sequences, and
-- its owners' per-schema defaults, beyond what the document gives it, is undeclared
-- (PUBLIC's and other roles' privileges are never looked at).
--
-- The master acts on an object only as a member of the role that owns it (its grant
-- is then recorded as the owner's); another owner's object is left alone and named
-- in the findings, so that one foreign table does not fail the run. The same holds
-- for default privileges, which need membership in the owner (from PostgreSQL 16
-- with INHERIT).
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
    pg16 CONSTANT boolean := current_setting('server_version_num')::int >= 160000;
    -- The grants for this database, each with its group: {grp, schemas, access, owners}.
    here CONSTANT jsonb := coalesce(
        (SELECT jsonb_agg(e.value || jsonb_build_object('grp', g.key))
         FROM jsonb_each(declared) AS g
         CROSS JOIN LATERAL jsonb_array_elements(g.value) AS e
         WHERE e.value ->> 'database' = current_database()), '[]');
    findings jsonb[];
    drift jsonb[];
    foreign_rows jsonb[] := '{}';
    head text;
    tail text;
    targets text[] := '{}';
    r record;
BEGIN
    IF jsonb_typeof(declared) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'bootstrap.group_roles must be a JSON object, got %', jsonb_typeof(declared);
    END IF;
    -- The comparison sorts a row per object and privilege: in memory, not on disk.
    PERFORM set_config('work_mem', '64MB', true);

    -- Groups not made yet (sql/init.sql makes them; an INIT_SQL of one's own may not):
    -- left out here, and named.
    drift := ARRAY(
        SELECT jsonb_build_object('role', g.name, 'problem', 'missing')
        FROM jsonb_object_keys(declared) AS g(name)
        WHERE check_only AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = g.name)
        ORDER BY 1);

    -- What is not made yet (under apply: a group; a schema; an owner): warnings, and the
    -- next run picks them up.
    findings := ARRAY(
        SELECT jsonb_build_object('level', 'warning', 'problem', 'group_missing',
                                  'database', current_database(), 'group', g.name)
        FROM jsonb_object_keys(declared) AS g(name)
        WHERE NOT check_only AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = g.name)
        UNION ALL
        SELECT jsonb_build_object('level', 'warning', 'problem', 'schema_missing',
                                  'database', current_database(), 'schema', s.name,
                                  'group', d.grp)
        FROM jsonb_to_recordset(here) AS d(grp text, schemas text[])
        CROSS JOIN LATERAL unnest(d.schemas) AS s(name)
        WHERE s.name <> '*' AND NOT EXISTS (SELECT FROM pg_namespace n WHERE n.nspname = s.name)
        UNION ALL
        SELECT DISTINCT jsonb_build_object('level', 'warning', 'problem', 'owner_missing',
                                           'database', current_database(), 'owner', o.name,
                                           'group', d.grp)
        FROM jsonb_to_recordset(here) AS d(grp text, owners text[])
        CROSS JOIN LATERAL unnest(d.owners) AS o(name)
        WHERE NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = o.name));

    FOR r IN
        WITH d AS (
            SELECT * FROM jsonb_to_recordset(here)
                AS d(grp text, schemas text[], access text, owners text[])
        ),
        managed AS (
            SELECT p.oid, p.rolname FROM jsonb_object_keys(declared) AS g(name)
            JOIN pg_roles p ON p.rolname = g.name
        ),
        -- Each existing schema a grant names, with the group, its access and owners.
        nsp AS (
            SELECT DISTINCT m.oid AS grp, d.access, n.oid, d.owners
            FROM d
            JOIN managed m ON m.rolname = d.grp
            JOIN pg_namespace n
              ON n.nspname = ANY (d.schemas)
              OR ('*' = ANY (d.schemas)
                  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema')
        ),
        level(kind, access, privilege) AS (VALUES
            ('r', 'read', 'SELECT'), ('r', 'write', 'SELECT'), ('r', 'write', 'INSERT'),
            ('r', 'write', 'UPDATE'), ('r', 'write', 'DELETE'),
            ('s', 'read', 'SELECT'), ('s', 'write', 'SELECT'), ('s', 'write', 'USAGE')
        ),
        -- kind: d database, n schema, r relation, s sequence, Dr and Ds the default
        -- privileges (obj the schema, owner the role whose new objects they cover).
        -- Rows may repeat (two grants naming one schema): EXCEPT below is a set's.
        want(kind, obj, owner, grp, privilege) AS (
            SELECT 'd', db.oid, db.datdba, m.oid, 'CONNECT'
            FROM pg_database db, d JOIN managed m ON m.rolname = d.grp
            WHERE db.datname = current_database()
            UNION ALL
            SELECT 'n', n.oid, ns.nspowner, n.grp, 'USAGE'
            FROM nsp n JOIN pg_namespace ns ON ns.oid = n.oid
            UNION ALL
            SELECT l.kind, c.oid, c.relowner, n.grp, l.privilege
            FROM nsp n
            JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            JOIN level l ON l.access = n.access
                        AND l.kind = CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END
            UNION ALL
            SELECT 'D' || l.kind, n.oid, o.oid, n.grp, l.privilege
            FROM nsp n
            CROSS JOIN LATERAL unnest(n.owners) AS w(name)
            JOIN pg_roles o ON o.rolname = w.name
            JOIN level l ON l.access = n.access
        ),
        have(kind, obj, owner, grp, privilege) AS (
            SELECT 'd', db.oid, db.datdba, a.grantee, a.privilege_type
            FROM pg_database db CROSS JOIN LATERAL aclexplode(db.datacl) AS a
            WHERE db.datname = current_database() AND a.grantee IN (SELECT oid FROM managed)
            UNION ALL
            SELECT 'n', ns.oid, ns.nspowner, a.grantee, a.privilege_type
            FROM pg_namespace ns CROSS JOIN LATERAL aclexplode(ns.nspacl) AS a
            WHERE ns.nspname !~ '^pg_' AND ns.nspname <> 'information_schema'
              AND a.grantee IN (SELECT oid FROM managed)
            UNION ALL
            SELECT CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END, c.oid, c.relowner,
                   a.grantee, a.privilege_type
            FROM pg_class c
            JOIN pg_namespace ns ON ns.oid = c.relnamespace
            CROSS JOIN LATERAL aclexplode(c.relacl) AS a
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relacl IS NOT NULL
              AND ns.nspname !~ '^pg_' AND ns.nspname <> 'information_schema'
              AND a.grantee IN (SELECT oid FROM managed)
            UNION ALL
            SELECT CASE x.defaclobjtype WHEN 'S' THEN 'Ds' ELSE 'Dr' END, x.defaclnamespace,
                   x.defaclrole, a.grantee, a.privilege_type
            FROM pg_default_acl x CROSS JOIN LATERAL aclexplode(x.defaclacl) AS a
            WHERE x.defaclnamespace <> 0 AND x.defaclobjtype IN ('r', 'S')
              AND a.grantee IN (SELECT oid FROM managed)
        ),
        diff AS (
            SELECT 'grant' AS action, w.*
            FROM (SELECT * FROM want EXCEPT SELECT * FROM have) AS w
            UNION ALL
            SELECT 'revoke', h.*
            FROM (SELECT * FROM have EXCEPT SELECT * FROM want) AS h
            WHERE prune OR check_only
        ),
        per AS (
            SELECT action, kind, obj, owner, grp,
                   string_agg(privilege, ', ' ORDER BY privilege) AS privs,
                   jsonb_agg(privilege ORDER BY privilege) AS privileges
            FROM diff
            WHERE owner <> grp  -- an owner holds every privilege already
            GROUP BY 1, 2, 3, 4, 5
        ),
        -- Whether the master may act as each owner: once per owner, not per object.
        able AS (
            SELECT o.owner, pg_has_role(master, o.owner, 'USAGE') AS objects,
                   pg_has_role(master, o.owner, CASE WHEN pg16 THEN 'USAGE' ELSE 'MEMBER' END)
                       AS defaults
            FROM (SELECT DISTINCT owner FROM per) AS o
        ),
        named AS (
            SELECT p.*, g.rolname AS group_name, w.rolname AS owner_name,
                   coalesce(ns.nspname, cn.nspname) AS schema_name, c.relname, c.relkind,
                   CASE WHEN p.kind LIKE 'D%' THEN a.defaults ELSE a.objects END AS can_act,
                   CASE WHEN p.action = 'grant' THEN 'GRANT' ELSE 'REVOKE' END AS verb,
                   CASE WHEN p.action = 'grant' THEN 'TO' ELSE 'FROM' END AS prep
            FROM per p
            JOIN able a ON a.owner = p.owner
            JOIN pg_roles g ON g.oid = p.grp
            JOIN pg_roles w ON w.oid = p.owner
            LEFT JOIN pg_namespace ns ON p.kind IN ('n', 'Dr', 'Ds') AND ns.oid = p.obj
            LEFT JOIN pg_class c ON p.kind IN ('r', 's') AND c.oid = p.obj
            LEFT JOIN pg_namespace cn ON cn.oid = c.relnamespace
        )
        SELECT n.action, n.kind, n.can_act, n.group_name, n.owner_name, n.schema_name,
               n.privs, n.privileges,
               CASE n.kind
                   WHEN 'd' THEN format('%s %s ON DATABASE ', n.verb, n.privs)
                   WHEN 'n' THEN format('%s %s ON SCHEMA ', n.verb, n.privs)
                   WHEN 'r' THEN format('%s %s ON TABLE ', n.verb, n.privs)
                   WHEN 's' THEN format('%s %s ON SEQUENCE ', n.verb, n.privs)
                   ELSE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA ', n.owner_name)
               END AS head,
               CASE n.kind
                   WHEN 'Dr' THEN format(' %s %s ON TABLES %s %I', n.verb, n.privs, n.prep, n.group_name)
                   WHEN 'Ds' THEN format(' %s %s ON SEQUENCES %s %I', n.verb, n.privs, n.prep, n.group_name)
                   ELSE format(' %s %I', n.prep, n.group_name)
               END AS tail,
               CASE n.kind
                   WHEN 'd' THEN quote_ident(current_database())
                   WHEN 'r' THEN format('%I.%I', n.schema_name, n.relname)
                   WHEN 's' THEN format('%I.%I', n.schema_name, n.relname)
                   ELSE quote_ident(n.schema_name)
               END AS target,
               CASE n.kind
                   WHEN 'd' THEN 'database ' || quote_ident(current_database())
                   WHEN 'n' THEN 'schema ' || quote_ident(n.schema_name)
                   WHEN 'Dr' THEN format('default privileges for role %I in schema %I on tables',
                                         n.owner_name, n.schema_name)
                   WHEN 'Ds' THEN format('default privileges for role %I in schema %I on sequences',
                                         n.owner_name, n.schema_name)
                   ELSE CASE n.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                                       WHEN 'm' THEN 'materialized view'
                                       WHEN 'f' THEN 'foreign table' ELSE 'table' END
                        || ' ' || format('%I.%I', n.schema_name, n.relname)
               END AS object
        FROM named n
        ORDER BY n.action, n.kind, n.grp, n.privs, n.owner
    LOOP
        IF NOT r.can_act AND r.kind LIKE 'D%' THEN
            -- The owner can: the statement it would run is the fix.
            findings := array_append(findings, jsonb_build_object(
                'level', 'warning',
                'problem', CASE r.action WHEN 'grant' THEN 'default_privileges_not_set'
                                         ELSE 'default_privileges_not_revoked' END,
                'database', current_database(), 'schema', r.schema_name, 'owner', r.owner_name,
                'group', r.group_name, 'privileges', r.privileges,
                'fix', format('as %I: %s%s%s', r.owner_name, r.head, r.target, r.tail)));
        ELSIF NOT r.can_act THEN
            foreign_rows := array_append(foreign_rows, jsonb_build_object(
                'schema', r.schema_name, 'owner', r.owner_name, 'object', r.object));
        ELSIF check_only THEN
            drift := array_append(drift, jsonb_build_object(
                'role', r.group_name,
                'problem', CASE r.action WHEN 'grant' THEN 'privilege_missing'
                                         ELSE 'privilege_undeclared' END,
                'database', current_database(), 'object', r.object, 'privileges', r.privileges));
        ELSE
            IF head IS DISTINCT FROM r.head OR tail IS DISTINCT FROM r.tail
               OR cardinality(targets) >= 1000 THEN
                IF cardinality(targets) > 0 THEN
                    EXECUTE head || array_to_string(targets, ', ') || tail;
                END IF;
                head := r.head;
                tail := r.tail;
                targets := '{}';
            END IF;
            targets := array_append(targets, r.target);
        END IF;
    END LOOP;
    IF cardinality(targets) > 0 THEN
        EXECUTE head || array_to_string(targets, ', ') || tail;
    END IF;

    -- Objects of owners the master is not a member of: one finding per schema and
    -- owner, with the membership that would let the next run act on them.
    findings := findings || ARRAY(
        SELECT jsonb_build_object(
                   'level', 'warning', 'problem', 'not_owner_member',
                   'database', current_database(), 'schema', f.schema, 'owner', f.owner,
                   'objects', to_jsonb((array_agg(DISTINCT f.object ORDER BY f.object))[1:50]),
                   'count', count(DISTINCT f.object),
                   'fix', format('GRANT %I TO %I%s', f.owner, master,
                                 CASE WHEN pg16 THEN ' WITH INHERIT TRUE' ELSE '' END))
        FROM jsonb_to_recordset(to_jsonb(foreign_rows)) AS f(schema text, owner text, object text)
        GROUP BY f.schema, f.owner
        ORDER BY f.schema, f.owner);

    PERFORM set_config('bootstrap.findings', to_jsonb(findings)::text, true),
            set_config('bootstrap.drift', to_jsonb(drift)::text, true);
END
$$;
