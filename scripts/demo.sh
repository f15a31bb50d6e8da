#!/usr/bin/env bash
# The pipeline end to end on generated demo videos, on any machine (CPU is enough).
# Each step skips work already done, so a rerun after an interruption continues.
#   bash scripts/demo.sh            (what `make demo` runs)
# Outputs: data/demo/ (videos, lists), snap/demo/ (tokenizer, token stores, report).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA=${DEMO_DATA:-data/demo}
SNAP=${DEMO_SNAP:-snap/demo}
SIZE=64; FPS=4
mkdir -p "$SNAP"
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
T0=$(date +%s)

step "1/5 synthetic videos -> $DATA"
if [ ! -f "$DATA/.done" ]; then
  $PY -m video2token.synthetic --out "$DATA" --num-pool 200 --num-train 64 --num-val 64 --size $SIZE --fps 8 --seconds 3 --seed 0
  touch "$DATA/.done"
else echo "already there"; fi

step "2/5 train the small VQ-VAE tokenizer -> $SNAP/tokenizer"
# --resume: continues an interrupted run, and is a no-op for a finished one
$PY -m video2token.train_tokenizer --video-root "$DATA" --anno "$DATA/pretrain_videos.txt" "$DATA/motion_train_videos.txt" \
    --fps 8 --frame-size $SIZE --vocab-size 512 --steps ${DEMO_TOKENIZER_STEPS:-1200} \
    --output "$SNAP/tokenizer" --resume

step "3/5 extract token stores"
for split in pretrain motion_train motion_val; do
  out="$SNAP/tokens/vqvae_demo_${split}_fps${FPS}_hflip0_${SIZE}center${SIZE}"
  names=""; case $split in motion_*) names="--label-names $DATA/labels_motion.txt";; esac
  $PY -m video2token.extract --video-root "$DATA" --anno "$DATA/${split}_videos.txt" --output "$out" $names \
      --fps $FPS --frame-shorter-side $SIZE --crop-size $SIZE --crop-type center \
      --tokenizer vqvae --tokenizer-path "$SNAP/tokenizer" --batch-size 64 --num-workers 2 \
    || { echo "extraction of $split failed"; exit 1; }
done

step "4/5 inspect and visualize"
$PY -m video2token.inspect "$SNAP/tokens/vqvae_demo_motion_val_fps${FPS}_hflip0_${SIZE}center${SIZE}"
first=$($PY -c "from video2token.store import TokenStore; print(TokenStore('$SNAP/tokens/vqvae_demo_motion_val_fps${FPS}_hflip0_${SIZE}center${SIZE}').video_ids[0])")
$PY -m video2token.visualize "$SNAP/tokens/vqvae_demo_motion_val_fps${FPS}_hflip0_${SIZE}center${SIZE}" "$first" --out "$SNAP/reconstruction.png"

step "5/5 pre-train a tiny VIMPAC model (block masking + contrastive) -> $SNAP/pretrain"
TOK="$SNAP/tokens/vqvae_demo_%s_fps${FPS}_hflip0_${SIZE}center${SIZE}"
resume=""; [ -d "$SNAP/pretrain/last" ] && resume="--resume"
if $PY -c "import json,sys; s=json.load(open('$SNAP/pretrain/summary.json')); sys.exit(0 if s['epoch'] >= s['epochs'] else 1)" 2>/dev/null; then
  echo "already pre-trained"
else $PY -m vimpac.pretrain --train-tokens "$(printf "$TOK" pretrain)" --valid-tokens "$(printf "$TOK" motion_val)" \
    --clip-len 5 --frame-size $SIZE --layers 2 --hid-dim 128 --heads 2 --mask-blocks 3 \
    --epochs ${DEMO_PRETRAIN_EPOCHS:-5} --batch-size 32 --bs-per-gpu 32 --lr 1e-3 --warm-up 0.1 --bf16 \
    --num-workers 1 --output "$SNAP/pretrain" $resume
fi

echo; echo "demo finished in $(( $(date +%s) - T0 )) s; pictures in $SNAP/"
