#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) each, from the seed corpus
# (fuzz/corpus, read only) and a working corpus (fuzz/work, kept between
# runs, not committed); prints libFuzzer's final stats line per target.
#   cargo install cargo-fuzz && fuzz/run.sh 300
# Crashes land in fuzz/artifacts/<target>/; reproduce with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# and, once fixed, keep the input in fuzz/regressions/<target>/, which
# `cargo test` replays (tests/fuzz_corpus.rs) along with fuzz/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
# cargo-fuzz wants a nightly compiler; the stable one will do with this.
export RUSTC_BOOTSTRAP=1
for target in firstbytes native_frames taskit4_envelopes codecs; do
    mkdir -p "fuzz/work/$target"
    echo "== $target ($seconds s)"
    cargo fuzz run "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 \
        | grep -E '^(Done|#[0-9]+ +DONE|==[0-9]+==|SUMMARY)' || true
done
