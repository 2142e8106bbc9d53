#!/usr/bin/env bash
# deploy/build-ucx.sh: builds the project's UCX from Debian's source package, with the CUDA
# transports (cuda_copy, cuda_ipc) AND the RDMA ones (verbs: rc/ud/dc, rdmacm) in one library.
#
# Why a build: Debian's binary UCX 1.13.1 has verbs but no CUDA; PyPI's libucx-cu13 has CUDA but
# was configured --without-verbs --without-rdmacm. Debian's source of the same 1.13.1 has both
# (docs/DESIGN.md, "Data plane transports: which UCX and why").
#
# What it does (idempotent; root or sudo; called by deploy/install-deps.sh):
#   1. skips everything when PREFIX already holds this exact build (version, patches, options);
#   2. installs the Debian build dependencies (autotools, rdma-core and libnuma headers);
#   3. adds a deb-src entry for '<codename> main' on the mirror of apt's existing deb entry
#      (one-line sources.list or deb822 *.sources), when apt has no source entry for ucx yet;
#   4. apt-get source ucx, applies deploy/patches/ucx/*.patch, configures, builds and installs.
#
# The CUDA toolkit is the one whose nvcc is found (CUDACXX, PATH, then $CUDA_HOME/bin); without
# nvcc, UCX is built without CUDA (verbs, rdmacm, tcp, shared memory) and the script says so.
# gdr_copy is built only when GDRCopy (gdrapi.h + libgdrapi) is installed: Debian has no package.
#
# Environment:
#   STARATTN_UCX_PREFIX  install prefix (default /opt/starattn/ucx; CMakeLists.txt looks there)
#   STARATTN_UCX_JOBS    parallel make jobs (default: nproc)
set -euo pipefail

die() { echo "build-ucx: error: $*" >&2; exit 1; }
log() { echo "build-ucx: $*"; }

UCX_VERSION=1.13.1   # the patches under deploy/patches/ucx are written for this version
prefix=${STARATTN_UCX_PREFIX:-/opt/starattn/ucx}
jobs=${STARATTN_UCX_JOBS:-$(nproc 2>/dev/null || echo 2)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_dir=$here/patches/ucx

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# ---- the CUDA toolkit: the folder above nvcc's bin/ ----
find_nvcc() {
  if [ -n "${CUDACXX:-}" ] && [ -x "$CUDACXX" ]; then echo "$CUDACXX"; return; fi
  if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return; fi
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME/bin/nvcc"; return; fi
  true
}
cuda_dir=""
nvcc=$(find_nvcc)
if [ -n "$nvcc" ]; then
  # nvcc names its own toolkit (TOP) in a dry run; that also sees through wrapper scripts.
  dryrun=$("$nvcc" -v --dryrun -x cu -c /dev/null -o /dev/null 2>&1 || true)
  cuda_dir=$(printf '%s\n' "$dryrun" | sed -n 's/^#\$ TOP=//p' | tail -n1)
  [ -n "$cuda_dir" ] || cuda_dir=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  cuda_dir=$(readlink -f "$cuda_dir")
  [ -f "$cuda_dir/include/cuda.h" ] || die "nvcc at $nvcc, but $cuda_dir/include/cuda.h is missing"
fi

# ---- GDRCopy, if someone installed it (GDRCOPY_HOME, else the system folders) ----
gdrcopy_dir=""
for d in ${GDRCOPY_HOME:-} /usr/local /usr; do
  if [ -f "$d/include/gdrapi.h" ] && ls "$d"/lib*/libgdrapi.so* "$d"/lib/*/libgdrapi.so* >/dev/null 2>&1; then
    gdrcopy_dir=$d; break
  fi
done

# ---- configure options: what we need, and nothing that only costs build time ----
configure_args=(
  --prefix="$prefix"
  --disable-static          # shared libraries only: libtool would compile everything twice
  --enable-mt --enable-cma  # as Debian's package
  --with-verbs --with-rdmacm --with-mlx5-dv   # rc/ud verbs, rc/ud/dc over mlx5, RDMA CM
  --disable-logging         # as Debian: trace-level logging compiled out (debug remains)
  --disable-doxygen-doc --without-java --without-go --without-fuse3 --without-bfd
  --without-knem --without-xpmem --without-ugni --without-rocm
)
if [ -n "$cuda_dir" ]; then
  configure_args+=(--with-cuda="$cuda_dir")
else
  configure_args+=(--without-cuda)
fi
if [ -n "$gdrcopy_dir" ]; then
  configure_args+=(--with-gdrcopy="$gdrcopy_dir")
else
  configure_args+=(--without-gdrcopy)
fi

# What identifies a build: version, our patches, the options. Equal stamp -> nothing to do.
patches=("$patch_dir"/*.patch)
[ -e "${patches[0]}" ] || die "no patches under $patch_dir"
patch_sum=$(cat "${patches[@]}" | sha256sum | cut -c1-16)
stamp_file=$prefix/share/starattn/ucx-build.txt
# Only the libraries, the transport modules, ucx_info, ucx_perftest (the data plane's transport
# floor, with its CUDA memory module) and the CMake/pkg-config files: the top-level make would
# also build tests and examples.
subdirs=(src/ucm src/ucs src/uct src/ucp src/tools/info src/tools/perf cmake)
stamp="ucx $UCX_VERSION; patches $patch_sum; configure ${configure_args[*]}; parts ${subdirs[*]}"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && [ -e "$prefix/lib/libucp.so.0" ]; then
  log "UCX $UCX_VERSION already built in $prefix (same patches and options)"
  exit 0
fi

if [ -n "$cuda_dir" ]; then
  log "CUDA toolkit: $cuda_dir (nvcc $nvcc): cuda_copy and cuda_ipc transports"
else
  log "WARNING: nvcc not found (CUDACXX, PATH, CUDA_HOME): building UCX WITHOUT the CUDA transports"
  log "         (verbs, rdmacm, tcp, shared memory only); install the CUDA toolkit and rerun for them"
fi
if [ -n "$gdrcopy_dir" ]; then
  log "GDRCopy found in $gdrcopy_dir: gdr_copy transport"
else
  log "GDRCopy not installed (Debian has no package): no gdr_copy transport"
fi

export DEBIAN_FRONTEND=noninteractive

# ---- build dependencies (Debian packages) ----
build_deps=(build-essential dpkg-dev xz-utils pkg-config autoconf automake libtool
            libibverbs-dev librdmacm-dev libnuma-dev)
missing=()
for p in "${build_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- a deb-src entry on the mirror apt already uses ----
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"

# Prints 'deb822<TAB>URI<TAB>SIGNED_BY' or 'list<TAB>URI<TAB>[OPTIONS]' for the first enabled deb
# entry that has '$codename' and 'main'. deb822 files: stanzas separated by blank lines; a field
# may continue on indented lines (an inline key), which we do not copy.
find_debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$codename" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main / && enabled != "no" && uris != "") {
          split(uris, u, " "); print "deb822\t" u[1] "\t" signed; found = 1; exit
        }
        types = uris = suites = comps = signed = enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/   { next }
      {
        key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val; else if (key == "uris") uris = val
        else if (key == "suites") suites = val; else if (key == "components") comps = val
        else if (key == "signed-by") signed = val; else if (key == "enabled") enabled = tolower(val)
      }
      END { if (!found) flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$codename" '
      $1 == "deb" {
        opts = ""; i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts $i " "; i++ } opts = opts $i; i++ }
        uri = $i; s = $(i + 1); main = 0
        for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
        if (s == suite && main) { print "list\t" uri "\t" opts; exit }
      }' "$f"
  done
}

src_list_deb822=/etc/apt/sources.list.d/starattn-debian-src.sources
src_list_oneline=/etc/apt/sources.list.d/starattn-debian-src.list
if ! apt-cache showsrc ucx 2>/dev/null | grep -q "^Version: $UCX_VERSION"; then
  if [ ! -f "$src_list_deb822" ] && [ ! -f "$src_list_oneline" ]; then
    mirrors=$(find_debian_mirror)
    [ -n "$mirrors" ] || die "no apt 'deb' entry for '$codename main' in /etc/apt/sources.list or sources.list.d; add one"
    IFS=$'\t' read -r format uri extra <<<"$mirrors"   # the first one
    if [ "$format" = deb822 ]; then
      log "adding deb-src '$codename main' on $uri ($src_list_deb822)"
      {
        echo "# Added by starattn's deploy/build-ucx.sh: Debian's UCX source (same mirror and key as the deb entry)."
        echo "Types: deb-src"
        echo "URIs: $uri"
        echo "Suites: $codename"
        echo "Components: main"
        [ -n "$extra" ] && echo "Signed-By: $extra"
      } | $SUDO tee "$src_list_deb822" >/dev/null
    else
      log "adding deb-src '$codename main' on $uri ($src_list_oneline)"
      echo "deb-src ${extra:+$extra }$uri $codename main" | $SUDO tee "$src_list_oneline" >/dev/null
    fi
  fi
  $SUDO apt-get update -qq
fi
apt-cache showsrc ucx 2>/dev/null | grep -q "^Version: $UCX_VERSION" \
  || die "apt offers no source of ucx $UCX_VERSION (apt-cache showsrc ucx); the patches are for $UCX_VERSION"

# ---- source, patches, configure, build, install ----
work=$(mktemp -d "${TMPDIR:-/tmp}/starattn-ucx.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
cd "$work"
# Downloads as root (the temp folder is private), unpacks with dpkg-source and applies Debian's
# own patches.
src_version=$(apt-cache showsrc ucx | awk -v v="$UCX_VERSION" '$1 == "Version:" && index($2, v) == 1 { print $2; exit }')
log "apt-get source ucx=$src_version"
apt-get source -qq -o APT::Sandbox::User=root "ucx=$src_version" >/dev/null
src="$work/ucx-$UCX_VERSION"
[ -d "$src" ] || die "apt-get source ucx=$src_version left no $src folder"
for p in "${patches[@]}"; do
  log "patch $(basename "$p")"
  patch -d "$src" -p1 --forward --quiet <"$p" || die "patch $p does not apply to $(basename "$src")"
done
log "autogen"
(cd "$src" && ./autogen.sh) >"$work/autogen.log" 2>&1 || { tail -n 30 "$work/autogen.log" >&2; die "autogen.sh failed"; }
mkdir "$work/build"
cd "$work/build"
log "configure ${configure_args[*]}"
"$src/configure" "${configure_args[@]}" >"$work/configure.log" 2>&1 \
  || { tail -n 30 "$work/configure.log" >&2; die "configure failed (see the lines above)"; }
for d in "${subdirs[@]}"; do
  log "make -C $d -j$jobs"
  make -C "$d" -j"$jobs" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; die "make in $d failed"; }
done
# Install into a staging folder, then swap it in whole, so an interrupted run never leaves a
# half-installed prefix that the stamp would vouch for.
stage=$work/stage
for d in "${subdirs[@]}"; do
  make -C "$d" install DESTDIR="$stage" >>"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; die "make install in $d failed"; }
done
make install-pkgconfigDATA DESTDIR="$stage" >>"$work/make.log" 2>&1 || die "installing ucx.pc failed"
find "$stage" -name '*.la' -delete   # libtool archives: nothing here links through libtool
mkdir -p "$stage$prefix/share/starattn"
echo "$stamp" >"$stage$prefix/share/starattn/ucx-build.txt"
$SUDO mkdir -p "$(dirname "$prefix")"
$SUDO rm -rf "$prefix.old"
[ ! -e "$prefix" ] || $SUDO mv "$prefix" "$prefix.old"
$SUDO mv "$stage$prefix" "$prefix"
$SUDO rm -rf "$prefix.old"

log "installed UCX $UCX_VERSION in $prefix in $(( $(date +%s) - start )) s; transports:"
"$prefix/bin/ucx_info" -b | sed -n 's/^#define uct_MODULES *"\(.*\)"/  uct modules: \1/p'
