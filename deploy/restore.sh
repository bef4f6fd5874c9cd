#!/usr/bin/env bash
# Restore a dump made by deploy/backup.sh into a NEW database: one that does not exist yet (it is created) or is
# empty. It refuses a database with any table, view or sequence in it: a restore never lands on top of data.
#
#   deploy/restore.sh DUMP DATABASE_URL
#
# e.g. deploy/restore.sh /var/backups/idp/idp-20261203T020000.000Z.dump postgresql://idp@/idp_restored
#
# The objects are owned by the user of DATABASE_URL (--no-owner), all in one transaction: a failed restore leaves
# the database empty. Then, to serve from it:
#   1. the same IDP_SECRET_KEY as when the dump was made (the signing keys in the dump are encrypted with it);
#   2. IDP_DATABASE_URL=<DATABASE_URL> in /etc/idp/idp.env;
#   3. `idp db upgrade` (a dump from an older idp gets the newer migrations; nothing happens otherwise);
#   4. `systemctl restart idp-web 'idp-worker@*'`.
# Creating the database needs the CREATEDB privilege (or create it beforehand: createdb -O idp idp_restored).
set -euo pipefail

die() { echo "restore.sh: $*" >&2; exit 1; }
# shellcheck source=deploy/libpq_url.sh
. "$(dirname "$(readlink -f "$0")")/libpq_url.sh"

[ $# -eq 2 ] || die "usage: restore.sh DUMP DATABASE_URL"
[ -r "$1" ] || die "cannot read $1"
pg_restore --list -- "$1" >/dev/null || die "$1 is not a dump pg_restore can read"
dump="$1"
libpq_url "$2"
url="$LIBPQ_URL"

# The database's name and the URL of the server's maintenance database (same user, host and options).
rest="${url#*://}"
authority="${rest%%/*}"
after="${rest:${#authority}}"   # /name?options
path="${after%%\?*}"
options="${after:${#path}}"
raw="${path#/}"
name="$(printf '%b' "${raw//%/\\x}")"
[ -n "$name" ] || die "DATABASE_URL names no database"
[[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_$-]*$ ]] || die "unusual database name '$name': create it yourself first"
maintenance="${url%%://*}://$authority/postgres$options"

exists="$(psql --no-password --no-psqlrc -tAq --dbname="$maintenance" \
  -c "SELECT 1 FROM pg_database WHERE datname = '$name'")"
if [ -z "$exists" ]; then
  psql --no-password --no-psqlrc -q -v ON_ERROR_STOP=1 --dbname="$maintenance" -c "CREATE DATABASE \"$name\""
  echo "created database $name"
else
  objects="$(psql --no-password --no-psqlrc -tAq --dbname="$url" -c "
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'")"
  [ "$objects" = "0" ] || die "database $name is not empty ($objects tables, views or sequences): restore into a new one"
fi

pg_restore --no-password --no-owner --exit-on-error --single-transaction --dbname="$url" -- "$dump"
echo "restored $dump into $name"
