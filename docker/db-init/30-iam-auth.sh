#!/bin/sh
# Sends members of rds_iam to the iam-auth service for their password (an IAM token),
# as Aurora does; the superuser and the master keep their passwords. "+rds_iam"
# matches indirect members too, and the master is one (through rds_superuser), so
# the password lines come first.
set -eu
hba="$PGDATA/pg_hba.conf"
{
    echo "host all postgres,master all scram-sha-256"
    echo "host all +rds_iam all ldap ldapserver=${IAM_AUTH_HOST:-iam-auth} ldapport=${IAM_AUTH_PORT:-1389} ldapprefix=\"cn=\" ldapsuffix=\",dc=rds-iam\""
    cat "$hba"
} > "$hba.new"
mv "$hba.new" "$hba"
