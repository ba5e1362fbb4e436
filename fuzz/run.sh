#!/usr/bin/env bash
# Runs every fuzz target for a fixed time each and prints a Markdown table of the results.
#
#   fuzz/run.sh SECONDS [MAX_RUNS]
#
# Each target runs with one job (`-jobs=1 -workers=1`), starting from its committed seed corpus
# (fuzz/corpus/<target>, read-only) plus a working corpus under fuzz/work/<target> that later
# runs reuse; it stops after SECONDS or after MAX_RUNS executions (default 10 million), or at the
# first failure, whose input libFuzzer writes under fuzz/artifacts/<target>/. Logs go to
# fuzz/work/<target>.log. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). TARGETS="a b" runs a subset. FUZZ_FLAGS adds cargo-fuzz options to
# the build and the runs, e.g. FUZZ_FLAGS="-s none --no-trace-compares" (no AddressSanitizer, no
# comparison tracing: the data path campaign's setting, see README.md).
set -uo pipefail

secs=${1:?usage: fuzz/run.sh SECONDS [MAX_RUNS]}
max_runs=${2:-10000000}
cd "$(dirname "$0")"
targets=${TARGETS:-"mmio_transport net_datapath boot_image esr_psci"}
read -r -a flags <<<"${FUZZ_FLAGS:-}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz (and rustup toolchain install nightly)" >&2
    exit 2
fi

# One build for all targets (builds are kept to one at a time).
cargo +nightly fuzz build "${flags[@]}" >/dev/null 2>work-build.log || { cat work-build.log >&2; exit 2; }
rm -f work-build.log

rows=()
status=0
for t in $targets; do
    mkdir -p "work/$t"
    log="work/$t.log"
    cargo +nightly fuzz run "${flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -runs="$max_runs" -jobs=1 -workers=1 -timeout=60 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    # With -jobs, libFuzzer runs the fuzzing process as a child logging to fuzz-0.log.
    if [ -f fuzz-0.log ]; then
        cat fuzz-0.log >>"$log"
        rm -f fuzz-0.log
    fi
    if grep -qE '^==[0-9]+== ERROR: libFuzzer|panicked at|Test unit written to' "$log"; then
        rc=1
    fi
    runs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
    rate=$(grep -E '^stat::average_exec_per_sec:' "$log" | tail -1 | awk '{print $2}')
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        status=1
        crash=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | awk '{print $5}')
        crash=${crash#"$PWD/"}
        result="crash: ${crash:-see fuzz/$log}"
    fi
    rows+=("| $t | ${runs:-?} | ${rate:-?} | $result |")
done

echo "Fuzzing run of $(date -u +%Y-%m-%d), ${secs} s per target (at most ${max_runs} executions):"
echo
echo "| target | executions | exec/s | result |"
echo "|---|---:|---:|---|"
printf '%s\n' "${rows[@]}"
exit $status
