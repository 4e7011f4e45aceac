#!/usr/bin/env bash
# the smollm2-glue6 fine-tune (resumable: re-run this script to continue)
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=2 exec nice -n 8 .venv/bin/taskprune finetune --model smollm2-135m-instruct \
  --out-dir runs/smollm2-glue6 --data-dir ../shared/data --steps 900 --batch-size 16 --lr 5e-4 \
  --warmup-steps 30 --max-length 128 --task-max-length rte=256 cb=256 boolq=256 qnli=192 --mixing-cap 5000 \
  --eval-every 300 --eval-examples 100 --save-every 10 --log-every 5 --seed 0 --dtype bfloat16 --threads 2 \
  --lora-rank 16 --autocast bfloat16 --bucket 8
