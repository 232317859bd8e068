#!/bin/sh
# Gives the Aurora stand-in master user its password, from MASTER_PASSWORD.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$MASTER_PASSWORD" -U postgres -d postgres <<'SQL'
ALTER ROLE master PASSWORD :'pw';
SQL
