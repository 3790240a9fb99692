#!/usr/bin/env bash
# Every check that needs a GPU, in one run that fits a lent machine's minutes (issue 31): the
# test suite on CUDA, the loop's overhead against a bare loop, the bf16 step time, the default
# run's Dice in bf16 and fp32 and its time to the first step, and the recommended recipe on the
# MCPM paper's protocol.
#
# Here, once:   bash benchmarks/gpu_wheels.sh      (the packages that machine lacks, into .whl/)
# Commit, then: device run, carry [".whl"], timeout_s 600, the commit pasted in (that copy of
#               the checkout has no .git, so the results store is told which code it runs):
#                   NOISYSEG_CODE_STATE="<git rev-parse HEAD> clean" bash benchmarks/gpu_session.sh
# Back here:    python benchmarks/store.py --merge <files_at>/results.sqlite
#               (then store.py --compact, leaderboard.py, and commit)
# Two calls instead of one: GPU_SESSION_ONLY="suite overhead", then "bf16 default paper".
# On the CPU, to try the script itself (a few minutes; small steps):
#               GPU_SESSION_DEVICE=cpu GPU_SESSION_SMOKE=1 bash benchmarks/gpu_session.sh /tmp/gs
#
# Each step runs under a time limit cut to what is left of GPU_SESSION_SECONDS (default 480,
# leaving the call's 600 s room for the start and the install), the most valuable first. OUT
# (default $OUT, the device tool's folder, which sends back 8 files at most) gets three, kept
# up to date after every step: summary.txt (one line per step: its exit status and its log's
# last line), logs.tar.gz (every step's whole log) and results.sqlite (the store with the new
# runs). The runs themselves go to a scratch folder.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu-session}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)  # logs and run directories: only the three files above go to OUT
logs=$work/logs
mkdir -p "$logs"
device=${GPU_SESSION_DEVICE:-cuda}
smoke=${GPU_SESSION_SMOKE:-0}
budget=${GPU_SESSION_SECONDS:-480}
only=${GPU_SESSION_ONLY:-}  # e.g. "overhead bf16": only the steps whose names start so
py=${PYTHON:-python3}
begin=$SECONDS
: > "$out/summary.txt"

say() { echo "[$((SECONDS - begin)) s] $*" | tee -a "$out/summary.txt"; }
pack() { tar -czf "$out/logs.tar.gz" -C "$work" logs; }
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
    say "$name: exit $rc$( ((rc == 124 || rc == 137)) && echo ' (time limit)'): $(tail -n 1 "$logs/$name.log")"
    pack
}

if ! git rev-parse --is-inside-work-tree > /dev/null 2>&1 && [ -z "${NOISYSEG_CODE_STATE:-}" ]; then
    say "this copy has no .git: set NOISYSEG_CODE_STATE='<commit> clean' (see the top of $0)"
    exit 2
fi
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
pack

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
    default_size=""
fi
workers=()
"$py" -c "import xdist" 2>/dev/null && [ "$device" = cuda ] && workers=(-n 6)

# 1. the whole suite on CUDA (the CUDA-only tests among it); -n: processes share the one GPU
step suite 240 "$py" -m pytest -q -p no:cacheprovider ${workers[@]+"${workers[@]}"} "${tests[@]}"
# 2. noisyseg's loop against a bare PyTorch loop, default and paper sizes
step overhead 80 "$py" benchmarks/overhead.py --device "$device" "${overhead[@]}"
# 3. a step in bf16 against fp32, the default batch and the paper's
step bf16-b16 35 "$py" benchmarks/step_time.py --device "$device" --precision bf16 "${steps[@]}"
step bf16-b128 35 "$py" benchmarks/step_time.py --device "$device" --precision bf16 --batch 128 \
    "${steps[@]}"
# 4. the default run (noisyseg run, nothing set) in fp32, then bf16: its Dice in each, and the
#    seconds from the run being asked for to its first step (the fp32 run generates the data,
#    the bf16 run finds it cached)
default_run() {  # default_run PRECISION
    "$py" -m noisyseg run --device "$device" --set "train.precision=$1" \
        --set "output.dir=$work/default-$1" $default_size || return
    "$py" - "$work/default-$1/metrics.json" "$1" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"precision={sys.argv[2]} dice={m['dice']:.4f} seconds={m['seconds']:.1f} "
      f"seconds_to_first_step={m['seconds_to_first_step']:.2f}")
EOF
}
export -f default_run  # timeout runs it in a new bash, with these
export py device work default_size
for precision in fp32 bf16; do
    step "default-$precision" 60 bash -c 'default_run "$1"' _ "$precision"
done
# 5. the recommended recipe on the paper protocol, with its reference runs, one at a time
step paper 200 "$py" benchmarks/accuracy.py "${paper[@]}" --rates 0.4 --seeds 0 \
    --methods none finetune_cal clean --runs "$work/paper-runs"
say "done; merge the runs here with: python benchmarks/store.py --merge <files>/results.sqlite"
pack
rm -rf "$work"
