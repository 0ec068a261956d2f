#!/usr/bin/env bash
# A lent GPU's session (issue 12): two calls, one machine, 15 minutes of device time in all.
#
#   train  (carry gpu_data .whl): `gpu_campaign.py train` for $MINUTES (default 5.5) from the
#          shipped model; weights and history to $OUT/run, the log to $OUT/train.log. With
#          SHRINK="--decompressor 0 --stage2 0,1,8 --stage1 0,1,2", the fast decoder instead
#          (`fast_decoder.py`): those blocks of the shipped decoding half, trained alone.
#   checks (carry gpu_checks .whl): the CUDA side of the codec, on the image's own torch:
#          1. a dev clip encoded on CUDA, and its tokens read back on CUDA (`decode --tokens`),
#             both to $OUT, so that the CPU here can check it reads the same indices;
#          2. `infotok bench --device cuda` on the carried dev clips (one router, x264);
#          3. the test suite, 16 workers, cut at $TEST_SECONDS (default 240): the log to $OUT.
#
# Made here: `gpu_campaign.py prepare` (gpu_data/, .whl/) and `gpu_campaign.py prepare-checks`
# (gpu_checks/: PyAV as av.tar.xz, wheels/ for click, rich and pytorch-msssim, and dev/, the dev
# clips' first 64 frames). Not typer: the image's 0.27 serves the CLI, and 0.29's option
# parsing imports pydantic, which the image lacks (2026-12-04: every CLI call failed). Not the
# judges (stlpips-pytorch is a 64 MB wheel): their tests fail there for want of them.
#
# Seen 2026-12-04: the train call took 368 s for MINUTES=5.5 (1,983 steps of 16 windows), the
# machine's start about 50 s more; the suite on 16 workers needs about 3 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:?train or checks}

rm -rf /tmp/site /tmp/cuda.mp4 /tmp/bench /tmp/fast_init.safetensors  # a warm machine keeps files
python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    || { echo "error: no CUDA device: this runs on the lent GPU"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

if [ "$phase" = train ]; then
    df -h /dev/shm | tail -1
    init=infotok_codec/models/infotok-s.safetensors.zst
    extra=()
    if [ -n "${SHRINK:-}" ]; then
        # The fast decoder instead: the shipped model with the decoding blocks SHRINK keeps
        # (fast_decoder.py shrink's options), its encoding half frozen.
        # shellcheck disable=SC2086
        python3 benchmarks/fast_decoder.py shrink --out /tmp/fast_init.safetensors $SHRINK \
            || exit 1
        init=/tmp/fast_init.safetensors
        extra=(--decoder-only)
    fi
    # TRAIN_ARGS: more options for `gpu_campaign.py train`, e.g. run 20's recipe (MODEL.md):
    # TRAIN_ARGS="--decoder-only --msssim-weight 1.0".
    # shellcheck disable=SC2086
    python3 benchmarks/gpu_campaign.py train gpu_data --init "$init" ${extra[@]+"${extra[@]}"} \
        ${TRAIN_ARGS:-} --minutes "${MINUTES:-5.5}" --workers 8 --out "$OUT/run" 2>&1 | tee "$OUT/train.log"
    exit "${PIPESTATUS[0]}"
fi

[ "$phase" = checks ] || { echo "error: unknown phase $phase"; exit 2; }
if ls gpu_checks/wheels/typer* >/dev/null 2>&1; then
    echo "error: gpu_checks/wheels holds typer: the image's own serves (see above)"; exit 2
fi
xz -dc gpu_checks/av.tar.xz | tar -x -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site gpu_checks/wheels/*.whl || exit 1
# The tests read ../shared/data/dev; the device has no ../shared (never replace a real one).
[ -e ../shared ] || { mkdir -p ../shared/data && cp -r gpu_checks/dev ../shared/data/dev; }
failed=0
infotok() { python3 -m infotok_codec "$@"; }
clip=gpu_checks/dev/cotrack_bear.mp4
infotok encode "$clip" "$OUT/cuda.itok" --device cuda --budget 0.8 --quiet --json \
    | tee "$OUT/encode.json" || failed=1
infotok decode "$OUT/cuda.itok" /tmp/cuda.mp4 --tokens "$OUT/cuda_tokens.npz" --device cuda \
    --quiet --json || failed=1
time infotok bench gpu_checks/dev --device cuda --routers elbo --codecs x264 \
    --budgets 0.5,1.0 --frames 32 --metrics psnr,msssim --out /tmp/bench --json \
    > "$OUT/bench.json" || failed=1
tail -c 600 "$OUT/bench.json"
timeout "${TEST_SECONDS:-240}" python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" \
    -n 16 tests > "$OUT/pytest.log" 2>&1
status=$?
echo "pytest exit $status"
tail -n 40 "$OUT/pytest.log"
[ "$status" -eq 0 ] || failed=1
exit "$failed"
