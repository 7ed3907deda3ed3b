#!/bin/sh
# Builds the host, taskitctl and the demo plugin (release), puts the plugin
# in ./plugins.d and runs the host on 127.0.0.1:54543. Extra arguments go to
# taskit-host. Then, from another terminal:
#   target/release/taskitctl call 127.0.0.1 add 4 4
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p taskit-host -p taskitctl -p taskit-demo
# Where cargo put them (CARGO_TARGET_DIR, if set).
bin="${CARGO_TARGET_DIR:-target}/release"
mkdir -p plugins.d
# The host refuses a directory or a plugin others may write to (a umask of
# 002 makes both group-writable).
chmod go-w plugins.d
# Replace atomically, so a host already watching plugins.d never sees half a file.
cp "$bin/libtaskit_demo.so" plugins.d/.demo.so.tmp
chmod go-w plugins.d/.demo.so.tmp
mv plugins.d/.demo.so.tmp plugins.d/demo.so
echo "try, from another terminal: $bin/taskitctl call 127.0.0.1 add 4 4"
exec "$bin/taskit-host" --plugins plugins.d "$@"
