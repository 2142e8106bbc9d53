#!/usr/bin/env bash
# deploy/make-certs.sh DIR NAME...
#
# Makes the certificates of a starattn cluster's control plane (mutual TLS between the head,
# the workers and `starattn run --head` clients) with the openssl command-line tool:
#   DIR/ca.crt, DIR/ca.key      the cluster CA (made once; keep ca.key off the cluster's hosts)
#   DIR/NAME.crt, DIR/NAME.key  a certificate and key for each NAME, signed by the CA
# NAME is a host name (as deploy/launch.sh's hostfile and Slurm name hosts) or any identity,
# e.g. "client" for the processes that submit requests. Every certificate is good for both ends
# of a connection (serverAuth and clientAuth); its subjectAltName is NAME (DNS, or IP when NAME
# is an address). Any certificate the CA signed is let in, so use a CA for this cluster alone.
#
# Idempotent: an existing CA is kept, and so is every certificate that still verifies against it
# and matches its key; missing ones are made, stale ones are made again. Keys are mode 600, DIR
# is made mode 700. Then on each host: starattn ... --tls-cert DIR/NAME.crt --tls-key DIR/NAME.key
# --tls-ca DIR/ca.crt (deploy/launch.sh, slurm.sbatch and the systemd units do it given DIR).
#
# Environment: STARATTN_CERT_DAYS (default 825) and STARATTN_CA_DAYS (default 3650) validity.
set -euo pipefail

if [ $# -lt 2 ] || [ "$1" = "--help" ]; then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v openssl >/dev/null || { echo "make-certs.sh: the openssl command is missing (Debian package openssl)" >&2; exit 1; }
dir=$1
shift
days=${STARATTN_CERT_DAYS:-825}
ca_days=${STARATTN_CA_DAYS:-3650}
for name in "$@"; do
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._:-]*$ ]] ||
    { echo "make-certs.sh: '$name' is not a host name or address (letters, digits, . _ : -)" >&2; exit 2; }
  [ "$name" != ca ] || { echo "make-certs.sh: 'ca' is the CA's own file name; pick another name" >&2; exit 2; }
done

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

new_key() {  # new_key FILE: an EC P-256 private key, mode 600
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# ---- the CA ----
if [ -f "$dir/ca.crt" ] && [ -f "$dir/ca.key" ]; then
  echo "make-certs.sh: keeping the CA in $dir/ca.crt" >&2
else
  [ ! -f "$dir/ca.crt" ] && [ ! -f "$dir/ca.key" ] ||
    { echo "make-certs.sh: only one of $dir/ca.crt and $dir/ca.key exists; move it away first" >&2; exit 1; }
  new_key "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$ca_days" \
    -subj "/CN=starattn cluster CA $(date -u +%Y%m%dT%H%M%SZ)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$dir/ca.crt"
  chmod 644 "$dir/ca.crt"
  echo "make-certs.sh: made the CA $dir/ca.crt" >&2
fi
chmod 600 "$dir/ca.key"

# ---- one certificate per name ----
is_current() {  # is_current NAME: its certificate verifies against the CA and matches its key
  local crt=$dir/$1.crt key=$dir/$1.key
  [ -f "$crt" ] && [ -f "$key" ] || return 1
  openssl verify -CAfile "$dir/ca.crt" "$crt" >/dev/null 2>&1 || return 1
  [ "$(openssl x509 -in "$crt" -noout -pubkey 2>/dev/null)" = \
    "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ] || return 1
  openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1
}

for name in "$@"; do
  if is_current "$name"; then
    echo "make-certs.sh: keeping $dir/$name.crt" >&2
    chmod 600 "$dir/$name.key"
    continue
  fi
  [ -f "$dir/$name.key" ] || new_key "$dir/$name.key"
  chmod 600 "$dir/$name.key"
  if [[ $name =~ ^[0-9.]+$ ]] || [[ $name == *:* ]]; then san="IP:$name"; else san="DNS:$name"; fi
  cat > "$tmp/ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
EOF
  openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$tmp/req.csr"
  openssl x509 -req -in "$tmp/req.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -sha256 \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$tmp/ext" \
    -out "$dir/$name.crt" 2>/dev/null
  chmod 644 "$dir/$name.crt"
  openssl verify -CAfile "$dir/ca.crt" "$dir/$name.crt" >/dev/null
  echo "make-certs.sh: made $dir/$name.crt" >&2
done
