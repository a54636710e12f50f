#!/usr/bin/env bash
# The README's first command: installs what is missing, builds grelay and runs it on a
# working demo (config/examples/demo.toml): a demo upstream on :8000, grelay on :8080,
# a mirror sink on :9001, a tap in var/tap/web, metrics on :9100. Ctrl-C stops it all.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

"$here/setup.sh" --build --target grelay build demo
bin="$here/build/release/proxy/grelay"

for port in 8000 8080 9001 9100; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is already in use; stop what uses it (ss -ltnp 'sport = :$port')" >&2
    exit 1
  fi
done

pids=()
waitPort() {  # waitPort PORT: until something accepts on 127.0.0.1:PORT (5 s at most)
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: nothing is listening on 127.0.0.1:$1" >&2
  return 1
}
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping"
  sleep 0.3  # Ctrl-C reached the whole process group: let grelay drain on its own first
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

mkdir -p var
python3 -m http.server 8000 --bind 127.0.0.1 --directory config/examples/demo >var/demo-upstream.log 2>&1 &
pids+=($!)
python3 config/examples/demo/mirror_sink.py 9001 &
pids+=($!)
waitPort 8000
waitPort 9001
"$bin" -c config/examples/demo.toml &
pids+=($!)
waitPort 8080

cat <<TXT

grelay is running (relay path: $("$bin" --features | sed -n 's/^relay path chosen by auto: //p')).
  through grelay:   curl http://127.0.0.1:8080/
  metrics:          curl http://127.0.0.1:9100/metrics
  mirror sink:      prints each mirrored session below
  tap:              var/tap/web   (export: $bin tap export --pcap demo.pcap var/tap/web)
  access log:       var/access.log (one JSON line per session, within ~2 s)
Press Ctrl-C to stop everything.

TXT
curl -sS http://127.0.0.1:8080/ | head -3
wait "${pids[2]}"
