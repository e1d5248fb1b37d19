#!/usr/bin/env bash
# Private MariaDB/MySQL server for tests and demos.
#
# Usage: scripts/db.sh [ensure|start|stop|restart|url|shell|status|ca]
#
#   ensure (default)  print $DATABASE_URL if it is set and names another
#                     server; otherwise make sure the private server under
#                     <target>/mariadb runs and print its URL. Only the URL
#                     goes to stdout, so callers can do url=$(scripts/db.sh).
#   start             make sure the private server runs (whatever
#                     DATABASE_URL says) and print its URL.
#   stop              shut the private server down and wait until it is gone.
#   restart           stop, then start (same port, same data).
#   url               same as ensure.
#   shell             open the mariadb client on the private server.
#   status            say whether the private server is running (exit 1 if not).
#   ca                print the path of the CA certificate that signed the
#                     private server's TLS certificate (creating both if
#                     missing), for `ssl-ca=...` in a URL.
#
# TLS: the private server always offers TLS, with a certificate for
# 127.0.0.1 and localhost signed by a CA of its own (made with openssl
# under <target>/mariadb/tls), so ?ssl-mode=VERIFY_IDENTITY&ssl-ca=$(scripts/db.sh ca)
# works. A server started by an older db.sh, without TLS, is left running
# (others may be using it) with a warning; `scripts/db.sh restart` turns TLS on.
#
# Environment:
#   DATABASE_URL      use this server instead of the private one (ensure/url).
#   QUEUE_DB_PORT     TCP port of the private server (default 3366); set it
#                     when 3366 is taken by another program.
#   CARGO_TARGET_DIR  where the private server lives (default <repo>/target).
#                     A private server already running on the port from
#                     another target directory (or checkout) is recognised
#                     and used by ensure, not taken for a foreign process.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in
    /*) ;;
    *) TARGET="$PWD/$TARGET" ;; # relative to the caller's cwd, as cargo does
esac
DIR="$TARGET/mariadb"
DATA="$DIR/data"
SOCK="$DIR/sock"
PIDFILE="$DIR/mariadbd.pid"
LOG="$DIR/mariadbd.log"
URLFILE="$DIR/url"
LOCK="$DIR/.lock"
TLS_DIR="$DIR/tls"
CA_PEM="$TLS_DIR/ca.pem"
SERVER_PEM="$TLS_DIR/server.pem"
SERVER_KEY="$TLS_DIR/server-key.pem"
PORT="${QUEUE_DB_PORT:-3366}"
USER_NAME=queue
USER_PASS=queue
DB_NAME=queue
URL="mysql://$USER_NAME:$USER_PASS@127.0.0.1:$PORT/$DB_NAME"

say() { echo "db.sh: $*" >&2; }
die() { echo "db.sh: error: $*" >&2; exit 1; }

# Locate a program on PATH or in the usual sbin directories.
find_prog() {
    local name p
    for name in "$@"; do
        if p="$(command -v "$name" 2>/dev/null)"; then
            echo "$p"
            return 0
        fi
        for p in /usr/sbin/"$name" /usr/local/sbin/"$name" /usr/bin/"$name" /usr/local/bin/"$name"; do
            if [ -x "$p" ]; then
                echo "$p"
                return 0
            fi
        done
    done
    return 1
}

server_bin() { find_prog mariadbd mysqld; }
client_bin() { find_prog mariadb mysql; }
admin_bin() { find_prog mariadb-admin mysqladmin; }
install_db_bin() { find_prog mariadb-install-db mysql_install_db; }

install_server() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "MariaDB is not installed; installing mariadb-server and mariadb-client with apt-get (log: $DIR/apt.log)..."
        # Keep the package from starting a system-wide service of its own
        # (we run a private one): a temporary policy-rc.d that denies starts.
        local policy=/usr/sbin/policy-rc.d
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && MADE_POLICY="$policy"
            trap '[ -z "${MADE_POLICY:-}" ] || rm -f "$MADE_POLICY"' EXIT
        fi
        # A failing 'update' (one unreachable mirror) need not stop the install.
        if ! {
            apt-get update -qq || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                -o Dpkg::Use-Pty=0 mariadb-server mariadb-client
        } </dev/null >"$DIR/apt.log" 2>&1; then
            say "apt-get failed; last lines of $DIR/apt.log:"
            tail -n 20 "$DIR/apt.log" >&2 || true
        fi
        if [ -n "${MADE_POLICY:-}" ]; then
            rm -f "$MADE_POLICY"
            MADE_POLICY=
        fi
    fi
}

need_server_bins() {
    if ! server_bin >/dev/null || ! client_bin >/dev/null || ! install_db_bin >/dev/null; then
        install_server
    fi
    if ! server_bin >/dev/null || ! client_bin >/dev/null || ! install_db_bin >/dev/null; then
        die "no MariaDB/MySQL server found (looked for mariadbd/mysqld, mariadb/mysql, mariadb-install-db on PATH and in /usr/sbin).
Install one, e.g. as root on Debian/Ubuntu:
    apt-get update && apt-get install -y mariadb-server mariadb-client
or point the tests at an existing server:
    export DATABASE_URL=mysql://USER:PASSWORD@HOST:PORT/DB"
    fi
}

pid_alive() {
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Run SQL as root over the private server's socket.
root_sql() {
    "$(client_bin)" --no-defaults --protocol=socket --socket="$SOCK" -uroot \
        --connect-timeout=2 -N -B -e "$1"
}

answering() {
    [ -S "$SOCK" ] && root_sql "SELECT 1" >/dev/null 2>&1
}

init_datadir() {
    if [ -d "$DATA/mysql" ]; then
        return 0
    fi
    say "initialising $DATA ..."
    rm -rf "$DATA"
    mkdir -p "$DATA"
    if ! "$(install_db_bin)" --no-defaults --datadir="$DATA" --user="$(id -un)" \
        --auth-root-authentication-method=normal --skip-test-db \
        >"$DIR/install-db.log" 2>&1 </dev/null; then
        tail -n 30 "$DIR/install-db.log" >&2 || true
        rm -rf "$DATA"
        die "mariadb-install-db failed (log: $DIR/install-db.log)"
    fi
}

# A CA and a server certificate it signs, for 127.0.0.1 and localhost (the
# names VERIFY_IDENTITY checks), valid for ten years. Kept once made, so
# that CA paths handed out earlier stay valid.
make_certs() {
    if [ -s "$CA_PEM" ] && [ -s "$SERVER_PEM" ] && [ -s "$SERVER_KEY" ]; then
        return 0
    fi
    if ! command -v openssl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "openssl is not installed; installing it with apt-get (log: $DIR/apt.log)..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 openssl \
            </dev/null >>"$DIR/apt.log" 2>&1 || true
    fi
    command -v openssl >/dev/null 2>&1 ||
        die "openssl is needed to make the private server's TLS certificate (Debian/Ubuntu: apt-get install openssl)"
    say "making a CA and a server certificate under $TLS_DIR ..."
    local tmp
    tmp="$(mktemp -d "$DIR/tls.XXXXXX")"
    if ! {
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
            -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" \
            -subj "/CN=queue-runtime test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -newkey rsa:2048 -nodes \
                -keyout "$tmp/server-key.pem" -out "$tmp/server.csr" \
                -subj "/CN=localhost" &&
            printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
                "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature,keyEncipherment" \
                "extendedKeyUsage=serverAuth" >"$tmp/server.ext" &&
            openssl x509 -req -days 3650 -in "$tmp/server.csr" \
                -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" -set_serial "0x$(openssl rand -hex 8)" \
                -extfile "$tmp/server.ext" -out "$tmp/server.pem"
    } >"$tmp/openssl.log" 2>&1; then
        cat "$tmp/openssl.log" >&2
        rm -rf "$tmp"
        die "openssl could not make the TLS certificates"
    fi
    rm -f "$tmp/server.csr" "$tmp/server.ext" "$tmp/openssl.log"
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
}

# Whether the private server offers TLS.
has_tls() {
    [ "$(root_sql "SELECT @@have_ssl" 2>/dev/null || true)" = "YES" ]
}

warn_no_tls() {
    has_tls && return 0
    say "warning: the private server on port $PORT runs without TLS (an older db.sh started it);"
    say "         the TLS tests will fail against it. Run 'scripts/db.sh restart' to turn TLS on."
}

# The socket of a private server of this script that listens on $PORT but
# lives under another directory (started with another CARGO_TARGET_DIR, or
# from another checkout): it takes the same user and password. Fails if the
# port is someone else's.
other_private_server() {
    local client sock
    client="$(client_bin 2>/dev/null)" || return 1
    sock="$("$client" --no-defaults --protocol=tcp -h127.0.0.1 -P"$PORT" \
        -u"$USER_NAME" -p"$USER_PASS" --connect-timeout=2 -N -B \
        -e "SELECT @@socket" 2>/dev/null)" || return 1
    case "$sock" in */mariadb/sock) ;; *) return 1 ;; esac
    [ "$sock" != "$SOCK" ] && [ -S "$sock" ] || return 1
    echo "$sock"
}

port_in_use() {
    # True when something (not our server) already listens on the port.
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start_server() {
    local bin pid
    bin="$(server_bin)"
    make_certs
    rm -f "$SOCK" "$SOCK.lock" "$PIDFILE"
    say "starting $bin on 127.0.0.1:$PORT (data: $DATA, log: $LOG) ..."
    # setsid + nohup: the server outlives this script, its shell and any
    # test harness that called us, and ignores their hang-ups.
    setsid nohup "$bin" --no-defaults \
        --datadir="$DATA" \
        --user="$(id -un)" \
        --port="$PORT" \
        --bind-address=127.0.0.1 \
        --socket="$SOCK" \
        --pid-file="$PIDFILE" \
        --log-error="$LOG" \
        --innodb-buffer-pool-size=512M \
        --innodb-flush-log-at-trx-commit=1 \
        --max-connections=1000 \
        --skip-name-resolve \
        --ssl-ca="$CA_PEM" \
        --ssl-cert="$SERVER_PEM" \
        --ssl-key="$SERVER_KEY" \
        --innodb-lock-wait-timeout=20 \
        --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_unicode_ci \
        </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
    # Wait for it to answer (up to ~60 s).
    for _ in $(seq 1 300); do
        if answering; then
            # The server writes its own pid file; keep ours in case it did not.
            [ -s "$PIDFILE" ] || echo "$pid" >"$PIDFILE"
            say "server is up (pid $(cat "$PIDFILE"))"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null && ! pid_alive; then
            say "the server exited during start-up; last lines of $LOG:"
            tail -n 40 "$LOG" >&2 || true
            die "could not start the MariaDB server"
        fi
        sleep 0.2
    done
    say "the server did not answer within 60 s; last lines of $LOG:"
    tail -n 40 "$LOG" >&2 || true
    kill "$pid" 2>/dev/null || true
    die "could not start the MariaDB server"
}

setup_user() {
    root_sql "
CREATE USER IF NOT EXISTS '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$USER_PASS';
CREATE USER IF NOT EXISTS '$USER_NAME'@'localhost' IDENTIFIED BY '$USER_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$USER_NAME'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$USER_NAME'@'localhost' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
FLUSH PRIVILEGES;" >/dev/null || die "could not create user '$USER_NAME' (log: $LOG)"
    echo "$URL" >"$URLFILE"
}

# Body of ensure; runs under the lock.
ensure_locked() {
    if answering; then
        # Our socket answers: our server runs (even if its pid file was lost).
        if [ "$(root_sql "SELECT @@port" 2>/dev/null || true)" = "$PORT" ]; then
            [ "$(cat "$URLFILE" 2>/dev/null || true)" = "$URL" ] || setup_user
            warn_no_tls
            return 0
        fi
        say "the private server listens on another port than $PORT; restarting it"
        stop_locked
    fi
    if pid_alive; then
        # Running but not answering (still starting, or wedged): give it a moment.
        for _ in $(seq 1 50); do
            answering && { setup_user; warn_no_tls; return 0; }
            pid_alive || break
            sleep 0.2
        done
        if pid_alive; then
            say "server pid $(cat "$PIDFILE") is alive but does not answer; killing it"
            stop_locked
        fi
    fi
    if port_in_use; then
        local other
        if other="$(other_private_server)"; then
            # Ours, from another target directory: use it as it is (it is
            # not this directory's to set up, stop or restart).
            say "using the private server under ${other%/sock} (started with another CARGO_TARGET_DIR or checkout) on port $PORT"
            return 0
        fi
        die "port $PORT on 127.0.0.1 is taken by another process; set QUEUE_DB_PORT to a free port or DATABASE_URL to use that server"
    fi
    need_server_bins
    init_datadir
    start_server
    setup_user
    has_tls || die "the server started without TLS (log: $LOG)"
}

stop_locked() {
    local pid admin
    if ! pid_alive && answering; then
        say "server answers but its pid file is missing; shutting it down over the socket"
        "$(admin_bin)" --no-defaults --protocol=socket --socket="$SOCK" -uroot shutdown >/dev/null 2>&1 || true
        for _ in $(seq 1 300); do
            [ -S "$SOCK" ] || break
            sleep 0.2
        done
    fi
    if ! pid_alive; then
        rm -f "$PIDFILE"
        say "server is not running"
        return 0
    fi
    pid="$(cat "$PIDFILE")"
    say "stopping server (pid $pid) ..."
    if admin="$(admin_bin)" && [ -S "$SOCK" ]; then
        "$admin" --no-defaults --protocol=socket --socket="$SOCK" -uroot \
            --connect-timeout=5 shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    else
        kill "$pid" 2>/dev/null || true
    fi
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "server did not stop within 60 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
    say "server stopped"
}

with_lock() {
    mkdir -p "$DIR"
    exec 9>"$LOCK"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    "$@"
    exec 9>&-
}

# A DATABASE_URL that names another server than the private one.
foreign_url() {
    [ -n "${DATABASE_URL:-}" ] && [ "$DATABASE_URL" != "$URL" ]
}

cmd_ensure() {
    if foreign_url; then
        echo "$DATABASE_URL"
        return 0
    fi
    cmd_start
}

# Always about the private server, whatever DATABASE_URL says.
cmd_start() {
    with_lock ensure_locked
    echo "$URL"
}

cmd_stop() { with_lock stop_locked; }

cmd_restart() {
    with_lock stop_locked
    cmd_start
}

cmd_shell() {
    if foreign_url; then
        die "DATABASE_URL names another server ($DATABASE_URL); connect to it yourself"
    fi
    cmd_start >/dev/null
    exec "$(client_bin)" --no-defaults --protocol=socket --socket="$SOCK" -uroot "$DB_NAME" "$@"
}

cmd_status() {
    local other
    if pid_alive && answering; then
        echo "running (pid $(cat "$PIDFILE")): $URL"
    elif other="$(other_private_server)"; then
        # Not this directory's server: 'stop' here would not stop it.
        echo "not running under $DIR; port $PORT is the private server under ${other%/sock} (ensure uses it)"
        return 1
    else
        echo "not running: $URL"
        return 1
    fi
}

cmd_ca() {
    local other
    # The CA of the server that ensure hands out: another directory's
    # private server when it is the one on the port.
    if ! answering && other="$(other_private_server)" && [ -s "${other%/sock}/tls/ca.pem" ]; then
        echo "${other%/sock}/tls/ca.pem"
        return 0
    fi
    with_lock make_certs
    echo "$CA_PEM"
}

cmd="${1:-ensure}"
[ $# -gt 0 ] && shift
case "$cmd" in
    ensure | url) cmd_ensure ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_restart ;;
    shell) cmd_shell "$@" ;;
    status) cmd_status ;;
    ca) cmd_ca ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command '$cmd' (use ensure, start, stop, restart, url, shell, status or ca)" ;;
esac
