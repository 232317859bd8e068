-- The catalog as the change report sees it: one text row per entry, by oid, which is
-- far cheaper to build than names or JSON (pg_get_userbyid and jsonb per row tripled
-- its cost at 10,000 users); names are looked up only for the rows that differ
-- (changes.sql). It holds every attribute the change report and the commit
-- fingerprint depend on, so that the two cannot disagree about what changed. Only
-- catalogs the master user can read on Aurora are used (never pg_authid).
--
-- The job keeps it on the server, as a text array in a transaction-local setting:
--   SELECT set_config('bootstrap.snapshot', ARRAY(<this query>)::text, true);
-- psql can run or EXPLAIN it as it is.

-- Roles: r:OID:LOGIN:FLAGS:CONNLIMIT:VALIDUNTIL:MD5(CONFIG):MD5(COMMENT):NAME, FLAGS
-- being superuser, inherit, createrole, createdb, replication, bypassrls as 0/1, the
-- name last (it may hold any character). PostgreSQL's own pg_* roles are left out.
SELECT 'r:' || r.oid || ':' || r.rolcanlogin::int || ':' ||
       r.rolsuper::int || r.rolinherit::int || r.rolcreaterole::int || r.rolcreatedb::int
       || r.rolreplication::int || r.rolbypassrls::int || ':' || r.rolconnlimit || ':' ||
       coalesce(extract(epoch FROM r.rolvaliduntil)::text, '') || ':' ||
       coalesce(md5(r.rolconfig::text), '') || ':' ||
       coalesce(md5((SELECT d.description FROM pg_shdescription d
                     WHERE d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass)), '')
       || ':' || r.rolname AS e
FROM pg_roles r
WHERE r.rolname !~ '^pg_'
UNION ALL
-- Memberships with their grantor (from PostgreSQL 16 a membership belongs to it) and
-- options: m:ROLE:MEMBER:GRANTOR:ADMIN, and from 16 :INHERIT:SET, by oid. The 16
-- columns are read through the row's JSON, so that one text serves 15 too.
SELECT 'm:' || a.roleid || ':' || a.member || ':' || a.grantor || ':' || a.admin_option::int
       || coalesce(':' || (o.j ->> 'inherit_option')::boolean::int
                   || ':' || (o.j ->> 'set_option')::boolean::int, '')
FROM pg_auth_members a
CROSS JOIN LATERAL (SELECT to_jsonb(a) AS j) AS o
UNION ALL
-- Privileges, one row per object whose ACL is not the default:
-- a:CLASS:OID:SUB:KIND:OWNER:ACL, CLASS being the fixed oid of the object's catalog (a
-- constant in every PostgreSQL version, spelt as a number so that no regclass is
-- parsed per row), SUB a column's number (0 for the rest) and KIND the object type
-- acldefault() takes ('E', its object type and the schema's oid for a schema's
-- default privileges, whose default is none). An object with no row has its owner's
-- implicit privileges (acldefault), which is what the report compares a missing row
-- with: the first GRANT on a table writes its owner's privileges out, and changes
-- none of them. PostgreSQL's own objects are here too: a declared group may hold
-- privileges on them.
SELECT 'a:1262:' || x.oid || ':0:d:' || x.datdba || ':' || x.datacl::text
FROM pg_database x WHERE x.datacl IS NOT NULL
UNION ALL
SELECT 'a:1213:' || x.oid || ':0:t:' || x.spcowner || ':' || x.spcacl::text
FROM pg_tablespace x WHERE x.spcacl IS NOT NULL
UNION ALL
SELECT 'a:2615:' || x.oid || ':0:n:' || x.nspowner || ':' || x.nspacl::text
FROM pg_namespace x WHERE x.nspacl IS NOT NULL
UNION ALL
SELECT 'a:1259:' || x.oid || ':0:' || CASE x.relkind WHEN 'S' THEN 's' ELSE 'r' END || ':'
       || x.relowner || ':' || x.relacl::text
FROM pg_class x
WHERE x.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND x.relacl IS NOT NULL
UNION ALL
SELECT 'a:1259:' || x.attrelid || ':' || x.attnum || ':c:' || c.relowner || ':' || x.attacl::text
FROM pg_attribute x JOIN pg_class c ON c.oid = x.attrelid
WHERE x.attacl IS NOT NULL AND NOT x.attisdropped
UNION ALL
SELECT 'a:1255:' || x.oid || ':0:f:' || x.proowner || ':' || x.proacl::text
FROM pg_proc x WHERE x.proacl IS NOT NULL
UNION ALL
SELECT 'a:1247:' || x.oid || ':0:T:' || x.typowner || ':' || x.typacl::text
FROM pg_type x WHERE x.typacl IS NOT NULL
UNION ALL
SELECT 'a:2612:' || x.oid || ':0:l:' || x.lanowner || ':' || x.lanacl::text
FROM pg_language x WHERE x.lanacl IS NOT NULL
UNION ALL
SELECT 'a:2328:' || x.oid || ':0:F:' || x.fdwowner || ':' || x.fdwacl::text
FROM pg_foreign_data_wrapper x WHERE x.fdwacl IS NOT NULL
UNION ALL
SELECT 'a:1417:' || x.oid || ':0:S:' || x.srvowner || ':' || x.srvacl::text
FROM pg_foreign_server x WHERE x.srvacl IS NOT NULL
UNION ALL
-- Default privileges: per schema 'E' + the object type + the schema's oid; global ones
-- the kind acldefault() takes for that object type (a missing global row is the
-- built-in default).
SELECT 'a:826:' || x.oid || ':0:'
       || CASE WHEN x.defaclnamespace <> 0
               THEN 'E' || x.defaclobjtype::text || x.defaclnamespace::text
               WHEN x.defaclobjtype = 'S' THEN 's'
               ELSE x.defaclobjtype::text END
       || ':' || x.defaclrole || ':' || x.defaclacl::text
FROM pg_default_acl x WHERE x.defaclacl IS NOT NULL
