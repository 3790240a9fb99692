#!/usr/bin/env bash
# Every check that needs a GPU, in one run that fits a lent machine's minutes (issue 31): the
# test suite on CUDA, the loop's overhead against a bare loop, the bf16 step time, the time to
# the first step, and the recommended recipe on the MCPM paper's protocol.
#
# Here, once:   bash benchmarks/gpu_wheels.sh      (the packages that machine lacks, into .whl/)
# There:        device run, carry [".whl"], timeout_s 600:
#                   bash benchmarks/gpu_session.sh
# Back here:    python benchmarks/store.py --merge <files_at>/results.sqlite
#               (then store.py --compact, leaderboard.py, and commit)
# Two calls instead of one: GPU_SESSION_ONLY="suite overhead", then "bf16 default paper".
# On the CPU, to try the script itself (a few minutes; small steps):
#               GPU_SESSION_DEVICE=cpu GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh /tmp/gs
#
# Each step runs under a time limit cut to what is left of GPU_SESSION_SECONDS (default 540),
# the most valuable first. OUT (default $OUT, the device tool's folder, which sends back 8 files
# at most) gets three: summary.txt (one line per step: its exit status and its log's last line),
# logs.tar.gz (every step's whole log) and results.sqlite (the store with the new runs).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu-session}}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
logs=$out/logs
trap 'tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs" "$out"/{paper-runs,default-*}' EXIT
device=${GPU_SESSION_DEVICE:-cuda}
smoke=${GPU_SESSION_SMOKE:-0}
budget=${GPU_SESSION_SECONDS:-540}
only=${GPU_SESSION_ONLY:-}  # e.g. "overhead bf16": only the steps whose names start so
py=${PYTHON:-python3}
begin=$SECONDS
: > "$out/summary.txt"

say() { echo "[$((SECONDS - begin)) s] $*" | tee -a "$out/summary.txt"; }
step() {  # step NAME LIMIT COMMAND...: at most LIMIT seconds (less if the budget runs short)
    local name=$1 limit=$2 left rc
    shift 2
    if [ -n "$only" ] && ! (for w in $only; do [[ $name == "$w"* ]] && exit 0; done; exit 1); then
        return
    fi
    left=$((budget - (SECONDS - begin)))
    if ((left < 15)); then say "$name: not run, the budget is spent"; return; fi
    ((limit > left)) && limit=$left
    say "$name: started, limit ${limit} s"
    timeout --kill-after=10 "$limit" "$@" > "$logs/$name.log" 2>&1
    rc=$?
    say "$name: exit $rc$( ((rc == 124)) && echo ' (time limit)'): $(tail -n 1 "$logs/$name.log")"
}

if [ "$device" = cuda ]; then  # the lent machine: its python has torch; add what it lacks
    if [ -d .whl ]; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl > "$logs/install.log" 2>&1 || say "wheels: install failed"
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$py" -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$logs/install.log" 2>&1 \
        || say "noisyseg: install failed (see install.log)"
fi
export PYTHONUNBUFFERED=1
# the runs below go into a copy of the store that comes back with OUT (merge it here)
export NOISYSEG_RESULTS_STORE=$out/results.sqlite
cp benchmarks/results/results.sqlite "$NOISYSEG_RESULTS_STORE"
"$py" - > "$logs/machine.txt" 2>&1 <<'EOF'
import platform, torch
print(platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
print("bf16:", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
EOF
say "machine: $(tr '\n' ' ' < "$logs/machine.txt")"

if [ "$smoke" = 1 ]; then
    tests=(tests/test_store.py tests/test_feed.py)
    overhead=(--settings default --repeats 1)
    steps=(--rounds 5 --warmup 1 --methods none mcpm --no-memory)
    paper=(--preset smoke --datasets synthetic)
    default_size="--set train.epochs=1 --set dataset.options.n_train=64"
else
    tests=(tests)
    overhead=(--repeats 2)
    steps=(--methods none mcpm)
    paper=(--preset paper --datasets synthetic)
fi
workers=()
"$py" -c "import xdist" 2>/dev/null && [ "$device" = cuda ] && workers=(-n 6)

# 1. the whole suite on CUDA (the CUDA-only tests among it); -n: processes share the one GPU
step suite 260 "$py" -m pytest -q -p no:cacheprovider "${workers[@]}" "${tests[@]}"
# 2. noisyseg's loop against a bare PyTorch loop, default and paper sizes
step overhead 90 "$py" benchmarks/overhead.py --device "$device" "${overhead[@]}"
# 3. a step in bf16 against fp32, the default batch and the paper's
step bf16-b16 40 "$py" benchmarks/step_time.py --device "$device" --precision bf16 "${steps[@]}"
step bf16-b128 40 "$py" benchmarks/step_time.py --device "$device" --precision bf16 --batch 128 \
    "${steps[@]}"
# 4. the default run (noisyseg run, nothing set) in fp32, then bf16: its Dice in each, and the
#    seconds from the run being asked for to its first step (the fp32 run generates the data,
#    the bf16 run finds it cached)
for precision in fp32 bf16; do
    step "default-$precision" 60 bash -c "noisyseg run --device $device \
        --set train.precision=$precision --set output.dir=$out/default-$precision \
        ${default_size:-} && python3 -c \"import json; \
        m = json.load(open('$out/default-$precision/metrics.json')); \
        print('precision=$precision', 'dice=%.4f' % m['dice'], 'seconds=%.1f' % m['seconds'], \
              'seconds_to_first_step=%.2f' % m['seconds_to_first_step'])\""
done
# 5. the recommended recipe on the paper protocol, with its reference runs, one at a time
step paper 200 "$py" benchmarks/accuracy.py "${paper[@]}" --rates 0.4 --seeds 0 \
    --methods none finetune_cal clean --runs "$out/paper-runs"
say "done; merge the runs here with: python benchmarks/store.py --merge <files>/results.sqlite"
