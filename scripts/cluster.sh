#!/usr/bin/env bash
# A private 3-node MariaDB Galera cluster on loopback, for the cluster tests
# and the `cluster` benchmark.
#
# Usage: scripts/cluster.sh [start|stop|kill NODE|restart NODE|status|urls]
#
#   start          make sure all three nodes run and are Synced (the first
#                  node bootstraps a new cluster when no node runs; the
#                  others join it by state transfer) and print the three
#                  URLs, one a line. Idempotent: running nodes are left as
#                  they are. Only the URLs go to stdout.
#   stop           shut every node down (3, 2, then 1, so node 1 is safe
#                  to bootstrap from next time) and wait until they are gone.
#   kill NODE      SIGKILL node NODE (1, 2 or 3), as a crash would.
#   restart NODE   stop node NODE if it runs, start it again (it rejoins by
#                  IST, or SST when IST cannot serve it) and wait until it
#                  is Synced.
#   status         each node: pid, wsrep_cluster_size and
#                  wsrep_local_state_comment (exit 1 if a node is down).
#   urls           print the three URLs (whether or not the nodes run).
#
# The nodes live under <target>/cluster/nodeN (data, socket, pid, log), with
# user queue/queue and database `queue` (like scripts/db.sh), on:
#
#   node   SQL    gcomm (group)   IST    SST (rsync)
#   1      3371   4571            4581   4591
#   2      3372   4572            4582   4592
#   3      3373   4573            4583   4593
#
# State transfers use rsync. As root, the joiner's rsync daemon runs as
# `nobody` and fails ("failed to set permissions on '.'") unless the
# joiner's data directory is owned by nobody:nogroup: this script chowns it
# before every joiner start (mariadbd itself runs as the calling user).
#
# Environment:
#   QUEUE_CLUSTER_PORT  SQL port of node 1 (default 3371); nodes 2 and 3
#                       take the next two. The Galera ports move with it
#                       (gcomm = SQL + 1200, IST + 1210, SST + 1220).
#   CARGO_TARGET_DIR    where the cluster lives (default <repo>/target).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in
    /*) ;;
    *) TARGET="$PWD/$TARGET" ;;
esac
DIR="$TARGET/cluster"
LOCK="$DIR/.lock"
BASE="${QUEUE_CLUSTER_PORT:-3371}"
NODES=(1 2 3)
USER_NAME=queue
USER_PASS=queue
DB_NAME=queue
PROVIDER=/usr/lib/galera/libgalera_smm.so

say() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }

sql_port() { echo $((BASE + $1 - 1)); }
gcomm_port() { echo $((BASE + 1200 + $1 - 1)); }
ist_port() { echo $((BASE + 1210 + $1 - 1)); }
sst_port() { echo $((BASE + 1220 + $1 - 1)); }
node_dir() { echo "$DIR/node$1"; }
data_dir() { echo "$DIR/node$1/data"; }
sock() { echo "$DIR/node$1/sock"; }
pidfile() { echo "$DIR/node$1/mariadbd.pid"; }
logfile() { echo "$DIR/node$1/mariadbd.log"; }
url() { echo "mysql://$USER_NAME:$USER_PASS@127.0.0.1:$(sql_port "$1")/$DB_NAME"; }

find_prog() {
    local name p
    for name in "$@"; do
        if p="$(command -v "$name" 2>/dev/null)"; then
            echo "$p"
            return 0
        fi
        for p in /usr/sbin/"$name" /usr/bin/"$name" /usr/local/sbin/"$name" /usr/local/bin/"$name"; do
            [ -x "$p" ] && { echo "$p"; return 0; }
        done
    done
    return 1
}

server_bin() { find_prog mariadbd mysqld; }
client_bin() { find_prog mariadb mysql; }
admin_bin() { find_prog mariadb-admin mysqladmin; }
install_db_bin() { find_prog mariadb-install-db mysql_install_db; }

# MariaDB (with galera-4) and rsync, installed with apt-get when missing and
# we are root, as scripts/db.sh does.
need_bins() {
    local missing=""
    server_bin >/dev/null && client_bin >/dev/null && install_db_bin >/dev/null || missing="mariadb-server mariadb-client"
    [ -e "$PROVIDER" ] || missing="$missing galera-4"
    command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
    command -v lsof >/dev/null 2>&1 || missing="$missing lsof"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing$missing with apt-get (log: $DIR/apt.log)..."
        local policy=/usr/sbin/policy-rc.d made=""
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
        fi
        {
            apt-get update -qq || true
            # shellcheck disable=SC2086
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 $missing
        } </dev/null >"$DIR/apt.log" 2>&1 || { say "apt-get failed:"; tail -n 20 "$DIR/apt.log" >&2 || true; }
        [ -z "$made" ] || rm -f "$policy"
    fi
    server_bin >/dev/null && [ -e "$PROVIDER" ] && command -v rsync >/dev/null 2>&1 ||
        die "a Galera cluster needs mariadb-server, galera-4 ($PROVIDER) and rsync; as root on Debian/Ubuntu: apt-get install -y mariadb-server galera-4 rsync"
}

pid_of() {
    local p
    p="$(cat "$(pidfile "$1")" 2>/dev/null || true)"
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"
}

root_sql() {
    "$(client_bin)" --no-defaults --protocol=socket --socket="$(sock "$1")" -uroot \
        --connect-timeout=2 -N -B -e "$2"
}

# One wsrep status variable of node $1 (empty if it does not answer).
wsrep() {
    root_sql "$1" "SHOW GLOBAL STATUS LIKE '$2'" 2>/dev/null | cut -f2 || true
}

synced() {
    [ "$(wsrep "$1" wsrep_local_state_comment)" = "Synced" ] &&
        [ "$(wsrep "$1" wsrep_cluster_status)" = "Primary" ]
}

running_nodes() {
    local n
    for n in "${NODES[@]}"; do
        pid_of "$n" >/dev/null && echo "$n"
    done
    return 0
}

init_datadir() {
    local n=$1 data
    data="$(data_dir "$n")"
    [ -d "$data/mysql" ] && return 0
    say "node $n: initialising $data ..."
    rm -rf "$data"
    mkdir -p "$data"
    "$(install_db_bin)" --no-defaults --datadir="$data" --user="$(id -un)" \
        --auth-root-authentication-method=normal --skip-test-db \
        >"$(node_dir "$n")/install-db.log" 2>&1 </dev/null ||
        die "node $n: mariadb-install-db failed (log: $(node_dir "$n")/install-db.log)"
}

# Starts node $1; "bootstrap" as $2 makes it a new cluster's first node.
start_node() {
    local n=$1 mode=${2:-join} bin pid data extra=()
    bin="$(server_bin)"
    data="$(data_dir "$n")"
    mkdir -p "$(node_dir "$n")"
    init_datadir "$n"
    if [ "$mode" = bootstrap ]; then
        extra+=(--wsrep-new-cluster)
        # After a crash grastate.dat says it is not safe: this script only
        # bootstraps when no node of the cluster runs.
        [ -f "$data/grastate.dat" ] && sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$data/grastate.dat"
    elif [ "$(id -u)" = 0 ]; then
        # The rsync daemon of a state transfer runs as nobody (see above).
        chown -R nobody:nogroup "$data"
    fi
    rm -f "$(sock "$n")" "$(sock "$n").lock" "$(pidfile "$n")"
    say "node $n: starting ($mode) on 127.0.0.1:$(sql_port "$n") (log: $(logfile "$n")) ..."
    setsid nohup "$bin" --no-defaults \
        --datadir="$data" \
        --user="$(id -un)" \
        --port="$(sql_port "$n")" \
        --bind-address=127.0.0.1 \
        --socket="$(sock "$n")" \
        --pid-file="$(pidfile "$n")" \
        --log-error="$(logfile "$n")" \
        --innodb-buffer-pool-size=192M \
        --innodb-log-file-size=96M \
        --innodb-flush-log-at-trx-commit=2 \
        --innodb-autoinc-lock-mode=2 \
        --innodb-lock-wait-timeout=20 \
        --binlog-format=ROW \
        --default-storage-engine=InnoDB \
        --max-connections=600 \
        --skip-name-resolve \
        --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_unicode_ci \
        --wsrep-on=ON \
        --wsrep-provider="$PROVIDER" \
        --wsrep-cluster-name=queue-cluster \
        --wsrep-cluster-address="gcomm://127.0.0.1:$(gcomm_port 1),127.0.0.1:$(gcomm_port 2),127.0.0.1:$(gcomm_port 3)" \
        --wsrep-node-name="node$n" \
        --wsrep-node-address="127.0.0.1:$(gcomm_port "$n")" \
        --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$(gcomm_port "$n");ist.recv_addr=127.0.0.1:$(ist_port "$n");gcache.size=256M;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.install_timeout=PT6S" \
        --wsrep-sst-method=rsync \
        --wsrep-sst-receive-address="127.0.0.1:$(sst_port "$n")" \
        --wsrep-slave-threads=2 \
        "${extra[@]}" \
        </dev/null >>"$(logfile "$n")" 2>&1 9>&- &
    pid=$!
    # Up to ~3 minutes: a state transfer of a big data directory takes a while.
    for _ in $(seq 1 900); do
        if synced "$n"; then
            say "node $n: Synced (pid $(pid_of "$n" || echo "$pid"), cluster size $(wsrep "$n" wsrep_cluster_size))"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null && ! pid_of "$n" >/dev/null; then
            say "node $n exited during start-up; last lines of $(logfile "$n"):"
            tail -n 40 "$(logfile "$n")" >&2 || true
            die "could not start node $n"
        fi
        sleep 0.2
    done
    tail -n 40 "$(logfile "$n")" >&2 || true
    die "node $n did not reach Synced within 3 minutes"
}

setup_user() {
    root_sql "$1" "
CREATE USER IF NOT EXISTS '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$USER_PASS';
CREATE USER IF NOT EXISTS '$USER_NAME'@'localhost' IDENTIFIED BY '$USER_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$USER_NAME'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$USER_NAME'@'localhost' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;" >/dev/null || die "could not create user '$USER_NAME' on node $1"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_node() {
    local n=$1 pid
    pid="$(pid_of "$n")" || { say "node $n: not running"; return 0; }
    say "node $n: stopping (pid $pid) ..."
    "$(admin_bin)" --no-defaults --protocol=socket --socket="$(sock "$n")" -uroot \
        --connect-timeout=5 shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "node $n did not stop within 60 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$(pidfile "$n")"
}

start_locked() {
    local n up
    need_bins
    up="$(running_nodes)"
    for n in "${NODES[@]}"; do
        if pid_of "$n" >/dev/null; then
            continue
        fi
        port_taken "$(sql_port "$n")" &&
            die "port $(sql_port "$n") is taken by another process; set QUEUE_CLUSTER_PORT to another base port"
        if [ -z "$up" ]; then
            start_node "$n" bootstrap
            setup_user "$n"
        else
            start_node "$n" join
        fi
        up="$up $n"
    done
    # Running nodes may still be joining.
    for n in "${NODES[@]}"; do
        for _ in $(seq 1 900); do
            synced "$n" && break
            sleep 0.2
        done
        synced "$n" || die "node $n runs but is not Synced (log: $(logfile "$n"))"
    done
    setup_user 1
}

stop_all() {
    local n
    for n in 3 2 1; do stop_node "$n"; done
}

restart_locked() {
    local n=$1 others
    need_bins
    stop_node "$n"
    others="$(running_nodes)"
    if [ -z "$others" ]; then
        start_node "$n" bootstrap
    else
        start_node "$n" join
    fi
}

with_lock() {
    mkdir -p "$DIR"
    exec 9>"$LOCK"
    command -v flock >/dev/null 2>&1 && flock 9
    "$@"
    exec 9>&-
}

print_urls() {
    local n
    for n in "${NODES[@]}"; do url "$n"; done
}

check_node_arg() {
    case "${1:-}" in
        1 | 2 | 3) ;;
        *) die "give a node: 1, 2 or 3" ;;
    esac
}

cmd_status() {
    local n pid rc=0
    for n in "${NODES[@]}"; do
        if pid="$(pid_of "$n")"; then
            echo "node $n: running (pid $pid) $(url "$n") wsrep_cluster_size=$(wsrep "$n" wsrep_cluster_size) wsrep_local_state_comment=$(wsrep "$n" wsrep_local_state_comment)"
        else
            echo "node $n: not running $(url "$n")"
            rc=1
        fi
    done
    return $rc
}

cmd="${1:-start}"
[ $# -gt 0 ] && shift
case "$cmd" in
    start)
        with_lock start_locked
        print_urls
        ;;
    stop) with_lock stop_all ;;
    kill)
        check_node_arg "${1:-}"
        if pid="$(pid_of "$1")"; then
            say "node $1: SIGKILL (pid $pid)"
            kill -9 "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        else
            say "node $1: not running"
        fi
        ;;
    restart)
        check_node_arg "${1:-}"
        with_lock restart_locked "$1"
        ;;
    status) cmd_status ;;
    urls) print_urls ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (use start, stop, kill NODE, restart NODE, status or urls)" ;;
esac
