#!/usr/bin/env bash
# Pull benchmark (docs/benchmarks.md, "Fast pulls"): wall time of pulling an image from a registry into an
# EMPTY store, and the bytes the registry sends (the manifest's layer sizes).
#
#   benchmarks/pull_bench.sh [--runs N] REF...      e.g. 127.0.0.1:5000/bench:before-gzip 127.0.0.1:5000/bench:after-zstd
#
# Each run starts a scratch engine on a fresh data directory, pulls, stops it and deletes the directory:
#   dockerd     a second dockerd (--bridge=none --iptables=false, its own data-root and socket); gzip only on
#               Docker 20.10 (zstd fails there: "failed to register layer")
#   containerd  a scratch containerd (no CRI plugin) and `ctr images pull --plain-http` (fetch + unpack into
#               the overlayfs snapshotter); reads gzip and zstd
# Runs alternate between the refs (before, after, before, after …) so that machine load hits both alike.
# Needs root, dockerd, containerd + ctr (Debian's docker.io pulls both in), curl, python3. Registry: plain http.
set -euo pipefail

runs=1
if [ "${1:-}" = "--runs" ]; then runs=$2; shift 2; fi
[ $# -gt 0 ] || { echo "usage: $0 [--runs N] REF..." >&2; exit 2; }
scratch=$(mktemp -d /var/tmp/pull-bench.XXXXXX)
trap 'pkill -F "$scratch/pid" 2>/dev/null || true; sleep 1; rm -rf "$scratch"' EXIT

bytes() {  # compressed bytes of REF's layers + config, from the registry (plain http)
    python3 - "$1" <<'EOF'
import json, sys, urllib.request
ref = sys.argv[1]
host, _, rest = ref.partition("/")
name, _, tag = rest.rpartition(":")
accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
req = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": accept})
m = json.load(urllib.request.urlopen(req, timeout=30))
layers = m["layers"]
print(sum(l["size"] for l in layers) + m["config"]["size"], len(layers), max(l["size"] for l in layers),
      layers[0]["mediaType"].rsplit(".", 1)[-1].replace("tar+", "").replace("tar", "none"))
EOF
}

pull_dockerd() {  # REF -> seconds on stdout
    local root="$scratch/dockerd"
    rm -rf "$root" && mkdir -p "$root/data" "$root/exec"
    dockerd --data-root "$root/data" --exec-root "$root/exec" --pidfile "$scratch/pid" -H "unix://$root/sock" \
        --bridge=none --iptables=false >"$root.log" 2>&1 &
    for _ in $(seq 50); do DOCKER_HOST="unix://$root/sock" docker info >/dev/null 2>&1 && break; sleep 0.2; done
    local start end status=0
    start=$(date +%s.%N)
    DOCKER_HOST="unix://$root/sock" docker pull -q "$1" >"$root.pull" 2>&1 || status=$?
    end=$(date +%s.%N)
    pkill -F "$scratch/pid"; while [ -e "$scratch/pid" ] && kill -0 "$(cat "$scratch/pid")" 2>/dev/null; do sleep 0.2; done
    rm -rf "$root"
    if [ $status != 0 ]; then echo "failed($(tail -n 1 "$root.pull" | cut -c1-60))"; else python3 -c "print(f'{$end - $start:.1f}')"; fi
}

pull_containerd() {
    local root="$scratch/containerd"
    rm -rf "$root" && mkdir -p "$root"
    cat >"$root.toml" <<EOF
version = 2
root = "$root/root"
state = "$root/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$root/sock"
EOF
    containerd -c "$root.toml" >"$root.log" 2>&1 & echo $! >"$scratch/pid"
    for _ in $(seq 50); do ctr -a "$root/sock" version >/dev/null 2>&1 && break; sleep 0.2; done
    local start end status=0
    start=$(date +%s.%N)
    ctr -a "$root/sock" -n bench images pull --plain-http "$1" >"$root.pull" 2>&1 || status=$?
    end=$(date +%s.%N)
    pkill -F "$scratch/pid"; while kill -0 "$(cat "$scratch/pid")" 2>/dev/null; do sleep 0.2; done
    umount -R "$root" 2>/dev/null || true
    rm -rf "$root"
    if [ $status != 0 ]; then echo "failed($(tail -n 1 "$root.pull" | cut -c1-60))"; else python3 -c "print(f'{$end - $start:.1f}')"; fi
}

printf '%-44s %-5s %6s %10s %10s %-12s %s\n' ref comp layers MB largestMB engine seconds
for run in $(seq "$runs"); do
    for ref in "$@"; do
        read -r total count largest comp < <(bytes "$ref")
        for engine in dockerd containerd; do
            if [ "$engine" = dockerd ] && [ "$comp" = zstd ]; then seconds="n/a (Docker 20.10 reads no zstd)"
            else seconds=$(pull_$engine "$ref"); fi
            printf '%-44s %-5s %6s %10.0f %10.0f %-12s %s\n' "$ref" "$comp" "$count" "$((total / 1000000))" \
                "$((largest / 1000000))" "$engine" "$seconds"
        done
    done
done
