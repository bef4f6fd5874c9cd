#!/usr/bin/env bash
# Back up idp's PostgreSQL database: a pg_dump in its custom format (compressed, restored by deploy/restore.sh)
# into BACKUP_DIR as idp-YYYYmmddTHHMMSS.NNNZ.dump (UTC), keeping the newest IDP_BACKUP_KEEP (default 14).
#
#   deploy/backup.sh [BACKUP_DIR [DATABASE_URL]]
#
# BACKUP_DIR defaults to $IDP_BACKUP_DIR, else /var/backups/idp; DATABASE_URL to $IDP_DATABASE_URL (the URL idp
# uses, from /etc/idp/idp.env; idp-backup.service runs this daily). A password in the URL is handed to pg_dump
# through PGPASSWORD, never on its command line, where `ps` would show it.
#
# The dump holds everything idp keeps: users, clients, tokens, the audit log and the signing keys. Those keys are
# encrypted with IDP_SECRET_KEY, which is not in the dump: keep /etc/idp/idp.env backed up too, apart from the
# dumps (a restore without the same IDP_SECRET_KEY cannot sign or verify tokens with the old keys).
#
# A dump is written under a temporary name, checked (pg_restore --list reads it whole), flushed to disk, and only
# then given its final name: a file named idp-*.dump is always complete. Rotation counts only such files.
set -euo pipefail
umask 077

die() { echo "backup.sh: $*" >&2; exit 1; }
# LIBPQ_URL: the URL as libpq reads it (SQLAlchemy's postgresql+psycopg2:// scheme dropped), its password
# moved to PGPASSWORD. Not called in $(...): the exported PGPASSWORD must reach pg_dump.
libpq_url() {
  local url="${1/#postgresql+psycopg2:/postgresql:}" rest authority userinfo password
  case "$url" in
    postgresql://*|postgres://*) ;;
    *) die "not a PostgreSQL URL: ${url%%:*}://..." ;;
  esac
  rest="${url#*://}"
  authority="${rest%%/*}"
  if [[ "$authority" == *@* ]]; then
    userinfo="${authority%@*}"
    if [[ "$userinfo" == *:* ]]; then
      password="${userinfo#*:}"
      PGPASSWORD="$(printf '%b' "${password//%/\\x}")"  # percent-decoded, as libpq would read it in the URL
      export PGPASSWORD
      url="${url%%://*}://${userinfo%%:*}@${authority##*@}${rest:${#authority}}"
    fi
  fi
  LIBPQ_URL="$url"
}

dir="${1:-${IDP_BACKUP_DIR:-/var/backups/idp}}"
url="${2:-${IDP_DATABASE_URL:-}}"
keep="${IDP_BACKUP_KEEP:-14}"
[ -n "$url" ] || die "no database: pass DATABASE_URL or set IDP_DATABASE_URL"
[[ "$keep" =~ ^[1-9][0-9]*$ ]] || die "IDP_BACKUP_KEEP must be a positive number, not '$keep'"
[ -d "$dir" ] || die "$dir is not a folder"

libpq_url "$url"
url="$LIBPQ_URL"

stamp="$(date -u +%Y%m%dT%H%M%S.%3NZ)"
final="$dir/idp-$stamp.dump"
tmp="$dir/.idp-$stamp.dump.partial"
trap 'rm -f -- "$tmp"' EXIT

pg_dump --format=custom --no-password --dbname="$url" --file="$tmp"
pg_restore --list -- "$tmp" >/dev/null || die "the dump $tmp cannot be read back"
sync -- "$tmp"
# ln, unlike mv, refuses to replace an existing file: two runs in the same millisecond cannot overwrite each other.
ln -- "$tmp" "$final" || die "$final exists already"
rm -f -- "$tmp"
sync -- "$dir"
echo "$final"

# Rotation: the newest $keep dumps stay (their names sort by time).
mapfile -t dumps < <(find "$dir" -maxdepth 1 -type f -name 'idp-*.dump' -printf '%f\n' | sort -r)
for old in "${dumps[@]:$keep}"; do
  rm -f -- "$dir/$old"
done
