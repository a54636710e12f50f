#!/bin/bash
# grelay-healthcheck: the image's HEALTHCHECK. Healthy when grelay's admin endpoint answers
# GET /healthz with 200: the process is up and none of its loops has stalled (a draining
# grelay is still healthy; GET /ready tells whether it takes new clients). Uses only bash
# (/dev/tcp): the runtime image has no curl.
#
#   GRELAY_HEALTH_ADDR     admin address to probe (default 127.0.0.1:9100, [admin] listen)
#   GRELAY_HEALTH_PATH     path to ask (default /healthz; /ready for readiness)
#   GRELAY_HEALTH_TIMEOUT  seconds to wait for the status line (default 2)
# Exit 0 healthy, 1 not (the reason on stderr, which `docker inspect` shows).
set -u
addr=${GRELAY_HEALTH_ADDR:-127.0.0.1:9100}
timeout=${GRELAY_HEALTH_TIMEOUT:-2}
path=${GRELAY_HEALTH_PATH:-/healthz}
host=${addr%:*}
port=${addr##*:}

if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
  echo "grelay-healthcheck: cannot connect to $addr" >&2
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3
if ! IFS= read -r -t "$timeout" status <&3; then
  echo "grelay-healthcheck: no answer from $addr within ${timeout}s" >&2
  exit 1
fi
status=${status%$'\r'}
# Read the rest so the server is not left writing into a closed socket.
while IFS= read -r -t "$timeout" _ <&3; do :; done
exec 3<&-
case $status in
  "HTTP/1."[01]" 200"*) exit 0 ;;
esac
echo "grelay-healthcheck: $addr$path answered: $status" >&2
exit 1
