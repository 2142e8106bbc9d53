#!/usr/bin/env bash
# deploy/bundle.sh BUILD_DIR OUT_DIR
#
# Makes a relocatable bundle of starattn for hosts that lack our Debian packages (CAF, UCX, protobuf,
# OpenBLAS, libnuma, ...), e.g. a GPU host with only the CUDA toolkit installed:
#
#   OUT_DIR/bin/        starattn, every test executable found under BUILD_DIR/tests (flat), and
#                       ucx_info (to see which UCX transports load on the target: ucx_info -d) and
#                       ucx_perftest (the transports' own latency, host or cuda memory)
#   OUT_DIR/lib/        every non-system shared library they need; RUNPATH '$ORIGIN'
#   OUT_DIR/lib/ucx/    UCX's transport modules (dlopen'ed by libucs, so ldd never lists them):
#                       those of the UCX the programs link, i.e. deploy/build-ucx.sh's build with
#                       cuda_copy/cuda_ipc and the verbs/rdmacm transports, never Debian's
#   OUT_DIR/env.sh      source it: UCX_MODULE_DIR and CUDA's library folder on LD_LIBRARY_PATH
#   OUT_DIR/run-tests.sh  runs every test binary without ctest and prints 'N passed, N failed'
#
# Executables get RUNPATH '$ORIGIN/../lib', so the bundle works wherever it is copied.
#
# Deliberately NOT bundled (the target's own copies must be used):
#   - glibc (libc, libm, libpthread, libdl, librt, ld-linux, ...): tied to the target's kernel/loader;
#   - libstdc++ and libgcc_s: the target's are at least as new (Ubuntu 24.04 ships GCC 14's);
#   - the CUDA driver and toolkit libraries (libcuda, libcudart, libcublas, libcublasLt, ...): the
#     driver must match the kernel module and cuBLAS alone is ~570 MB; env.sh points at the target's.
#     UCX's CUDA module (libuct_cuda) needs libcuda.so.1 and libcudart.so.13 from there too; where
#     they are missing it does not load and UCX runs without its CUDA transports;
#   - the RDMA verbs stack (libibverbs, librdmacm, libmlx5, libnl): it must match the host's kernel
#     drivers and provider plugins. UCX's ib/rdmacm modules load only where the host has rdma-core;
#     elsewhere UCX skips them and uses shared memory/TCP. Set BUNDLE_RDMA=1 to bundle it anyway.
#
# Environment:
#   BUNDLE_MAX_MIB (default 60): the size limit; the script fails above it.
#   BUNDLE_TAR=1: also write OUT_DIR.tar.gz; the limit then applies to the archive.
#   BUNDLE_TAR=xz: OUT_DIR.tar.xz instead (slower to make, about half the size of the .tar.gz).
#   BUNDLE_RDMA=1: bundle the RDMA verbs libraries too (see above).
#   BUNDLE_TESTS=GLOB: only test programs whose name matches (default all; 'none' for none).
#   BUNDLE_STRIP=0: keep symbols (default: strip the shipped programs and libraries).
set -euo pipefail

die() { echo "bundle.sh: error: $*" >&2; exit 1; }
log() { echo "bundle.sh: $*"; }

[ $# -eq 2 ] || die "usage: $0 BUILD_DIR OUT_DIR"
BUILD_DIR=$1
OUT_DIR=$2
MAX_MIB=${BUNDLE_MAX_MIB:-60}
# Which test programs travel (a shell glob on the file name): all of them make the bundle too big
# for the 64 MiB a device run carries, so e.g. BUNDLE_TESTS='test_cuda_*'; BUNDLE_TESTS=none for
# operators who ship starattn alone.
BUNDLE_TESTS=${BUNDLE_TESTS:-*}
# Strip symbols from what is shipped (BUNDLE_STRIP=0 keeps them for debugging on the host).
BUNDLE_STRIP=${BUNDLE_STRIP:-1}
BUNDLE_RDMA=${BUNDLE_RDMA:-0}

[ -d "$BUILD_DIR" ] || die "build folder '$BUILD_DIR' does not exist (build the project first)"
for tool in ldd patchelf readelf; do
  command -v "$tool" >/dev/null || die "'$tool' not found; run deploy/install-deps.sh (patchelf, binutils)"
done

# ---- collect the executables ----
executables=()
[ -x "$BUILD_DIR/tools/starattn" ] || die "'$BUILD_DIR/tools/starattn' not found or not executable"
executables+=("$BUILD_DIR/tools/starattn")
if [ -d "$BUILD_DIR/tests" ]; then
  # Every dynamically linked ELF program under tests/ (it has a program interpreter; shared
  # libraries and scripts do not), except CMake's own probe binaries in CMakeFiles/.
  while IFS= read -r -d '' f; do
    # shellcheck disable=SC2254  # BUNDLE_TESTS is a glob on purpose
    case "$(basename "$f")" in $BUNDLE_TESTS) ;; *) continue ;; esac
    if readelf -l "$f" 2>/dev/null | grep -q 'Requesting program interpreter'; then
      executables+=("$f")
    fi
  done < <(find "$BUILD_DIR/tests" -path '*/CMakeFiles' -prune -o -type f -perm -u+x -print0 | sort -z)
fi
log "${#executables[@]} executables (starattn + $(( ${#executables[@]} - 1 )) test binaries)"

# A flat bin/ needs unique names.
dups=$(for f in "${executables[@]}"; do basename "$f"; done | sort | uniq -d)
[ -z "$dups" ] || die "executables with the same name in different folders (bin/ is flat): $dups"

# ---- decide which libraries are "system" ones ----
# Returns 0 (skip) for libraries the target host must provide itself; see the header for why.
is_system_lib() {
  local name=$1 path=$2
  case "$name" in
    linux-vdso.so*|linux-gate.so*|ld-linux*.so*|ld64.so*) return 0 ;;
    libc.so*|libm.so*|libmvec.so*|libpthread.so*|libdl.so*|librt.so*|libutil.so*|libresolv.so*) return 0 ;;
    libnsl.so*|libanl.so*|libBrokenLocale.so*|libnss_*|libthread_db.so*|libc_malloc_debug.so*) return 0 ;;
    libstdc++.so*|libgcc_s.so*) return 0 ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnvidia-*|libnvrtc*|libnvJitLink*) return 0 ;;
    libcufft*|libcurand*|libcusparse*|libcusolver*|libnccl*|libcudnn*) return 0 ;;
  esac
  # Anything resolved inside a CUDA toolkit or driver folder belongs to the target's CUDA install.
  case "$path" in
    */cuda/*|*/cuda-[0-9]*/*|*/nvidia/*) return 0 ;;
  esac
  if [ "$BUNDLE_RDMA" != 1 ]; then
    case "$name" in
      libibverbs.so*|librdmacm.so*|libmlx4.so*|libmlx5.so*|libefa.so*|libnl-3.so*|libnl-route-3.so*) return 0 ;;
    esac
  fi
  return 1
}

# ---- prepare the output folder ----
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
rm -rf "${OUT_DIR:?}/bin" "${OUT_DIR:?}/lib" "$OUT_DIR/env.sh" "$OUT_DIR/run-tests.sh"
mkdir -p "$OUT_DIR/bin" "$OUT_DIR/lib"

for exe in "${executables[@]}"; do
  cp -p "$exe" "$OUT_DIR/bin/"
done

# ---- copy the libraries: ldd prints the transitive closure of DT_NEEDED ----
declare -A copied=()   # soname -> source path
declare -A modules=()  # UCX module sonames: they live in lib/ucx, never in lib/
copy_deps_of() {
  local obj=$1 line name path
  local out
  out=$(ldd "$obj" 2>&1) || die "ldd failed on $obj: $out"
  while IFS= read -r line; do
    case "$line" in
      *"=> not found"*)
        name=$(echo "$line" | awk '{print $1}')
        is_system_lib "$name" "" && continue
        die "$(basename "$obj") needs $name, which is not found on this machine (LD_LIBRARY_PATH?)" ;;
      *"=>"*)
        name=$(echo "$line" | awk '{print $1}')
        path=$(echo "$line" | awk '{print $3}') ;;
      *) continue ;;   # vdso and the dynamic loader line, which has no '=>'
    esac
    is_system_lib "$name" "$path" && continue
    [ -n "${copied[$name]:-}" ] && continue
    [ -n "${modules[$name]:-}" ] && continue   # e.g. libuct_rdmacm needs libuct_ib
    # Copy the real file (through symlinks such as Debian's alternatives) under the name the
    # dependents ask for (the soname), which is what the dynamic loader searches for.
    cp -L "$path" "$OUT_DIR/lib/$name"
    chmod u+w "$OUT_DIR/lib/$name"
    copied[$name]=$path
  done <<<"$out"
}

for exe in "${executables[@]}"; do
  copy_deps_of "$exe"
done

# UCX loads its transport modules with dlopen from the 'ucx' folder beside libucs (or UCX_MODULE_DIR),
# so bring them along whenever libucs is in the bundle: the modules of that same libucs, never
# another UCX's (a module built for other libraries fails to load or misbehaves).
if [ -n "${copied[libucs.so.0]:-}" ]; then
  ucs_dir=$(dirname "$(readlink -f "${copied[libucs.so.0]}")")
  ucx_mod_dir="$ucs_dir/ucx"
  [ -d "$ucx_mod_dir" ] || die "libucs is bundled from $ucs_dir but its module folder ($ucx_mod_dir) is missing"
  case "$ucs_dir" in
    /usr/lib|/usr/lib/*|/lib/*) log "WARNING: the programs link the system's UCX ($ucs_dir), which has no CUDA" \
                                    "transports; run deploy/build-ucx.sh and reconfigure the build" ;;
  esac
  mkdir -p "$OUT_DIR/lib/ucx"
  # Only the real files (libuct_X.so.0.0.0), saved under their soname (libuct_X.so.0), the name
  # libucs dlopens; neither the static archives nor the dev symlinks.
  mod_files=()
  for m in "$ucx_mod_dir"/*.so.*; do
    if [ ! -e "$m" ] || [ -L "$m" ]; then continue; fi
    soname=$(readelf -d "$m" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    [ -n "$soname" ] || soname=$(basename "$m")
    modules[$soname]=1
    mod_files+=("$m")
    cp -L "$m" "$OUT_DIR/lib/ucx/$soname"
    chmod u+w "$OUT_DIR/lib/ucx/$soname"
  done
  for m in "${mod_files[@]}"; do
    copy_deps_of "$m"
  done
  log "UCX modules from $ucx_mod_dir: ${!modules[*]}"
  # ucx_info and ucx_perftest of the same build, for checking the transports on the target and
  # measuring their floor (not tests: see run-tests.sh).
  for tool in ucx_info ucx_perftest; do
    path=$(dirname "$ucs_dir")/bin/$tool
    if [ -x "$path" ]; then
      cp -p "$path" "$OUT_DIR/bin/"
      copy_deps_of "$path"
    fi
  done
fi

# ---- strip, then RUNPATH: executables look in ../lib, libraries next to themselves ----
if [ "$BUNDLE_STRIP" = 1 ]; then
  strip --strip-unneeded "$OUT_DIR"/bin/* "$OUT_DIR"/lib/*.so* 2>/dev/null || true
  [ ! -d "$OUT_DIR/lib/ucx" ] || strip --strip-unneeded "$OUT_DIR"/lib/ucx/*.so* 2>/dev/null || true
fi
# ($ORIGIN is for the dynamic loader, not the shell: the single quotes are intended.)
# shellcheck disable=SC2016
for f in "$OUT_DIR"/bin/*; do
  patchelf --set-rpath '$ORIGIN/../lib' "$f"
done
for f in "$OUT_DIR"/lib/*.so*; do
  # shellcheck disable=SC2016
  patchelf --set-rpath '$ORIGIN' "$f"
done
if [ -d "$OUT_DIR/lib/ucx" ]; then
  for f in "$OUT_DIR"/lib/ucx/*.so*; do
    # shellcheck disable=SC2016
    patchelf --set-rpath '$ORIGIN:$ORIGIN/..' "$f"   # modules need libuct/libucs from lib/
  done
fi
log "${#copied[@]} libraries bundled: $(printf '%s ' "${!copied[@]}" | tr ' ' '\n' | sort | tr '\n' ' ')"

# ---- env.sh: everything relative to where the bundle lies ----
cat >"$OUT_DIR/env.sh" <<'EOF'
# Source this file (". env.sh") before running the bundle's programs.
# Library paths come from RUNPATH ($ORIGIN/../lib); this adds what RUNPATH cannot know:
#  - UCX's module folder (libucs also finds lib/ucx beside itself; this makes it explicit);
#  - the host's CUDA libraries (libcudart/libcublas are not bundled; set CUDA_HOME if not /usr/local/cuda).
_starattn_bundle=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
export STARATTN_BUNDLE="$_starattn_bundle"
export UCX_MODULE_DIR="$_starattn_bundle/lib/ucx"
for _d in "${CUDA_HOME:-/usr/local/cuda}/lib64" "${CUDA_HOME:-/usr/local/cuda}/targets/$(uname -m)-linux/lib"; do
  if [ -d "$_d" ]; then
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$_d:"*) ;;
      *) export LD_LIBRARY_PATH="$_d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    break
  fi
done
case ":$PATH:" in
  *":$_starattn_bundle/bin:"*) ;;
  *) export PATH="$_starattn_bundle/bin:$PATH" ;;
esac
unset _d _starattn_bundle
EOF

# ---- run-tests.sh: ctest-free runner ----
cat >"$OUT_DIR/run-tests.sh" <<'EOF'
#!/usr/bin/env bash
# Runs every test binary of the bundle (bin/ minus starattn and the UCX tools) and prints a summary line
# 'N passed, N failed'. Exit code 0 iff every binary passed.
#
# usage: run-tests.sh [-b GLOB] [GTEST_FILTER]
#   -b GLOB       run only binaries whose name matches GLOB (e.g. -b '*cuda*')
#   GTEST_FILTER  passed as --gtest_filter to each binary (e.g. 'Merge*:-*Slow*')
# Binaries whose filter selects no test still pass (GoogleTest exits 0).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null
. "$here/env.sh"
# Tests that run the command line find the bundle's copy (not the build folder's path baked in).
export STARATTN_CLI="$here/bin/starattn"

glob='*'
if [ "${1:-}" = "-b" ]; then
  [ $# -ge 2 ] || { echo "run-tests.sh: -b needs a glob" >&2; exit 2; }
  glob=$2; shift 2
fi
args=()
[ $# -ge 1 ] && [ -n "$1" ] && args+=("--gtest_filter=$1")

passed=0; failed=0; failed_names=()
for t in "$here"/bin/*; do
  name=$(basename "$t")
  case "$name" in starattn|ucx_info|ucx_perftest) continue ;; esac
  # shellcheck disable=SC2254
  case "$name" in $glob) ;; *) continue ;; esac
  echo "=== $name ${args[*]:-}"
  start=$(date +%s)
  # Run from bin/ so tests that look for files relative to themselves behave the same everywhere.
  if (cd "$here/bin" && "$t" "${args[@]}"); then
    passed=$((passed + 1)); echo "=== $name: PASS ($(( $(date +%s) - start )) s)"
  else
    rc=$?
    failed=$((failed + 1)); failed_names+=("$name"); echo "=== $name: FAIL (exit $rc, $(( $(date +%s) - start )) s)"
  fi
done
if [ $((passed + failed)) -eq 0 ]; then
  echo "run-tests.sh: no test binary matched '$glob'" >&2
  exit 1
fi
[ $failed -eq 0 ] || echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
EOF
chmod +x "$OUT_DIR/run-tests.sh"

# ---- size check ----
# The limit keeps the bundle small enough to travel with a working tree (64 MiB there). OpenBLAS alone
# is ~37 MiB (kernels for every CPU); BUNDLE_TAR=1 also writes OUT_DIR.tar.gz (about a third of the
# size) and applies the limit to that archive instead.
size_mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bytes=$(du -sb "$OUT_DIR" | awk '{print $1}')
log "bundle at $OUT_DIR: $(size_mib "$bytes") MiB (${#executables[@]} executables, $(find "$OUT_DIR/lib" -name '*.so*' | wc -l) libraries)"
checked=$OUT_DIR
case "${BUNDLE_TAR:-0}" in
  0) ;;
  1) tarball="$OUT_DIR.tar.gz"
     tar -czf "$tarball" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
     unpack="tar xzf" ;;
  xz) tarball="$OUT_DIR.tar.xz"
      tar -cf - -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")" | xz -T0 -9 >"$tarball"
      unpack="tar xJf" ;;
  *) die "BUNDLE_TAR must be 0, 1 or xz, got '${BUNDLE_TAR}'" ;;
esac
if [ -n "${tarball:-}" ]; then
  bytes=$(stat -c %s "$tarball")
  checked=$tarball
  log "archive $tarball: $(size_mib "$bytes") MiB (unpack with: $unpack $(basename "$tarball"))"
fi
if [ "$bytes" -gt $((MAX_MIB * 1048576)) ]; then
  echo "bundle.sh: error: $checked is $(size_mib "$bytes") MiB, over the ${MAX_MIB} MiB limit (BUNDLE_MAX_MIB)." >&2
  echo "  largest files:" >&2
  find "$OUT_DIR" -type f -printf '%s %p\n' | sort -rn | head -8 | awk '{printf "    %.1f MiB  %s\n", $1/1048576, $2}' >&2
  echo "  (a Debug build or unstripped binaries are the usual cause: build Release, strip bin/," >&2
  echo "   or set BUNDLE_TAR=1 to ship a compressed archive)" >&2
  exit 1
fi
