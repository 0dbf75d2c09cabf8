#!/usr/bin/env bash
# Packages the sample application as five versioned release tarballs for the demo and tests.
#
# Usage: package.sh OUT_DIR
# Inputs: target/debug/rampart-sample-app (built here with cargo when missing; set
#         SAMPLE_APP_BIN to use another build).
# Outputs in OUT_DIR: sample-app-1.0.0.tar.gz and sample-app-2.0.0.tar.gz (healthy),
#         sample-app-2.1.0.tar.gz and sample-app-2.2.0.tar.gz (bad, yet healthy to their health
#         checks: a `faults` file makes 2.1.0 answer 5 % of its page requests with 500 and 2.2.0
#         answer every page 200 ms late; canary analysis must tell them apart by their metrics),
#         sample-app-3.0.0.tar.gz (broken: starts, but its `health` file says DOWN), each with a
#         `<name>.sha256` line beside it as `sha256sum` writes it.
# Each tarball holds at its root: bin/rampart-sample-app, version.txt, health, start.sh,
# `faults` (2.1.0 and 2.2.0 only) and db/migration/ with the Flyway migrations of its major
# version and the ones before it (V1 with 1.0.0, V1-V2 with 2.x, V1-V3 with 3.0.0), each with its
# U undo script.
# Archives are reproducible: sorted names, fixed owner and mtime, gzip without name or time (level 6:
# a quarter of -9's time for 1 % more bytes, and the tests package five releases many times).
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
workspace="$(cd "$(dirname "$0")/../.." && pwd)"
out_dir="$1"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

bin="${SAMPLE_APP_BIN:-$workspace/target/debug/rampart-sample-app}"
if [[ ! -x "$bin" ]]; then
    (cd "$workspace" && cargo build --bin rampart-sample-app -p rampart-tests)
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# version health [faults: the `faults` file's one line, `-` for none]
releases=(
    "1.0.0 UP -"
    "2.0.0 UP -"
    "2.1.0 UP error_share=0.05"
    "2.2.0 UP latency_ms=200"
    "3.0.0 DOWN -"
)
for release in "${releases[@]}"; do
    read -r version health faults <<<"$release"
    name="sample-app-$version"
    root="$stage/$name"
    mkdir -p "$root/bin"
    install -m 0755 "$bin" "$root/bin/rampart-sample-app"
    printf '%s\n' "$version" >"$root/version.txt"
    printf '%s\n' "$health" >"$root/health"
    members=(bin db)
    if [[ "$faults" != "-" ]]; then
        printf '%s\n' "$faults" >"$root/faults"
        chmod 0644 "$root/faults"
        touch -h -d @0 "$root/faults"
        members+=(faults)
    fi
    members+=(health start.sh version.txt)
    cat >"$root/start.sh" <<'EOF'
#!/bin/sh
# Starts this release of the sample app; SAMPLE_APP_LISTEN overrides the address.
root="$(cd "$(dirname "$0")" && pwd)"
exec "$root/bin/rampart-sample-app" --root "$root" --listen "${SAMPLE_APP_LISTEN:-127.0.0.1:18080}"
EOF
    chmod 0755 "$root/start.sh"
    mkdir -p "$root/db/migration"
    major="${version%%.*}"
    for n in $(seq 1 "$major"); do
        cp "$workspace/playbooks/sample-app/db/migration/"[VU]"${n}"__*.sql "$root/db/migration/"
    done
    chmod 0755 "$root/db" "$root/db/migration"
    chmod 0644 "$root/db/migration/"*.sql
    touch -h -d @0 "$root/db" "$root/db/migration" "$root/db/migration/"*.sql
    chmod 0644 "$root/version.txt" "$root/health"
    chmod 0755 "$root" "$root/bin"
    touch -h -d @0 "$root" "$root/bin" "$root/bin/rampart-sample-app" "$root/version.txt" "$root/health" "$root/start.sh"

    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        --format=gnu -C "$root" -cf - "${members[@]}" |
        gzip -n -6 >"$out_dir/$name.tar.gz.tmp"
    mv "$out_dir/$name.tar.gz.tmp" "$out_dir/$name.tar.gz"
    (cd "$out_dir" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
    if [[ "$faults" == "-" ]]; then
        echo "wrote $out_dir/$name.tar.gz ($health)"
    else
        echo "wrote $out_dir/$name.tar.gz ($health, faults: $faults)"
    fi
done
