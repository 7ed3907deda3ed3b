#!/bin/sh
# Builds the host and the demo plugin (release), puts the plugin in
# ./plugins.d and runs the host on it. Extra arguments go to taskit-host.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p taskit-host -p taskit-demo
mkdir -p plugins.d
# Replace atomically, so a host already watching plugins.d never sees half a file.
cp target/release/libtaskit_demo.so plugins.d/.demo.so.tmp
mv plugins.d/.demo.so.tmp plugins.d/demo.so
exec target/release/taskit-host --plugins plugins.d "$@"
