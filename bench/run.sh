#!/usr/bin/env bash
# tunneld's benchmark: tunneld against a direct connection, ssh -N -L, the old xinetd +
# ssh + nc recipe, and a minimal libssh2 pump, all measured in one run on loopback.
#   bench/run.sh           full run (several minutes); writes bench/RESULTS.md
#   bench/run.sh --quick   a few seconds per case, for CI; checks every contender carries bytes
#   bench/run.sh --only burst,socks,opens   only those burst cases (any of them); writes no RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in gcc python3 ssh-keygen; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
[ -x /usr/sbin/xinetd ] || need+=(xinetd)
command -v nc >/dev/null 2>&1 || need+=(netcat-openbsd)
pkg-config --exists libssh2 2>/dev/null || need+=(libssh2-1-dev pkg-config)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sed 's/^gcc$/gcc/; s/^ssh-keygen$/openssh-client/') >/dev/null
fi

if [ "${1:-}" = "--quick" ]; then
    echo "bench: building tunneld (debug)"
    swift build 2>&1 | tail -1
    bin=$(swift build --show-bin-path)
else
    # The binary `make install` installs: release, Swift runtime linked in, packed relocations.
    echo "bench: building tunneld as make install does"
    make build SCRATCH=.build-bench 2>&1 | tail -1
    bin=.build-bench/release
fi

out=$(mktemp -d /tmp/tunneld-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
gcc -O2 -pthread -o "$out/benchtool" bench/benchtool.c
gcc -O2 -o "$out/libssh2_pump" bench/libssh2_pump.c $(pkg-config --cflags --libs libssh2)
[ "$(id -u)" -eq 0 ] && mkdir -p /run/sshd
python3 bench/run.py --tunneld "$bin/tunneld" --tools "$out" --work "$out" "$@"
