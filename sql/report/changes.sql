-- What changed in this transaction: the snapshot taken before init.sql
-- (bootstrap.snapshot) against the one taken after it (bootstrap.snapshot_now), both
-- of snapshot.sql, as the lines of the change report in their final order.
--
-- Roles are matched by name, memberships by (role, member, grantor), privileges by
-- (object, grantee, grantor, privilege, grant option); names come from the catalog,
-- or for a role dropped in this run from its own snapshot row. The result is its
-- lines of one JSON object each, as one text in pieces (the end), so that a large
-- report costs the client a few rows to read; the first line is the catalog's
-- fingerprint now (fingerprint.sql), which confirms a COMMIT whose reply was lost.
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
     -- Each membership's row on either side, by its oids (named once grouped: the
     -- 30,000 memberships of 10,000 new users are far fewer names).
     mo AS MATERIALIZED (
         SELECT f[2] AS role_oid, f[3] AS member_oid, f[4] AS grantor_oid,
                bool_or(side = 'a') AS in_a, bool_or(side = 'b') AS in_b,
                max(f[5]) FILTER (WHERE side = 'a') AS admin,
                max(f[5]) FILTER (WHERE side = 'b') AS b_admin,
                max(f[6]) FILTER (WHERE side = 'a') AS inherit,
                max(f[6]) FILTER (WHERE side = 'b') AS b_inherit,
                max(f[7]) FILTER (WHERE side = 'a') AS set,
                max(f[7]) FILTER (WHERE side = 'b') AS b_set
         FROM (SELECT side, string_to_array(e, ':') AS f FROM d WHERE left(e, 2) = 'm:') AS x
         GROUP BY 1, 2, 3),
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
         SELECT coalesce(o1.name, pg_get_userbyid(x.role_oid::oid)) AS role,
                coalesce(o2.name, pg_get_userbyid(x.member_oid::oid)) AS member,
                coalesce(o3.name, pg_get_userbyid(x.grantor_oid::oid)) AS grantor, x.*
         FROM mo AS x
         LEFT JOIN gone o1 ON o1.oid = x.role_oid::oid
         LEFT JOIN gone o2 ON o2.oid = x.member_oid::oid
         LEFT JOIN gone o3 ON o3.oid = x.grantor_oid::oid),
     -- Memberships granted or revoked alike but for their member, one row each with
     -- the members, grouped before any JSON is built: the options that are not their
     -- default are the change's fields.
     membership_changes AS MATERIALIZED (
         SELECT x.part, x.role, count(*) AS n,
                array_agg(x.member ORDER BY x.member COLLATE "C") AS members,
                jsonb_build_object('action', CASE x.part WHEN 4 THEN 'grant' ELSE 'revoke' END,
                                   'grantor', x.grantor)
                || CASE WHEN x.admin = '1' THEN '{"admin_option": true}'::jsonb ELSE '{}' END
                || CASE WHEN x.inherit = '0' THEN '{"inherit_option": false}'::jsonb
                        ELSE '{}' END
                || CASE WHEN x.set = '0' THEN '{"set_option": false}'::jsonb ELSE '{}' END AS c
         FROM (SELECT 4 AS part, role, member, grantor, admin, inherit, set
               FROM mm WHERE in_a AND NOT in_b
               UNION ALL
               SELECT 5, role, member, grantor, b_admin, b_inherit, b_set
               FROM mm WHERE in_b AND NOT in_a) AS x
         GROUP BY x.part, x.role, x.grantor, x.admin, x.inherit, x.set),
     -- Privileges: for each object whose row differs, its ACL items before and after,
     -- a missing row standing for the object's default; then the items that differ,
     -- taken apart into one row per privilege (and one more where it is grantable).
     acl AS MATERIALIZED (
         SELECT side, f[2]::oid AS classid, f[3]::oid AS objid, f[4]::int AS sub, f[5] AS kind,
                f[6]::oid AS owner, substr(e, brace) AS items
         -- The ACL starts at the first brace, which no field before it holds: one split
         -- of what precedes it costs a fraction of splitting the whole row field by field.
         FROM (SELECT side, e, brace, string_to_array(left(e, brace - 2), ':') AS f
               FROM (SELECT side, e, strpos(e, '{') AS brace FROM d WHERE left(e, 2) = 'a:') AS y)
              AS x),
     -- Each object's row before and after, by grouping: a join of the two sides
     -- would be planned as a nested loop over CTEs the planner guesses at one row.
     sides AS MATERIALIZED (
         SELECT classid, objid, sub,
                (array_agg(items) FILTER (WHERE side = 'b'))[1] AS before,
                (array_agg(items) FILTER (WHERE side = 'a'))[1] AS after,
                (array_agg(kind) FILTER (WHERE side = 'b'))[1] AS bkind,
                (array_agg(kind ORDER BY side))[1] AS kind,
                (array_agg(owner ORDER BY side))[1] AS owner
         FROM acl
         GROUP BY classid, objid, sub),
     objects AS MATERIALIZED (
         SELECT o.classid, o.objid, o.sub, o.before, o.after, o.kind, o.owner,
                -- Default privileges all revoked leave no row to name: named from the
                -- snapshot's, as pg_identify_object names one.
                coalesce(i.type, CASE WHEN o.classid = 826 THEN 'default acl' END) AS id_type,
                coalesce(i.identity, CASE WHEN o.after IS NULL AND o.classid = 826 THEN
                    format('for role %s%s on %s',
                           quote_ident(pg_get_userbyid(o.owner)),
                           CASE WHEN o.bkind LIKE 'E%' THEN
                               ' in schema ' || (SELECT quote_ident(n.nspname) FROM pg_namespace n
                                                 WHERE n.oid = substr(o.bkind, 3)::oid)
                           ELSE '' END,
                           CASE CASE WHEN o.bkind LIKE 'E%' THEN substr(o.bkind, 2, 1)
                                     ELSE o.bkind END
                                WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences'
                                WHEN 's' THEN 'sequences' WHEN 'f' THEN 'functions'
                                WHEN 'T' THEN 'types' WHEN 'L' THEN 'large objects'
                                ELSE 'schemas' END) END) AS identity
         FROM sides AS o
         CROSS JOIN LATERAL pg_identify_object(o.classid, o.objid, o.sub) AS i),
     -- Objects whose ACL changed alike (the same before and after, of one kind and
     -- owner: the 5,000 tables granted to one group) are one pair, taken apart once.
     pairs AS MATERIALIZED (
         SELECT row_number() OVER () AS pair, x.*
         FROM (SELECT DISTINCT coalesce(o.before, '') AS before, coalesce(o.after, '') AS after,
                      o.kind, o.owner
               FROM objects o
               -- Not dropped in this run.
               WHERE o.identity IS NOT NULL) AS x),
     -- Roles whose name this run changed or that it dropped: an old ACL's text names
     -- them, so only its text can be read.
     renamed AS (
         SELECT FROM r
         WHERE side = 'b' AND name IS DISTINCT FROM (SELECT p.rolname FROM pg_roles p
                                                     WHERE p.oid = r.oid)),
     -- Each pair's privileges before and after, one row per privilege and one more
     -- where it is grantable: taken apart by PostgreSQL itself (aclexplode), a
     -- missing row standing for the object's default.
     native AS (
         SELECT p.pair, s.side,
                CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee)::text END
                    AS grantee,
                pg_get_userbyid(a.grantor)::text AS grantor, a.privilege_type AS name,
                w.grantable
         FROM pairs p
         CROSS JOIN LATERAL (VALUES ('b', p.before), ('a', p.after)) AS s(side, items)
         -- (An empty ACL, which aclexplode refuses, holds nothing to take apart.)
         CROSS JOIN LATERAL aclexplode(nullif(coalesce(
             nullif(s.items, '')::aclitem[],
             CASE WHEN p.kind LIKE 'E%' THEN '{}'::aclitem[]
                  ELSE acldefault(p.kind::"char", p.owner) END), '{}')) AS a
         CROSS JOIN LATERAL (VALUES (false), (true)) AS w(grantable)
         WHERE (NOT w.grantable OR a.is_grantable) AND NOT EXISTS (SELECT FROM renamed)),
     -- The same read from the text, for an ACL that names a role by an old name.
     items AS (
         SELECT p.pair, s.side, i.item
         FROM pairs p
         CROSS JOIN LATERAL (VALUES ('b', p.before), ('a', p.after)) AS s(side, items)
         CROSS JOIN LATERAL unnest(coalesce(nullif(s.items, ''),
                 CASE WHEN p.kind LIKE 'E%' THEN '{}'
                      ELSE acldefault(p.kind::"char", p.owner)::text END)::text[]) AS i(item)
         WHERE EXISTS (SELECT FROM renamed)),
     letters AS (
         SELECT c.pair, c.side,
                -- Role names as PostgreSQL prints them in an ACL item: quoted where
                -- they must be.
                CASE WHEN left(p.m[1], 1) = '"'
                     THEN replace(substr(p.m[1], 2, length(p.m[1]) - 2), '""', '"')
                     ELSE p.m[1] END AS grantee,
                CASE WHEN left(p.m[3], 1) = '"'
                     THEN replace(substr(p.m[3], 2, length(p.m[3]) - 2), '""', '"')
                     ELSE p.m[3] END AS grantor,
                v.name, w.grantable
         FROM items c
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
         -- The privilege letters of an ACL item, as PostgreSQL prints them.
         JOIN (VALUES ('r', 'SELECT'), ('a', 'INSERT'), ('w', 'UPDATE'), ('d', 'DELETE'),
                      ('D', 'TRUNCATE'), ('x', 'REFERENCES'), ('t', 'TRIGGER'),
                      ('m', 'MAINTAIN'), ('X', 'EXECUTE'), ('U', 'USAGE'), ('C', 'CREATE'),
                      ('c', 'CONNECT'), ('T', 'TEMPORARY'), ('s', 'SET'), ('A', 'ALTER SYSTEM'))
              AS v(letter, name) ON v.letter = substr(p.m[2], g.i, 1)
         WHERE NOT w.grantable OR substr(p.m[2], g.i + 1, 1) = '*'),
     -- What each pair granted and revoked: the privileges on one side more often than
     -- on the other.
     pair_changes AS MATERIALIZED (
         SELECT q.pair, q.grantee, q.grantor, q.grantable, q.granted,
                jsonb_agg(q.name ORDER BY q.name) AS names
         FROM (SELECT pair, grantee, grantor, name, grantable,
                      count(*) FILTER (WHERE side = 'a') > count(*) FILTER (WHERE side = 'b')
                          AS granted
               FROM (SELECT * FROM native UNION ALL SELECT * FROM letters) AS e
               GROUP BY 1, 2, 3, 4, 5
               HAVING count(*) FILTER (WHERE side = 'a')
                      <> count(*) FILTER (WHERE side = 'b')) AS q
         GROUP BY 1, 2, 3, 4, 5),
     privileges AS (
         SELECT o.classid, o.objid, o.sub, c.grantee, c.grantor, c.grantable, c.granted, c.names
         FROM objects o
         JOIN pairs p ON (p.before, p.after, p.kind, p.owner)
                       = (coalesce(o.before, ''), coalesce(o.after, ''), o.kind, o.owner)
         JOIN pair_changes c ON c.pair = p.pair
         WHERE o.identity IS NOT NULL),
     -- Privilege changes alike but for their object, one row each with the objects:
     -- grouped before any JSON is built, as they are most of a large report.
     privilege_changes AS MATERIALIZED (
         SELECT coalesce(nullif(p.grantee, ''), 'PUBLIC') AS role, count(*) AS n,
                array_agg(o.id_type || ' ' || o.identity
                          ORDER BY o.id_type || ' ' || o.identity COLLATE "C") AS objects,
                jsonb_strip_nulls(jsonb_build_object(
                    'action', CASE WHEN p.granted THEN 'grant_privilege'
                                   ELSE 'revoke_privilege' END,
                    -- Databases and tablespaces are the cluster's, not one database's.
                    'database', CASE WHEN o.classid = 1262 THEN min(o.identity)
                                     WHEN o.classid = 1213 THEN NULL
                                     ELSE current_database() END,
                    'privileges', p.names, 'grantor', p.grantor,
                    'grant_option', CASE WHEN p.grantable THEN true END)) AS c
         FROM privileges p
         JOIN objects o ON (o.classid, o.objid, o.sub) = (p.classid, p.objid, p.sub)
         GROUP BY p.grantee, p.grantor, p.granted, p.grantable, p.names, o.classid,
                  CASE WHEN o.classid = 1262 THEN o.identity END),
     -- Each change as its fields but the names it concerns: vary and val, the name
     -- changes are most often alike but for (a role made, the member of a membership,
     -- the object of a privilege), and vary2 and val2 the next (the role granted, the
     -- role given a privilege), so that changes alike but for one name are one entry;
     -- k orders the entries of a part.
     ch(part, k, vary, val, vary2, val2, c) AS (
         SELECT 1, '0', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'create_role', 'login', a.login)
         FROM rr a WHERE a.in_a AND NOT a.in_b
         UNION ALL
         SELECT 1, '1', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'comment', 'comment',
                                   (SELECT cd.description FROM pg_shdescription cd
                                    WHERE cd.objoid = a.oid
                                      AND cd.classoid = 'pg_authid'::regclass))
         FROM rr a WHERE a.in_a AND NOT a.in_b AND a.digest <> ''
         UNION ALL
         SELECT 2, '', 'role', a.name, NULL, NULL, '{"action": "drop_role"}'::jsonb
         FROM rr a WHERE a.in_b AND NOT a.in_a
         UNION ALL
         SELECT 3, 'login', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'alter_role', 'login', a.login)
         FROM rr a WHERE a.in_a AND a.in_b AND a.login <> a.b_login
         UNION ALL
         SELECT 3, 'connection_limit', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'alter_role', 'connection_limit', a.connlimit)
         FROM rr a WHERE a.in_a AND a.in_b AND a.connlimit <> a.b_connlimit
         UNION ALL
         SELECT 3, 'valid_until', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'alter_role', 'valid_until',
                                   (SELECT p.rolvaliduntil FROM pg_roles p WHERE p.oid = a.oid))
         FROM rr a WHERE a.in_a AND a.in_b AND a.valid_until <> a.b_valid_until
         UNION ALL
         SELECT 3, 'settings', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'alter_role', 'settings',
                                   (SELECT to_jsonb(p.rolconfig) FROM pg_roles p
                                    WHERE p.oid = a.oid))
         FROM rr a WHERE a.in_a AND a.in_b AND a.config <> a.b_config
         UNION ALL
         -- The role attributes kept as FLAGS, by their position there.
         SELECT 3, f.name, 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'alter_role', f.name,
                                   substr(a.flags, f.pos, 1) = '1')
         FROM rr a
         CROSS JOIN (VALUES (1, 'superuser'), (2, 'inherit'), (3, 'createrole'),
                            (4, 'createdb'), (5, 'replication'), (6, 'bypassrls'))
                    AS f(pos, name)
         WHERE a.in_a AND a.in_b AND substr(a.flags, f.pos, 1) <> substr(a.b_flags, f.pos, 1)
         UNION ALL
         SELECT 3, '~comment', 'role', a.name, NULL, NULL,
                jsonb_build_object('action', 'comment', 'comment',
                                   (SELECT cd.description FROM pg_shdescription cd
                                    WHERE cd.objoid = a.oid
                                      AND cd.classoid = 'pg_authid'::regclass))
         FROM rr a WHERE a.in_a AND a.in_b AND a.digest <> a.b_digest
         UNION ALL
         SELECT m.part, m.role, 'member', m.members[1], 'role', m.role, m.c
         FROM membership_changes m WHERE m.n = 1
         UNION ALL
         -- A membership's options, each granted or revoked on its own.
         SELECT 6, a.role, 'member', a.member, 'role', a.role,
                jsonb_build_object('action', CASE WHEN o.after = '1' THEN 'grant'
                                                  ELSE 'revoke' END,
                                   'grantor', a.grantor, 'option', o.name)
         FROM mm a
         CROSS JOIN LATERAL (VALUES (5, 'admin', a.admin, a.b_admin),
                                    (6, 'inherit', a.inherit, a.b_inherit),
                                    (7, 'set', a.set, a.b_set)) AS o(k, name, after, before)
         WHERE a.in_a AND a.in_b AND o.after IS DISTINCT FROM o.before
         UNION ALL
         SELECT 7, p.role, 'object', p.objects[1], 'role', p.role, p.c
         FROM privilege_changes p WHERE p.n = 1
         UNION ALL
         -- Users made by hand that the job now manages: new members of the marker role
         -- (without ADMIN OPTION, which is its creator's), not created in this run and
         -- not marked by an earlier version.
         SELECT 8, '', 'role', a.member, NULL, NULL, '{"action": "adopt"}'::jsonb
         FROM mm a JOIN pg_roles u ON u.rolname = a.member
         WHERE a.role = 'aurora_bootstrap_managed' AND a.in_a AND a.admin = '0'
           AND a.member NOT IN (SELECT b.member FROM mm b
                                WHERE b.role = 'aurora_bootstrap_managed' AND b.in_b)
           AND (a.member IN (SELECT x.name FROM rr x WHERE x.in_b)
                OR a.member NOT IN (SELECT x.name FROM rr x WHERE x.in_a))
           AND coalesce((SELECT dd.description FROM pg_shdescription dd
                         WHERE dd.objoid = u.oid AND dd.classoid = 'pg_authid'::regclass), '')
               !~ '^managed by aurora-bootstrap( |$)'),
     -- Changes alike but for their first name are one entry, listing the names and
     -- their count; of the rest, those alike but for their second name likewise.
     first AS (
         SELECT part, min(k COLLATE "C") AS k, vary, c, vary2, val2, count(*) AS n,
                array_agg(val ORDER BY val COLLATE "C") AS vals
         FROM ch
         GROUP BY part, vary, c, vary2, val2),
     entries AS (
         SELECT m.part, m.role AS k, m.members[1] AS name,
                m.c || jsonb_build_object('members', to_jsonb(m.members), 'count', m.n,
                                          'role', m.role) AS c
         FROM membership_changes m WHERE m.n > 1
         UNION ALL
         SELECT 7 AS part, p.role AS k, p.objects[1] AS name,
                p.c || jsonb_build_object('objects', to_jsonb(p.objects), 'count', p.n,
                                          'role', p.role)
         FROM privilege_changes p WHERE p.n > 1
         UNION ALL
         SELECT part, k, vals[1] AS name,
                c || jsonb_build_object(vary || 's', to_jsonb(vals), 'count', n)
                  || CASE WHEN vary2 IS NOT NULL THEN jsonb_build_object(vary2, val2)
                          ELSE '{}' END AS c
         FROM first WHERE n > 1
         UNION ALL
         SELECT part, min(k COLLATE "C"), min(val2 COLLATE "C"),
                CASE WHEN vary2 IS NULL THEN c
                     WHEN count(*) = 1 THEN c || jsonb_build_object(vary2, min(val2))
                     ELSE c || jsonb_build_object(vary2 || 's',
                                                  to_jsonb(array_agg(val2 ORDER BY val2 COLLATE "C")),
                                                  'count', count(*)) END
         FROM (SELECT part, k, vary2, val2, c || jsonb_build_object(vary, vals[1]) AS c
               FROM first WHERE n = 1) AS single
         GROUP BY part, vary2, c)
-- The lines as one text, in pieces of at most 16,000 characters (64 KB, the most the
-- Data API returns in a row, at four bytes a character): the client joins them.
SELECT substr(t.whole, (g.i - 1) * 16000 + 1, 16000)
FROM (SELECT string_agg(c, E'\n' ORDER BY n) AS whole FROM (
          SELECT c::text AS c,
                 row_number() OVER (ORDER BY part, k COLLATE "C", name COLLATE "C",
                                             c::text COLLATE "C") AS n
          FROM (SELECT 0 AS part, '' AS k, '' AS name,
                       jsonb_build_object('fingerprint',
                                          (SELECT count(*) || ':'
                                                  || coalesce(sum(hashtextextended(e, 0)), 0)
                                           FROM now)) AS c
                UNION ALL
                SELECT part, k, name, c FROM entries) AS x) AS y) AS t
CROSS JOIN LATERAL generate_series(1, (length(t.whole) + 15999) / 16000) AS g(i)
ORDER BY g.i
