#!/bin/sh
# Reproduces every figure in docs/speed.md: builds what the measuring
# binaries need (release), makes a virtualenv with the original
# taskit==4.0.0, then runs the bench twice (as the machine is, and with the
# cores kept awake) and the load three times (plain, with faults, with
# faults and a <stop>). Output goes to target/measure/; plots to docs/img/.
# Fuzzing is separate: fuzz/run.sh SECONDS.
set -eu
cd "$(dirname "$0")/.."
# Two commands: `--bins` would apply to the plugin packages too, which
# have no binaries, and leave their libraries unbuilt.
cargo build --release -p taskit-host -p taskit --bins
cargo build --release -p taskit-demo -p taskit-demo-next -p taskit-fixture-faulty \
    -p taskit-fixture-removable -p taskit-fixture-crasher
venv=target/release/taskit4-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check taskit==4.0.0
fi
out=target/measure
mkdir -p "$out"
run() {
    name=$1
    shift
    echo "== $name: $*"
    "$@" > "$out/$name.txt" 2> "$out/$name.log" || { cat "$out/$name.txt" "$out/$name.log"; exit 1; }
    cat "$out/$name.txt"
}
run bench target/release/taskit-bench --python "$venv/bin/python" --plots docs/img
run bench-awake target/release/taskit-bench --python "$venv/bin/python" --awake-cores --plots docs/img/awake
run load target/release/taskit-load
run load-faults target/release/taskit-load --faults 100
run load-stop target/release/taskit-load --faults 100 --stop-at 90
