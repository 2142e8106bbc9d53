#!/usr/bin/env bash
# Separate hosts for real: three network namespaces joined by veth pairs on a bridge, each with
# its own address, one worker per namespace (the head beside the first), all started through
# deploy/launch.sh with its remote-exec override. UCX is held to TCP so the data plane crosses
# the veth links (namespaces share the host's memory, where UCX would otherwise pick shared
# memory). The cluster's answer must equal the one-process run's, token ids and logits.
#
# Nothing is added to the root namespace: the bridge lives in a namespace of its own and the
# client runs beside the head. Other tests run alongside this one (ctest -j), and UCX's TCP
# transport puts their data plane on whichever interface it ranks first, a fresh bridge with an
# address included; deleting that bridge at the end silently cut the connections of clusters
# started meanwhile (their exchanges then timed out).
#
# usage: netns.sh STARATTN_BIN LAUNCH_SH        exit 77 = skipped (namespaces not permitted)
set -euo pipefail
bin=$1
launch=$2
skip() { echo "SKIP: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
tag=sa$$
ip netns add "${tag}probe" 2>/dev/null || skip "cannot create network namespaces here (ip netns add failed)"
ip netns del "${tag}probe"

tmp=$(mktemp -d)
switch=${tag}sw
bridge=br$tag
subnet=10.$((200 + $$ % 50)).$(($$ % 250))
cleanup() {
  for i in 0 1 2; do ip netns del "${tag}n$i" 2>/dev/null || true; done
  ip netns del "$switch" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add "$switch"
ip -n "$switch" link add "$bridge" type bridge || skip "cannot create a bridge"
ip -n "$switch" link set "$bridge" up
for i in 0 1 2; do
  ns=${tag}n$i
  ip netns add "$ns"
  ip -n "$switch" link add "v${tag}$i" type veth peer name "p${tag}$i" netns "$ns" ||
    skip "cannot create veth pairs"
  ip -n "$ns" addr add "$subnet.$((10 + i))/24" dev "p${tag}$i"
  ip -n "$ns" link set "p${tag}$i" up
  ip -n "$ns" link set lo up
  ip -n "$switch" link set "v${tag}$i" master "$bridge"
  ip -n "$switch" link set "v${tag}$i" up
  echo "${ns} $subnet.$((10 + i))" >> "$tmp/hosts"
done
# The namespaces reach each other across the bridge.
command -v ping >/dev/null && for i in 1 2; do
  ip netns exec "${tag}n$i" ping -c1 -W5 "$subnet.10" >/dev/null ||
    { echo "FAIL: namespace ${tag}n$i cannot reach $subnet.10"; exit 1; }
done

"$bin" init-model --preset tiny --seed 9 --out "$tmp/model" 2>/dev/null
ctx=$(seq 1 400 | awk '{printf "%s%d", (NR>1?",":""), ($1*37+11)%256}')
req=(--context-ids "$ctx" --query-ids 3,1,4 --max-tokens 16 --ignore-eos --output ids)

"$bin" run --model "$tmp/model" --workers 3 --threads 2 "${req[@]}" \
  --dump-logits "$tmp/local.bin" > "$tmp/local.out" 2> "$tmp/local.err"

# The control plane over mutual TLS, certificates per namespace as launch.sh names them.
"$(dirname "$launch")/make-certs.sh" "$tmp/certs" "${tag}n0" "${tag}n1" "${tag}n2" client 2>/dev/null
export STARATTN_TLS_DIR="$tmp/certs"
export STARATTN_REMOTE_EXEC="ip netns exec {host}" STARATTN_MODEL="$tmp/model" STARATTN_BIN="$bin"
export STARATTN_LOG_DIR="$tmp/logs" STARATTN_WORKER_ARGS="--cpu-threads 2" STARATTN_PORT=7711
export UCX_TLS=tcp
rc=0
timeout 120 "$launch" "$tmp/hosts" -- \
  ip netns exec "${tag}n0" timeout 90 "$bin" run --head "$subnet.10:7711" --min-workers 3 "${req[@]}" \
  --tls-cert "$tmp/certs/client.crt" --tls-key "$tmp/certs/client.key" --tls-ca "$tmp/certs/ca.crt" \
  --dump-logits "$tmp/remote.bin" > "$tmp/remote.out" 2> "$tmp/remote.err" || rc=$?
if [ $rc -ne 0 ]; then
  echo "FAIL: the cluster run exited with $rc"
  cat "$tmp/remote.err"
  tail -n 20 "$tmp"/logs/*
  exit 1
fi
cat "$tmp/remote.err"
grep -q "mutual TLS" "$tmp/logs/head-${tag}n0.log" ||
  { echo "FAIL: the head did not run with TLS"; cat "$tmp/logs/head-${tag}n0.log"; exit 1; }
grep -q "registered: ${tag}n2-2" "$tmp/logs/head-${tag}n0.log" ||
  { echo "FAIL: the worker in ${tag}n2 did not register"; cat "$tmp/logs/head-${tag}n0.log"; exit 1; }
if ! cmp -s "$tmp/local.out" "$tmp/remote.out"; then
  echo "FAIL: token ids differ: local $(cat "$tmp/local.out") / cluster $(cat "$tmp/remote.out")"
  exit 1
fi
cmp -s "$tmp/local.bin" "$tmp/remote.bin" || { echo "FAIL: logits differ"; exit 1; }
# launch.sh stopped everything it started.
sleep 0.5
if pgrep -f "$tmp/model" >/dev/null; then
  echo "FAIL: processes left running:"; pgrep -fa "$tmp/model"; exit 1
fi
echo "PASS: 3 workers in 3 network namespaces equal the one-process run ($(cat "$tmp/remote.out"))"
