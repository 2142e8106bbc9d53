#!/usr/bin/env bash
# deploy/launch.sh HOSTFILE [-- COMMAND...]
#
# Starts a starattn cluster across hosts: a worker on every host of HOSTFILE, then the head on
# the first one. Without COMMAND it runs until interrupted; with COMMAND it runs it once the
# processes are started (STARATTN_HEAD=ADDRESS:PORT in its environment), then stops the cluster
# and exits with COMMAND's status. Every process it started is stopped on exit, error or signal.
#
# HOSTFILE: one host per line, "NAME [ADDRESS]" ('#' starts a comment). NAME is what ssh (or the
# remote-exec override) reaches; ADDRESS is where the others reach it (default NAME). A host may
# appear more than once (several workers on one host, e.g. three "localhost" lines).
#
# Environment:
#   STARATTN_MODEL        model directory, the same path on every host (required)
#   STARATTN_BIN          starattn binary on the hosts (default: starattn from PATH)
#   STARATTN_PORT         the head's port (default 7700)
#   STARATTN_HEAD_ARGS    extra arguments for `starattn serve`
#   STARATTN_WORKER_ARGS  extra arguments for `starattn worker` (e.g. "--gpus 0,1")
#   STARATTN_LOG_DIR      where each process's output goes (default ./starattn-logs)
#   STARATTN_TLS_DIR      certificates made by deploy/make-certs.sh for the hosts' NAMEs (and
#                         "client"): the control plane runs over mutual TLS. Each process gets
#                         --tls-cert DIR/NAME.crt --tls-key DIR/NAME.key --tls-ca DIR/ca.crt (the
#                         same DIR path on every host; a host needs only its own files and
#                         ca.crt, never ca.key). COMMAND gets STARATTN_TLS_ARGS, the arguments of
#                         DIR/$STARATTN_TLS_CLIENT (default client), for `starattn run --head`.
#   STARATTN_INSECURE=1   no TLS: the head accepts any process that reaches its port as a worker
#                         or client (a trusted, isolated network only). One of the two is required.
#   STARATTN_REMOTE_EXEC  run commands through this instead of ssh; "{host}" is replaced by the
#                         host's NAME, e.g. "ip netns exec {host}" (the command is passed to
#                         `bash -c`). Hosts named localhost run locally without ssh.
#   UCX_*                 passed on to every process (e.g. UCX_TLS=tcp). Set UCX_NET_DEVICES to
#                         the cluster's interface (e.g. UCX_NET_DEVICES=eth0 or mlx5_0:1): UCX's
#                         TCP transport otherwise takes whichever interface it ranks first, and a
#                         docker or VPN bridge that goes away silences the data plane.
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "--help" ]; then
  sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
hostfile=$1
shift
if [ $# -gt 0 ]; then
  [ "$1" = "--" ] || { echo "launch.sh: expected -- before the command, got '$1'" >&2; exit 2; }
  shift
fi
: "${STARATTN_MODEL:?launch.sh: set STARATTN_MODEL to the model directory}"
bin=${STARATTN_BIN:-starattn}
port=${STARATTN_PORT:-7700}
logs=${STARATTN_LOG_DIR:-./starattn-logs}
mkdir -p "$logs"

names=()
addrs=()
while read -r name addr _rest; do
  [ -z "${name:-}" ] && continue
  case $name in \#*) continue ;; esac
  names+=("$name")
  addrs+=("${addr:-$name}")
done < "$hostfile"
[ ${#names[@]} -gt 0 ] || { echo "launch.sh: no hosts in $hostfile" >&2; exit 2; }
head_addr=${addrs[0]}

# The control plane's security: TLS with per-host certificates, or an explicit insecure mode.
tls_dir=${STARATTN_TLS_DIR:-}
client_name=${STARATTN_TLS_CLIENT:-client}
if [ -n "$tls_dir" ]; then
  [ "${STARATTN_INSECURE:-0}" = 1 ] &&
    { echo "launch.sh: STARATTN_TLS_DIR and STARATTN_INSECURE=1 contradict each other" >&2; exit 2; }
  [ -f "$tls_dir/ca.crt" ] ||
    { echo "launch.sh: no $tls_dir/ca.crt; make the certificates with deploy/make-certs.sh $tls_dir ${names[*]} $client_name" >&2; exit 2; }
elif [ "${STARATTN_INSECURE:-0}" != 1 ]; then
  echo "launch.sh: set STARATTN_TLS_DIR to certificates from deploy/make-certs.sh (mutual TLS between" >&2
  echo "  the processes), or STARATTN_INSECURE=1 to run the control plane without authentication" >&2
  exit 2
fi
# security NAME: the arguments that give the process on host NAME its certificate (or --insecure).
security() {
  if [ -n "$tls_dir" ]; then
    printf -- '--tls-cert %q --tls-key %q --tls-ca %q' "$tls_dir/$1.crt" "$tls_dir/$1.key" "$tls_dir/ca.crt"
  else
    printf -- '--insecure'
  fi
}

# UCX settings travel with the command (ssh does not forward the environment).
env_prefix=""
while IFS='=' read -r k v; do
  case $k in UCX_*) env_prefix+="$k=$(printf '%q' "$v") " ;; esac
done < <(env)

# remote HOST COMMAND: runs COMMAND (a shell string) on HOST.
remote() {
  local host=$1 cmd=$2
  if [ -n "${STARATTN_REMOTE_EXEC:-}" ]; then
    local prefix=${STARATTN_REMOTE_EXEC//\{host\}/$host}
    # shellcheck disable=SC2086  # the prefix is a command line on purpose
    $prefix bash -c "$cmd"
  elif [ "$host" = localhost ] || [ "$host" = 127.0.0.1 ]; then
    bash -c "$cmd"
  else
    ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new "$host" "$cmd"
  fi
}

launchers=()   # local pids of the remote-exec processes
hosts_of=()    # host of each
logs_of=()     # log of each; its first line is the remote pid
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Stop the head first (workers then exit on their own), then every worker.
  local i
  for ((i = ${#launchers[@]} - 1; i >= 0; i--)); do
    local rpid
    rpid=$(head -n1 "${logs_of[$i]}" 2>/dev/null || true)
    if [[ $rpid =~ ^[0-9]+$ ]]; then
      remote "${hosts_of[$i]}" "kill $rpid 2>/dev/null || true" || true
    fi
  done
  for i in "${!launchers[@]}"; do
    local waited=0
    while kill -0 "${launchers[$i]}" 2>/dev/null && [ $waited -lt 50 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill "${launchers[$i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start HOST LOG COMMAND
  local host=$1 log=$2 cmd=$3
  remote "$host" "echo \$\$; ${env_prefix}exec $cmd" > "$log" 2>&1 &
  launchers+=($!)
  hosts_of+=("$host")
  logs_of+=("$log")
}

for i in "${!names[@]}"; do
  start "${names[$i]}" "$logs/worker-$i-${names[$i]}.log" \
    "$bin worker --head $head_addr:$port --model $STARATTN_MODEL --name ${names[$i]}-$i $(security "${names[$i]}") ${STARATTN_WORKER_ARGS:-}"
done
start "${names[0]}" "$logs/head-${names[0]}.log" \
  "$bin serve --listen 0.0.0.0:$port --model $STARATTN_MODEL $(security "${names[0]}") ${STARATTN_HEAD_ARGS:-}"
mode="no TLS (STARATTN_INSECURE=1)"
[ -n "$tls_dir" ] && mode="mutual TLS, certificates in $tls_dir"
echo "launch.sh: head on ${names[0]} ($head_addr:$port), ${#names[@]} workers, $mode; logs in $logs" >&2

if [ $# -gt 0 ]; then
  client_args=""
  [ -n "$tls_dir" ] && client_args=$(security "$client_name")
  STARATTN_HEAD=$head_addr:$port STARATTN_TLS_ARGS=$client_args "$@"
  exit $?
fi
wait "${launchers[-1]}"
