#!/bin/sh
# Entrypoint of the redis service in compose.yaml. Redis cannot read environment variables in
# an ACL file, so this script writes one from REDIS_PASSWORD at every start, then hands over to
# the image's own entrypoint (which drops root) to run redis-server with deploy/redis.conf.
#
#   redis-entrypoint.sh [redis-server options...]   # in the container
#   redis-entrypoint.sh --write-acl FILE            # only write the ACL file (tests, debugging)
#
# Users: "default" is off, so a client that does not log in can run no command; "hivemem" is
# the service user of pools, workers, beat and Flower: every key and channel, every command
# but the @dangerous ones (CONFIG, FLUSHALL, KEYS, DEBUG, SHUTDOWN...), except the few a pool
# needs to give each agent a Redis user of its own (ACL SETUSER/DELUSER/GETUSER/WHOAMI, CLIENT
# KILL: see docs/security.md, "Broker-enforced zones").
set -eu

ACL_FILE=${REDIS_ACL_FILE:-/run/redis/users.acl}
AGENT_ADMIN='+acl|setuser +acl|deluser +acl|getuser +acl|whoami +client|kill'
CONF_FILE=${REDIS_CONF_FILE:-/usr/local/etc/redis/redis.conf}

fail() {
    echo "redis-entrypoint: $*" >&2
    exit 78  # EX_CONFIG
}

# write_acl FILE: the ACL file, readable by its owner only, replaced atomically.
write_acl() {
    password=${REDIS_PASSWORD:-}
    [ -n "$password" ] || fail "REDIS_PASSWORD is not set (see docs/deploy.md)"
    case $password in
        *[!A-Za-z0-9._~-]*)
            fail "REDIS_PASSWORD may hold only letters, digits and . _ ~ - (it goes into a URL and an ACL line)" ;;
    esac
    [ "${#password}" -ge 16 ] || fail "REDIS_PASSWORD must be at least 16 characters long"
    mkdir -p "$(dirname "$1")"
    tmp="$1.tmp.$$"
    (
        umask 077
        printf '%s\n' \
            'user default off' \
            "user hivemem on >$password ~* &* +@all -@dangerous $AGENT_ADMIN" >"$tmp"
    )
    mv "$tmp" "$1"
}

if [ "${1:-}" = "--write-acl" ]; then
    [ "$#" -eq 2 ] || fail "usage: redis-entrypoint.sh --write-acl FILE"
    write_acl "$2"
    exit 0
fi

write_acl "$ACL_FILE"
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
    chown redis:redis "$ACL_FILE"  # docker-entrypoint.sh runs redis-server as this user
fi
exec docker-entrypoint.sh redis-server "$CONF_FILE" --aclfile "$ACL_FILE" "$@"
