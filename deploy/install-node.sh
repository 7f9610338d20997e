#!/usr/bin/env bash
# Install an edgecollab edge node as a systemd service on a Debian-family device
# (Jetson Linux, Raspberry Pi OS, Debian, Ubuntu; aarch64 or x86_64).
#
#   sudo bash deploy/install-node.sh [--dry-run] [--config FILE] [SOURCE_DIR]
#
# SOURCE_DIR is an edgecollab checkout (default: the one containing this script).
# The script, idempotent (run it again to update):
#   1. installs missing build tools with apt-get (build-essential, cmake, Python >= 3.11
#      with venv),
#   2. creates the system user 'edgecollab' (in the 'video' and 'render' groups when
#      they exist: the Jetson GPU device nodes belong to 'video'),
#   3. copies SOURCE_DIR to /opt/edgecollab (root-owned, without .git and .venv),
#   4. creates /opt/edgecollab/.venv and pip-installs llama-cpp-python, built for
#      CUDA on a Jetson (CMAKE_ARGS=-DGGML_CUDA=on, nvcc from /usr/local/cuda/bin) and
#      for this CPU elsewhere (-DGGML_NATIVE=on), then edgecollab[node],
#   5. installs /etc/edgecollab/node.yaml from configs/ (never overwrites it) and an
#      empty /etc/edgecollab/node.env for EDGECOLLAB_* overrides,
#   6. installs and enables edgecollab-node.service (restarts it if it was running).
#
# --dry-run prints what would be done and changes nothing (root not needed).
# --config FILE picks the example configuration (default by device:
# configs/node-jetson-orin-nano.yaml, configs/node-raspberry-pi-5.yaml, or
# configs/node-smollm2.yaml).
#
# Environment:
#   PYTHON                 interpreter for the venv (default: first python3 >= 3.11)
#   CMAKE_ARGS             llama.cpp build flags (default: chosen by device, see above)
#   CUDA_HOME              CUDA toolkit on a Jetson (default: /usr/local/cuda)
#   EDGECOLLAB_WHEELHOUSE  directory of prebuilt wheels (e.g. llama-cpp-python built
#                          once for this device), used before building from source
set -euo pipefail

PREFIX=/opt/edgecollab
VENV=$PREFIX/.venv
ETC=/etc/edgecollab
STATE=/var/lib/edgecollab
CACHE=/var/cache/edgecollab
SVC_USER=edgecollab
UNIT=edgecollab-node.service
UNIT_DIR=/etc/systemd/system
LLAMA_SPEC="llama-cpp-python>=0.3.2"  # as in pyproject.toml's 'node' extra

DRY_RUN=""
CONFIG=""
SRC=""
ARGS="$*"

say() { printf 'install-node: %s\n' "$*"; }
die() {
    printf 'install-node: error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,31s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

# run CMD...: execute, or print it under --dry-run.
run() {
    if [ -n "$DRY_RUN" ]; then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) DRY_RUN=1 ;;
    --config)
        [ $# -ge 2 ] || die "--config needs a file"
        CONFIG=$2
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        [ -z "$SRC" ] || die "one source directory only (see --help)"
        SRC=$1
        ;;
    esac
    shift
done

SRC="$(cd "${SRC:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)" || die "no such directory"
if ! grep -qs '^name = "edgecollab"' "$SRC/pyproject.toml"; then
    die "$SRC is not an edgecollab checkout"
fi
[ -f "$SRC/deploy/$UNIT" ] || die "$SRC/deploy/$UNIT is missing"

if [ "$(id -u)" -ne 0 ]; then
    [ -n "$DRY_RUN" ] || die "must be run as root: sudo bash $0 $ARGS"
    say "not root: a dry run only shows what root would do"
fi
if [ -n "$DRY_RUN" ]; then say "dry run: nothing is changed"; fi
[ "$(uname -m)" = aarch64 ] || say "note: $(uname -m), not aarch64; continuing"

# --- device ------------------------------------------------------------------------
MODEL=""
if [ -r /proc/device-tree/model ]; then MODEL="$(tr -d '\0' </proc/device-tree/model)"; fi
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ -f /etc/nv_tegra_release ] || command -v nvcc >/dev/null 2>&1 ||
    [ -x "$CUDA_HOME/bin/nvcc" ]; then
    DEVICE=cuda
    default_config=node-smollm2.yaml  # a CUDA PC: edit n_gpu_layers
    if [ -f /etc/nv_tegra_release ]; then
        DEVICE=jetson
        default_config=node-jetson-orin-nano.yaml
    fi
    # JetPack installs nvcc in $CUDA_HOME/bin, which is not in root's PATH by default.
    export PATH="$CUDA_HOME/bin:$PATH"
    export CUDACXX="${CUDACXX:-$CUDA_HOME/bin/nvcc}"
    default_cmake="-DGGML_CUDA=on"
    # Orin is compute capability 8.7; naming it skips building for every other GPU.
    case $MODEL in *Orin*) default_cmake="$default_cmake -DCMAKE_CUDA_ARCHITECTURES=87" ;; esac
elif [[ $MODEL == *"Raspberry Pi"* ]]; then
    DEVICE=raspberry-pi
    default_cmake="-DGGML_NATIVE=on"
    default_config=node-raspberry-pi-5.yaml
else
    DEVICE=generic
    default_cmake="-DGGML_NATIVE=on"
    default_config=node-smollm2.yaml
fi
CMAKE_ARGS=${CMAKE_ARGS:-$default_cmake}
CONFIG=${CONFIG:-$SRC/configs/$default_config}
[ -f "$CONFIG" ] || die "no configuration file $CONFIG"
say "device: $DEVICE${MODEL:+ ($MODEL)}; llama.cpp CMAKE_ARGS='$CMAKE_ARGS'"
if [ -n "${CUDACXX:-}" ] && [ ! -x "$CUDACXX" ]; then
    say "warning: $CUDACXX not found; install the CUDA toolkit (JetPack: nvidia-jetpack)"
fi

# --- system packages ---------------------------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
# The venv links to its interpreter: one under /root or /home (pyenv, conda) would be
# unreadable by the service user (ProtectHome=yes), so only system ones qualify.
find_python() {
    local c exe
    for c in ${PYTHON:-python3 python3.13 python3.12 python3.11 /usr/bin/python3}; do
        if ! command -v "$c" >/dev/null 2>&1 || ! python_ok "$c"; then continue; fi
        exe="$("$c" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
        case $exe in
        /root/* | /home/*) say "skipping $exe: the service user cannot read it" >&2 ;;
        *)
            printf '%s\n' "$exe"
            return 0
            ;;
        esac
    done
    return 1
}
missing=()
for pkg in build-essential cmake; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if ! PY="$(find_python)"; then
    [ -z "${PYTHON:-}" ] || die "PYTHON=$PYTHON is not a Python >= 3.11"
    # Ubuntu 22.04 (JetPack 6) ships 3.10; python3.11 is in its archive.
    missing+=(python3.11 python3.11-venv)
    PY=python3.11
elif ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=("$(basename "$PY")-venv")
fi
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "install these first: ${missing[*]}"
    say "installing ${missing[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# --- user and directories ----------------------------------------------------------
if id -u "$SVC_USER" >/dev/null 2>&1; then
    say "user $SVC_USER exists"
else
    run useradd --system --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --user-group "$SVC_USER"
fi
for group in video render; do
    if getent group "$group" >/dev/null; then run usermod -aG "$group" "$SVC_USER"; fi
done
run install -d -m 755 "$PREFIX" "$ETC"
run install -d -m 750 -o "$SVC_USER" -g "$SVC_USER" "$STATE" "$CACHE"

# --- code --------------------------------------------------------------------------
if [ "$SRC" = "$PREFIX" ]; then
    say "source is $PREFIX itself: nothing to copy"
elif command -v rsync >/dev/null 2>&1; then
    run rsync -a --delete --chown=root:root --exclude=/.venv --exclude=/.git \
        --exclude=__pycache__ --exclude='*.egg-info' --exclude=/build "$SRC/" "$PREFIX/"
else
    say "copying $SRC to $PREFIX (tar; install rsync to also remove deleted files)"
    [ -n "$DRY_RUN" ] || tar -C "$SRC" --exclude=./.venv --exclude=./.git \
        --exclude=__pycache__ --exclude='*.egg-info' -cf - . |
        tar -C "$PREFIX" --no-same-owner -xf -
fi

# --- virtual environment -----------------------------------------------------------
if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python" &&
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    say "$VENV exists"
else
    [ ! -e "$VENV" ] || run rm -rf "$VENV"
    run "$PY" -m venv "$VENV"
    run "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
pip_args=(--quiet --prefer-binary)
wheelhouse=${EDGECOLLAB_WHEELHOUSE:-}
[ -z "$wheelhouse" ] || pip_args+=(--find-links "$wheelhouse")

# llama-cpp-python: rebuilt only when the build flags change. --no-cache-dir so that a
# wheel cached from another build (CPU vs CUDA) is never reused.
llama_stamp="$VENV/.edgecollab-llama-build"
llama_want="$CMAKE_ARGS"
if [ -f "$llama_stamp" ] && [ "$(cat "$llama_stamp")" = "$llama_want" ]; then
    say "llama-cpp-python already built with CMAKE_ARGS='$CMAKE_ARGS'"
else
    say "building llama-cpp-python (CMAKE_ARGS='$CMAKE_ARGS'; 10-40 minutes on a device)"
    run env CMAKE_ARGS="$CMAKE_ARGS" FORCE_CMAKE=1 "$VENV/bin/python" -m pip install \
        "${pip_args[@]}" --no-cache-dir --force-reinstall --no-deps "$LLAMA_SPEC"
    [ -n "$DRY_RUN" ] || printf '%s\n' "$llama_want" >"$llama_stamp"
fi
# edgecollab itself is reinstalled every time (it is pure Python: seconds).
run env CMAKE_ARGS="$CMAKE_ARGS" "$VENV/bin/python" -m pip install "${pip_args[@]}" \
    "${PREFIX}[node]"
run "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$PREFIX"

# --- configuration -----------------------------------------------------------------
if [ -f "$ETC/node.yaml" ]; then
    say "$ETC/node.yaml exists: kept"
else
    run install -m 640 -o root -g "$SVC_USER" "$CONFIG" "$ETC/node.yaml"
    say "installed $ETC/node.yaml from $CONFIG: set node_id and bus.host"
fi
if [ ! -f "$ETC/node.env" ]; then
    say "creating $ETC/node.env (EDGECOLLAB_NODE__<FIELD>=value overrides)"
    if [ -z "$DRY_RUN" ]; then
        printf '# Environment overrides for edgecollab-node, e.g.\n# %s\n# %s\n' \
            'EDGECOLLAB_NODE__BUS__HOST=192.168.1.10' 'EDGECOLLAB_NODE__NODE_ID=pi-kitchen' \
            >"$ETC/node.env"
        chown "root:$SVC_USER" "$ETC/node.env"
        chmod 640 "$ETC/node.env"
    fi
fi

# --- systemd -----------------------------------------------------------------------
run install -m 644 "$PREFIX/deploy/$UNIT" "$UNIT_DIR/$UNIT"
if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
    run systemctl enable "$UNIT"
    run systemctl try-restart "$UNIT"  # an update takes effect if it was running
    say "done. Edit $ETC/node.yaml, then: systemctl restart $UNIT; journalctl -u $UNIT -f"
else
    say "done, but systemd is not running here: start the unit on the device"
fi
