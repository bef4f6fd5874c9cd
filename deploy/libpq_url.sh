# Sourced by backup.sh and restore.sh (after they define die): the database URL as libpq reads it.
# LIBPQ_URL: the URL as libpq reads it (SQLAlchemy's postgresql+psycopg2:// scheme dropped), its password
# moved to PGPASSWORD. Not called in $(...): the exported PGPASSWORD must reach pg_dump or pg_restore.
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
