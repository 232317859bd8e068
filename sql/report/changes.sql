-- What changed in this transaction: the snapshot taken before init.sql
-- (bootstrap.snapshot) against the one taken after it (bootstrap.snapshot_now), both
-- of snapshot.sql, as the lines of the change report in their final order.
--
-- Roles are matched by name, memberships by (role, member, grantor), privileges by
-- (object, grantee, grantor, privilege, grant option); names come from the catalog,
-- or for a role dropped in this run from its own snapshot row. The result comes in
-- blocks of 1,000 lines of one JSON object each (a block holds about 100 KB), so that
-- the 40,000 changes of 10,000 new users cost the client 40 rows to read, not 40,000;
-- the first line is the catalog's fingerprint now (fingerprint.sql), which confirms a
-- COMMIT whose reply was lost.
--
-- psql can run or EXPLAIN it after setting both snapshots, in one transaction:
--   SELECT set_config('bootstrap.snapshot', ARRAY(<snapshot.sql>)::text, true);
--   ... the changes ...
--   SELECT set_config('bootstrap.snapshot_now', ARRAY(<snapshot.sql>)::text, true);
WITH was AS (SELECT unnest(current_setting('bootstrap.snapshot')::text[]) AS e),
     now AS MATERIALIZED (SELECT unnest(current_setting('bootstrap.snapshot_now')::text[]) AS e),
     d AS MATERIALIZED (
         (SELECT 'a'::text AS side, e FROM now EXCEPT ALL SELECT 'a', e FROM was)
         UNION ALL
         (SELECT 'b', e FROM was EXCEPT ALL SELECT 'b', e FROM now)),
     r AS MATERIALIZED (
         SELECT side, f[2]::oid AS oid, f[3] = '1' AS login, f[4] AS flags,
                f[5]::int AS connlimit, f[6] AS valid_until, f[7] AS config,
                -- The name is what follows the first eight fields, none of which
                -- holds a colon.
                f[8] AS digest,
                substr(e, length(f[2]) + length(f[3]) + length(f[4]) + length(f[5])
                          + length(f[6]) + length(f[7]) + length(f[8]) + 10) AS name
         FROM (SELECT side, e, string_to_array(e, ':') AS f FROM d WHERE left(e, 2) = 'r:') AS x),
     -- Roles dropped in this run, named from their snapshot row; the others by the
     -- catalog's cache (pg_get_userbyid), which is far cheaper than joining pg_roles.
     gone AS (
         SELECT DISTINCT ON (oid) oid, name FROM r
         WHERE side = 'b' AND NOT EXISTS (SELECT FROM pg_roles p WHERE p.oid = r.oid)),
     named AS (
         SELECT x.side, coalesce(o1.name, pg_get_userbyid(x.f[2]::oid)) AS role,
                coalesce(o2.name, pg_get_userbyid(x.f[3]::oid)) AS member,
                coalesce(o3.name, pg_get_userbyid(x.f[4]::oid)) AS grantor, x.f
         FROM (SELECT side, string_to_array(e, ':') AS f FROM d WHERE left(e, 2) = 'm:') AS x
         LEFT JOIN gone o1 ON o1.oid = x.f[2]::oid
         LEFT JOIN gone o2 ON o2.oid = x.f[3]::oid
         LEFT JOIN gone o3 ON o3.oid = x.f[4]::oid),
     -- Each membership with the fields its grant or revoke reports: the options that
     -- are not their default.
     m AS MATERIALIZED (
         SELECT n.*, jsonb_build_object('role', n.role, 'member', n.member,
                                        'grantor', n.grantor)
                     || CASE WHEN n.f[5] = '1' THEN '{"admin_option": true}'::jsonb
                             ELSE '{}' END
                     || CASE WHEN n.f[6] = '0' THEN '{"inherit_option": false}'::jsonb
                             ELSE '{}' END
                     || CASE WHEN n.f[7] = '0' THEN '{"set_option": false}'::jsonb
                             ELSE '{}' END AS fields
         FROM named AS n),
     -- Each role, and each membership, with its row on either side: the report reads
     -- both sides from one row and never joins them (the planner, guessing at one row
     -- a side, joined them in nested loops: retiring 8,000 users took 100 s).
     rr AS MATERIALIZED (
         SELECT name, bool_or(side = 'a') AS in_a, bool_or(side = 'b') AS in_b,
                (array_agg(oid) FILTER (WHERE side = 'a'))[1] AS oid,
                bool_or(login) FILTER (WHERE side = 'a') AS login,
                bool_or(login) FILTER (WHERE side = 'b') AS b_login,
                max(flags) FILTER (WHERE side = 'a') AS flags,
                max(flags) FILTER (WHERE side = 'b') AS b_flags,
                max(connlimit) FILTER (WHERE side = 'a') AS connlimit,
                max(connlimit) FILTER (WHERE side = 'b') AS b_connlimit,
                max(valid_until) FILTER (WHERE side = 'a') AS valid_until,
                max(valid_until) FILTER (WHERE side = 'b') AS b_valid_until,
                max(config) FILTER (WHERE side = 'a') AS config,
                max(config) FILTER (WHERE side = 'b') AS b_config,
                max(digest) FILTER (WHERE side = 'a') AS digest,
                max(digest) FILTER (WHERE side = 'b') AS b_digest
         FROM r GROUP BY name),
     mm AS MATERIALIZED (
         SELECT role, member, grantor, bool_or(side = 'a') AS in_a, bool_or(side = 'b') AS in_b,
                max(f[5]) FILTER (WHERE side = 'a') AS admin,
                max(f[5]) FILTER (WHERE side = 'b') AS b_admin,
                max(f[6]) FILTER (WHERE side = 'a') AS inherit,
                max(f[6]) FILTER (WHERE side = 'b') AS b_inherit,
                max(f[7]) FILTER (WHERE side = 'a') AS set,
                max(f[7]) FILTER (WHERE side = 'b') AS b_set,
                (array_agg(fields) FILTER (WHERE side = 'a'))[1] AS fields,
                (array_agg(fields) FILTER (WHERE side = 'b'))[1] AS b_fields
         FROM m GROUP BY role, member, grantor),
     -- Privileges: for each object whose row differs, its ACL items before and after,
     -- a missing row standing for the object's default; then the items that differ,
     -- taken apart into one row per privilege (and one more where it is grantable).
     acl AS MATERIALIZED (
         SELECT side, f[1]::oid AS classid, f[2]::oid AS objid, f[3] AS kind,
                f[4]::oid AS owner, f[5] AS items
         -- The first four fields hold no colon: split, which costs a fraction of a
         -- regular expression per row; the ACL is the rest.
         FROM (SELECT side, ARRAY[split_part(e, ':', 2), split_part(e, ':', 3),
                                  split_part(e, ':', 4), split_part(e, ':', 5),
                                  substr(e, length(split_part(e, ':', 2))
                                            + length(split_part(e, ':', 3))
                                            + length(split_part(e, ':', 4))
                                            + length(split_part(e, ':', 5)) + 7)] AS f
               FROM d WHERE left(e, 2) = 'a:') AS x),
     -- Each object's row before and after, by grouping: a join of the two sides
     -- would be planned as a nested loop over CTEs the planner guesses at one row.
     sides AS MATERIALIZED (
         SELECT classid, objid,
                (array_agg(items) FILTER (WHERE side = 'b'))[1] AS before,
                (array_agg(items) FILTER (WHERE side = 'a'))[1] AS after,
                (array_agg(kind) FILTER (WHERE side = 'b'))[1] AS bkind,
                (array_agg(kind ORDER BY side))[1] AS kind,
                (array_agg(owner ORDER BY side))[1] AS owner
         FROM acl
         GROUP BY classid, objid),
     objects AS MATERIALIZED (
         SELECT o.classid, o.objid, o.before, o.after, o.kind, o.owner,
                -- A schema's default privileges all revoked leave no row to name: named
                -- from the snapshot's, as pg_identify_object names one.
                coalesce(i.type, CASE WHEN o.bkind LIKE 'E%' THEN 'default acl' END) AS id_type,
                coalesce(i.identity, CASE WHEN o.after IS NULL AND o.bkind LIKE 'E%' THEN
                    format('for role %s in schema %s on %s',
                           quote_ident(pg_get_userbyid(o.owner)),
                           (SELECT quote_ident(n.nspname) FROM pg_namespace n
                            WHERE n.oid = substr(o.bkind, 3)::oid),
                           CASE substr(o.bkind, 2, 1) WHEN 'r' THEN 'tables'
                                WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                                WHEN 'T' THEN 'types' ELSE 'schemas' END) END) AS identity
         FROM sides AS o
         CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, 0) AS i),
     items AS (
         SELECT o.classid, o.objid, s.side, i.item
         FROM objects o
         CROSS JOIN LATERAL (VALUES ('b', o.before), ('a', o.after)) AS s(side, items)
         CROSS JOIN LATERAL unnest(coalesce(s.items, CASE WHEN o.kind LIKE 'E%' THEN '{}'
                 ELSE acldefault(o.kind::"char", o.owner)::text END)::text[]) AS i(item)
         -- Not dropped in this run.
         WHERE o.identity IS NOT NULL),
     changed AS (
         (SELECT classid, objid, 'a' AS side, item FROM items WHERE side = 'a'
          EXCEPT SELECT classid, objid, 'a', item FROM items WHERE side = 'b')
         UNION ALL
         (SELECT classid, objid, 'b', item FROM items WHERE side = 'b'
          EXCEPT SELECT classid, objid, 'b', item FROM items WHERE side = 'a')),
     letters AS (
         SELECT c.classid, c.objid, c.side,
                -- Role names as PostgreSQL prints them in an ACL item: quoted where
                -- they must be.
                CASE WHEN left(p.m[1], 1) = '"'
                     THEN replace(substr(p.m[1], 2, length(p.m[1]) - 2), '""', '"')
                     ELSE p.m[1] END AS grantee,
                CASE WHEN left(p.m[3], 1) = '"'
                     THEN replace(substr(p.m[3], 2, length(p.m[3]) - 2), '""', '"')
                     ELSE p.m[3] END AS grantor,
                substr(p.m[2], g.i, 1) AS letter, w.grantable
         FROM changed c
         -- grantee=privileges/grantor, split where no name is quoted (no '"'), and
         -- read with the regular expression where one is (and may hold = or /).
         CROSS JOIN LATERAL (SELECT CASE WHEN strpos(c.item, '"') = 0
                 THEN ARRAY[split_part(c.item, '=', 1),
                            split_part(split_part(c.item, '=', 2), '/', 1),
                            split_part(c.item, '/', 2)]
                 ELSE regexp_match(c.item,
                          '^((?:"(?:[^"]|"")*"|[^="])*)=([A-Za-z*]*)/(.*)$') END AS m) AS p
         CROSS JOIN LATERAL generate_series(1, length(p.m[2])) AS g(i)
         CROSS JOIN LATERAL (VALUES (false), (true)) AS w(grantable)
         WHERE substr(p.m[2], g.i, 1) <> '*'
           AND (NOT w.grantable OR substr(p.m[2], g.i + 1, 1) = '*')),
     privileges AS (
         SELECT q.classid, q.objid, q.grantee, q.grantor, q.grantable, q.granted,
                jsonb_agg(v.name ORDER BY v.name) AS names
         FROM (SELECT classid, objid, grantee, grantor, letter, grantable,
                      count(*) FILTER (WHERE side = 'a') > count(*) FILTER (WHERE side = 'b')
                          AS granted
               FROM letters
               GROUP BY 1, 2, 3, 4, 5, 6
               HAVING count(*) FILTER (WHERE side = 'a')
                      <> count(*) FILTER (WHERE side = 'b')) AS q
         -- The privilege letters of an ACL item, as PostgreSQL prints them.
         JOIN (VALUES ('r', 'SELECT'), ('a', 'INSERT'), ('w', 'UPDATE'), ('d', 'DELETE'),
                      ('D', 'TRUNCATE'), ('x', 'REFERENCES'), ('t', 'TRIGGER'),
                      ('m', 'MAINTAIN'), ('X', 'EXECUTE'), ('U', 'USAGE'), ('C', 'CREATE'),
                      ('c', 'CONNECT'), ('T', 'TEMPORARY'), ('s', 'SET'), ('A', 'ALTER SYSTEM'))
              AS v(letter, name) ON v.letter = q.letter
         GROUP BY 1, 2, 3, 4, 5, 6),
     ch(part, k1, k2, k3, k4, c) AS (
         SELECT 1, a.name, '', '', 0,
                jsonb_build_object('action', 'create_role', 'role', a.name, 'login', a.login)
         FROM rr a WHERE a.in_a AND NOT a.in_b
         UNION ALL
         SELECT 1, a.name, '', '', 1,
                jsonb_build_object('action', 'comment', 'role', a.name, 'comment',
                                   (SELECT cd.description FROM pg_shdescription cd
                                    WHERE cd.objoid = a.oid
                                      AND cd.classoid = 'pg_authid'::regclass))
         FROM rr a WHERE a.in_a AND NOT a.in_b AND a.digest <> ''
         UNION ALL
         SELECT 2, a.name, '', '', 0, jsonb_build_object('action', 'drop_role', 'role', a.name)
         FROM rr a WHERE a.in_b AND NOT a.in_a
         UNION ALL
         SELECT 3, a.name, 'login', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'login', a.login)
         FROM rr a WHERE a.in_a AND a.in_b AND a.login <> a.b_login
         UNION ALL
         SELECT 3, a.name, 'connection_limit', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name,
                                   'connection_limit', a.connlimit)
         FROM rr a WHERE a.in_a AND a.in_b AND a.connlimit <> a.b_connlimit
         UNION ALL
         SELECT 3, a.name, 'valid_until', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'valid_until',
                                   (SELECT p.rolvaliduntil FROM pg_roles p WHERE p.oid = a.oid))
         FROM rr a WHERE a.in_a AND a.in_b AND a.valid_until <> a.b_valid_until
         UNION ALL
         SELECT 3, a.name, 'settings', '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, 'settings',
                                   (SELECT to_jsonb(p.rolconfig) FROM pg_roles p
                                    WHERE p.oid = a.oid))
         FROM rr a WHERE a.in_a AND a.in_b AND a.config <> a.b_config
         UNION ALL
         -- The role attributes kept as FLAGS, by their position there.
         SELECT 3, a.name, f.name, '', 0,
                jsonb_build_object('action', 'alter_role', 'role', a.name, f.name,
                                   substr(a.flags, f.pos, 1) = '1')
         FROM rr a
         CROSS JOIN (VALUES (1, 'superuser'), (2, 'inherit'), (3, 'createrole'),
                            (4, 'createdb'), (5, 'replication'), (6, 'bypassrls'))
                    AS f(pos, name)
         WHERE a.in_a AND a.in_b AND substr(a.flags, f.pos, 1) <> substr(a.b_flags, f.pos, 1)
         UNION ALL
         SELECT 3, a.name, '~comment', '', 1,
                jsonb_build_object('action', 'comment', 'role', a.name, 'comment',
                                   (SELECT cd.description FROM pg_shdescription cd
                                    WHERE cd.objoid = a.oid
                                      AND cd.classoid = 'pg_authid'::regclass))
         FROM rr a WHERE a.in_a AND a.in_b AND a.digest <> a.b_digest
         UNION ALL
         SELECT 4, a.role, a.member, a.grantor, 0, '{"action": "grant"}'::jsonb || a.fields
         FROM mm a WHERE a.in_a AND NOT a.in_b
         UNION ALL
         SELECT 5, a.role, a.member, a.grantor, 0, '{"action": "revoke"}'::jsonb || a.b_fields
         FROM mm a WHERE a.in_b AND NOT a.in_a
         UNION ALL
         -- A membership's options, each granted or revoked on its own.
         SELECT 6, a.role, a.member, a.grantor, o.k,
                jsonb_build_object('action', CASE WHEN o.after = '1' THEN 'grant'
                                                  ELSE 'revoke' END,
                                   'role', a.role, 'member', a.member, 'grantor', a.grantor,
                                   'option', o.name)
         FROM mm a
         CROSS JOIN LATERAL (VALUES (5, 'admin', a.admin, a.b_admin),
                                    (6, 'inherit', a.inherit, a.b_inherit),
                                    (7, 'set', a.set, a.b_set)) AS o(k, name, after, before)
         WHERE a.in_a AND a.in_b AND o.after IS DISTINCT FROM o.before
         UNION ALL
         SELECT 7, o.id_type || ' ' || o.identity, p.grantee,
                p.grantor || CASE WHEN p.granted THEN '+' ELSE '-' END, p.grantable::int,
                jsonb_strip_nulls(jsonb_build_object(
                    'action', CASE WHEN p.granted THEN 'grant_privilege'
                                   ELSE 'revoke_privilege' END,
                    -- Databases and tablespaces are the cluster's, not one database's.
                    'database', CASE WHEN o.classid = 1262 THEN o.identity
                                     WHEN o.classid = 1213 THEN NULL
                                     ELSE current_database() END,
                    'object', o.id_type || ' ' || o.identity,
                    'role', coalesce(nullif(p.grantee, ''), 'PUBLIC'),
                    'privileges', p.names, 'grantor', p.grantor,
                    'grant_option', CASE WHEN p.grantable THEN true END))
         FROM privileges p
         JOIN objects o ON (o.classid, o.objid) = (p.classid, p.objid)
         UNION ALL
         -- Users made by hand that the job now manages: new members of the marker role
         -- (without ADMIN OPTION, which is its creator's), not created in this run and
         -- not marked by an earlier version.
         SELECT 8, a.member, '', '', 0, jsonb_build_object('action', 'adopt', 'role', a.member)
         FROM mm a JOIN pg_roles u ON u.rolname = a.member
         WHERE a.role = 'aurora_bootstrap_managed' AND a.in_a AND a.admin = '0'
           AND a.member NOT IN (SELECT b.member FROM mm b
                                WHERE b.role = 'aurora_bootstrap_managed' AND b.in_b)
           AND (a.member IN (SELECT x.name FROM rr x WHERE x.in_b)
                OR a.member NOT IN (SELECT x.name FROM rr x WHERE x.in_a))
           AND coalesce((SELECT dd.description FROM pg_shdescription dd
                         WHERE dd.objoid = u.oid AND dd.classoid = 'pg_authid'::regclass), '')
               !~ '^managed by aurora-bootstrap( |$)')
SELECT string_agg(c, E'\n' ORDER BY n) FROM (
    SELECT c::text AS c,
           row_number() OVER (ORDER BY part, k1 COLLATE "C", k2 COLLATE "C",
                                       k3 COLLATE "C", k4) AS n
    FROM (SELECT 0 AS part, '' AS k1, '' AS k2, '' AS k3, 0 AS k4,
                 jsonb_build_object('fingerprint',
                                    (SELECT count(*) || ':'
                                            || coalesce(sum(hashtextextended(e, 0)), 0)
                                     FROM now)) AS c
          UNION ALL
          SELECT * FROM ch) AS x) AS y
GROUP BY (n - 1) / 1000
ORDER BY (n - 1) / 1000
