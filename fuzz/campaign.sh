#!/usr/bin/env bash
# A long campaign on one target: JOBS fuzzing processes side by side, sharing one working
# corpus, until they have run TOTAL executions between them. A process that stops on a failure
# is started again for what is left of its share, so one failure does not end the campaign;
# every failure's input stays under fuzz/artifacts/<target>/ and is listed at the end.
#
#   fuzz/campaign.sh TARGET TOTAL [JOBS]
#
# Run `cargo +nightly fuzz build $FUZZ_FLAGS TARGET` first (the campaign runs the binary it
# finds under fuzz/target/*/release/). Logs: fuzz/work/TARGET-campaign-N.log, one per process
# and start. Prints one Markdown row: target, executions, exec/s, time, coverage, failures.
set -uo pipefail

target=${1:?usage: fuzz/campaign.sh TARGET TOTAL [JOBS]}
total=${2:?usage: fuzz/campaign.sh TARGET TOTAL [JOBS]}
jobs=${3:-2}
cd "$(dirname "$0")" || exit 2
bin=$(find target -path "*/release/$target" -type f -perm -u+x 2>/dev/null | head -1)
if [ -z "$bin" ]; then
    echo "no build of $target: cargo +nightly fuzz build ${FUZZ_FLAGS:-} $target" >&2
    exit 2
fi
mkdir -p "work/$target" "artifacts/$target"
rm -f work/"$target"-campaign-*.log
start=$(date +%s)

# One process's share: runs until `share` executions are done, restarting after a failure.
run_share() {
    local n=$1 share=$2 done=0 start_no=0 log runs
    while [ "$done" -lt "$share" ]; do
        log="work/$target-campaign-$n-$start_no.log"
        "$bin" "work/$target" "corpus/$target" -runs=$((share - done)) -timeout=60 \
            -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1
        runs=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
        if [ -z "$runs" ]; then
            # No final stats (killed, or a crash before libFuzzer printed them): the last
            # progress line says how far it got.
            runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
        fi
        done=$((done + ${runs:-0}))
        if [ "${runs:-0}" -eq 0 ] && ! grep -q 'Test unit written to' "$log"; then
            echo "process $n made no progress; see fuzz/$log" >&2
            return 1
        fi
        start_no=$((start_no + 1))
    done
}

pids=()
for n in $(seq 1 "$jobs"); do
    share=$((total / jobs + (n <= total % jobs ? 1 : 0)))
    run_share "$n" "$share" &
    pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
secs=$(($(date +%s) - start))

runs=0
for log in work/"$target"-campaign-*.log; do
    r=$(grep -E '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
    [ -n "$r" ] || r=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    runs=$((runs + ${r:-0}))
done
cov=$(grep -hE '^#[0-9]+.*cov:' work/"$target"-campaign-*.log | tail -1 |
    sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 \/ \2 \/ \3/')
failures=$(grep -hoE 'Test unit written to [^ ]+' work/"$target"-campaign-*.log | awk '{print $5}')
nfail=$(printf '%s' "$failures" | grep -c . || true)
echo "| target | executions | exec/s | time | coverage (edges / features / corpus) | failures |"
echo "|---|---:|---:|---:|---|---|"
echo "| $target | $runs | $((runs / (secs > 0 ? secs : 1))) | ${secs} s | ${cov:-?} | $nfail |"
if [ -n "$failures" ]; then
    echo
    echo "Failures:"
    printf "%s\n" "$failures" | sed "s/^/  /"
    status=1
fi
exit $status
