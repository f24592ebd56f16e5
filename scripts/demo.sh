#!/usr/bin/env bash
# make demo: a hub on loopback, a user, a join token, two edge agents, tsh ls and tsh ssh.
# Everything lives in ./demo-data; `make demo-stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=$ROOT/demo-data
BIN=$ROOT/.venv/bin
export PATH=$BIN:$PATH
export TSH_HOME=$DATA/tsh

stop() {
    for pidfile in "$DATA"/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
        rm -f "$pidfile"
    done
}

if [ "${1:-}" = "stop" ]; then
    stop
    echo "Demo stopped. Remove ./demo-data to start from scratch."
    exit 0
fi

stop
rm -rf "$DATA"
mkdir -p "$DATA"
LOGIN=$(id -un)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Start the hub on loopback (data in ./demo-data/hub)"
hub start --data-dir "$DATA/hub" --listen 127.0.0.1:0 >"$DATA/hub.log" 2>&1 &
echo $! >"$DATA/hub.pid"
for _ in $(seq 100); do [ -s "$DATA/hub/hub.addr" ] && break; sleep 0.1; done
HUB=$(cat "$DATA/hub/hub.addr")
export REMOTELER_HUB_DATA=$DATA/hub
run tctl status

step "Create user alice (role access, login $LOGIN) with a password and a TOTP seed"
PASSWORD=demo-password-$RANDOM$RANDOM
TOTP_SECRET=$("$BIN/python" -c 'import pyotp; print(pyotp.random_base32())')
printf '%s\n' "$PASSWORD" >"$DATA/alice.password"
chmod 600 "$DATA/alice.password"
printf '$ tctl users add alice --roles access --logins %s --password-stdin --totp-secret ...\n' "$LOGIN"
tctl users add alice --roles access --logins "$LOGIN" --password-stdin --totp-secret "$TOTP_SECRET" \
    <"$DATA/alice.password" >/dev/null
echo "User 'alice' created (password in demo-data/alice.password)."

step "Create a join token and start two edge agents with different labels"
run tctl tokens add --type node --ttl 1h --labels site=demo
PIN=$(tctl status --format json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["ca_pin"])')
for spec in "truck-042 env=prod,kind=vehicle" "gateway-7 env=lab,kind=gateway"; do
    set -- $spec
    TOKEN=$(tctl tokens add --type node --ttl 10m --format json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    # The token through the environment: a --token would show in every user's ps.
    REMOTELER_JOIN_TOKEN=$TOKEN edge-agent start --hub "$HUB" --ca-pin "$PIN" --name "$1" \
        --labels "$2" --data-dir "$DATA/agent-$1" >"$DATA/agent-$1.log" 2>&1 &
    echo $! >"$DATA/agent-$1.pid"
    echo "REMOTELER_JOIN_TOKEN=<token> edge-agent start --hub $HUB --ca-pin $PIN --name $1 --labels $2"
done
for _ in $(seq 100); do
    [ "$(tctl nodes ls --format json | "$BIN/python" -c 'import json,sys; print(sum(n["online"] for n in json.load(sys.stdin)))')" = 2 ] && break
    sleep 0.1
done

step "Log in as alice (password and one-time code given on stdin)"
OTP=$("$BIN/python" -c "import pyotp; print(pyotp.TOTP('$TOTP_SECRET').now())")
printf '$ tsh login --proxy %s --user alice --ca-pin %s --otp %s\n' "$HUB" "$PIN" "$OTP"
tsh login --proxy "$HUB" --user alice --ca-pin "$PIN" --otp "$OTP" <"$DATA/alice.password"

step "List the nodes"
run tsh ls

step "Run a command on truck-042 through the hub (end-to-end SSH, the hub only relays)"
run tsh ssh "$LOGIN@truck-042" 'echo "hello from $(hostname) as $(id -un)"; uname -sr'

step "The web console answers on the same port (browsers trust demo-data/hub/web/ca.crt)"
printf '$ curl --cacert %s https://localhost:%s/healthz\n' "$DATA/hub/web/ca.crt" "${HUB##*:}"
"$BIN/python" - "$DATA/hub/web/ca.crt" "${HUB##*:}" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.set_alpn_protocols(["http/1.1"])  # what browsers and curl offer: the hub's web lane
print(urllib.request.urlopen(f"https://localhost:{sys.argv[2]}/healthz", context=ctx).read().decode().strip())
PY

cat <<NEXT

== Try it yourself (the hub and both agents keep running):

  export PATH=$BIN:\$PATH TSH_HOME=$TSH_HOME REMOTELER_HUB_DATA=$DATA/hub
  tsh ls env=lab                       # filter by label
  tsh ssh $LOGIN@gateway-7             # interactive shell (exit to leave)
  tsh ssh $LOGIN@truck-042 'exit 3'; echo \$?   # remote exit code becomes tsh's
  tsh status
  tctl nodes ls
  tctl auth sign --user alice --ttl 1h -o $DATA/alice-id
  tsh -i $DATA/alice-id --proxy $HUB ssh $LOGIN@truck-042 uptime
  tctl audit search --node truck-042   # what was done there, forwarded from the device's outbox
  tsh play SESSION_ID                  # replay a session (ids: tctl audit search --type session.start)

  Web console:   https://localhost:${HUB##*:}/  (user alice, the same password and code; trust
                 $DATA/hub/web/ca.crt in the browser first: docs/web.md)
  Log in again:  tsh login --proxy $HUB --user alice   (password: demo-data/alice.password,
                 code: $BIN/python -c "import pyotp; print(pyotp.TOTP('$TOTP_SECRET').now())")
  Logs:          demo-data/hub.log, demo-data/agent-*.log

== Stop everything:  make demo-stop
NEXT
