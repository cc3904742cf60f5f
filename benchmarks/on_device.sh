#!/usr/bin/env bash
# The checks of an accelerator in one call, each stage under a time limit
# of its own so a stage that hangs leaves the others' figures, every log written to $OUT (or ./device-out):
#
#   bash benchmarks/on_device.sh            # the GPU tests (-m gpu), bench_gpu.py, bench_dispatch.py on cuda
#   STAGES="tests gpu" bash benchmarks/on_device.sh
#
# Stages (by default env, tests, gpu, dispatch, traced, published, precision, compile and captured; about 10 minutes on an H200): env, tests (pytest -m gpu: every
# test that needs a GPU), gpu (bench_gpu.py: each layer with the recurrences' Triton kernels and step by step), tiles (bench_gpu.py --tiles: the
# recurrence's kernel alone by its tile sizes), auto (bench_gpu.py --throughput: batch_size fixed and "auto"), dispatch (bench_dispatch.py,
# tiny, on cuda), traced (bench_gpu.py with compile="trace" too, without and with its CUDA graph), published (bench_dispatch.py --size published),
# paths and paths200 (bench_dispatch.py --paths trace: intercepted and traced, without and with its CUDA graph, T = 50
# and 200; the cell loop at T = 50 only: its T = 200 program, 41,000 operations, takes 20 s to trace), pathspub (the
# same at published sizes, T = 50), calls (bench_dispatch.py --calls 80: the default, compile="auto" there, over 80 calls
# against compile=False), first (bench_dispatch.py --first: the first call in fresh processes), precision
# (bench_precision.py: what TF32 does, PyTorch and Flax), compile (bench_gpu.py with torch.compile, one size), captured
# (bench_dispatch.py --paths capture: the captured pass run by its plan and as one program replayed as a CUDA graph).
# The device's own Python runs the tree as it is (PYTHONPATH=.): rnnshap needs only torch and numpy.
set -u
out="${OUT:-device-out}"
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
py="${PYTHON:-python3}"
stages="${STAGES:-env tests gpu dispatch traced published precision compile captured}"

stage() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    case " $stages " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS
    echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc $rc in $((SECONDS - start)) s"
}

stage env 30 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; $py -c 'import sys, torch, numpy; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), numpy.__version__, torch.cuda.get_device_name(0))'; $py -m pip list 2>/dev/null | grep -i -E '^(transformers|captum|keras|darts|shap|triton) '"
stage tests 180 "$py" -m pytest -m gpu tests/test_gpu.py tests/recurrent/test_persistent.py tests/captum/test_captum.py tests/test_auto_blocks.py tests/engines/pytorch/test_captured_program.py -q -p no:cacheprovider -rs
stage gpu 200 "$py" benchmarks/bench_gpu.py --repeats 5 --no-peers
stage auto 150 "$py" benchmarks/bench_gpu.py --throughput 1000 --repeats 2
stage tiles 120 "$py" benchmarks/bench_gpu.py --tiles --repeats 5 --only lstm-256-T200 gru-256-T200 rnn-256-T200 lstm-512-T500
stage dispatch 110 "$py" benchmarks/bench_dispatch.py --device cuda --repeats 7 --models lstm gru rnn transformer cell patchtst
stage traced 170 "$py" benchmarks/bench_gpu.py --repeats 5 --compile trace
stage published 80 "$py" benchmarks/bench_dispatch.py --device cuda --size published --repeats 5 --models lstm gru rnn transformer cell patchtst
stage paths 130 "$py" benchmarks/bench_dispatch.py --device cuda --repeats 7 --paths trace --models lstm gru rnn transformer cell patchtst
stage paths200 110 "$py" benchmarks/bench_dispatch.py --device cuda --repeats 7 --paths trace --length 200 --models lstm gru rnn transformer patchtst
stage pathspub 150 "$py" benchmarks/bench_dispatch.py --device cuda --size published --repeats 5 --paths trace --models lstm gru rnn transformer cell patchtst
stage calls 150 "$py" benchmarks/bench_dispatch.py --device cuda --calls 80 --models lstm gru rnn transformer cell patchtst
stage first 150 "$py" benchmarks/bench_dispatch.py --device cuda --first --repeats 5 --models lstm transformer cell patchtst
stage precision 120 "$py" benchmarks/bench_precision.py
stage compile 180 "$py" benchmarks/bench_gpu.py --repeats 5 --compile compile --only lstm-128-T50
stage captured 150 "$py" benchmarks/bench_dispatch.py --device cuda --repeats 7 --paths capture --models lstm gru rnn transformer cell patchtst

for f in "$out"/*.log; do echo; echo "##### $f"; tail -n 40 "$f"; done
