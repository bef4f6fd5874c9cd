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
# shellcheck source=deploy/libpq_url.sh
. "$(dirname "$(readlink -f "$0")")/libpq_url.sh"

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
