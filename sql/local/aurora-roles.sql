-- Aurora PostgreSQL's privilege model, for vanilla PostgreSQL.
--
-- Run once, as a superuser, on a local or test server. On Aurora the master user is
-- not a superuser: it has CREATEROLE and CREATEDB and is a member of rds_superuser,
-- which holds rds_iam WITH ADMIN OPTION. From PostgreSQL 16 that ADMIN OPTION is
-- what lets the master grant rds_iam, and such grants are recorded with grantor
-- rds_superuser. The master's password is set by whoever runs this file.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_superuser') THEN
        CREATE ROLE rds_superuser NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_iam') THEN
        CREATE ROLE rds_iam NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'master') THEN
        CREATE ROLE master LOGIN CREATEROLE CREATEDB IN ROLE rds_superuser;
    END IF;
END
$$;

GRANT rds_iam TO rds_superuser WITH ADMIN OPTION;

-- On RDS the databases made at cluster creation belong to the master user, and with
-- them schema public (owned by pg_database_owner from PostgreSQL 15).
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO master', current_database());
END
$$;
