#!/usr/bin/env bash
# smollm2-glue6, stage 2 (resumable: re-run this script to continue): the committed stage-1 adapter trained further
# on a flatter mixture (cap 500: CB, RTE and MRPC get a larger share), as minilm-glue6's second stage.
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=2 exec nice -n 8 .venv/bin/taskprune finetune --model smollm2-135m-instruct \
  --init-adapter models/smollm2-glue6 --out-dir runs/smollm2-glue6-stage2 --data-dir ../shared/data \
  --steps 400 --batch-size 16 --lr 2e-4 --warmup-steps 20 --max-length 128 \
  --task-max-length rte=256 cb=256 boolq=256 qnli=192 --mixing-cap 500 --eval-every 200 --eval-examples 100 \
  --save-every 10 --log-every 5 --seed 1 --dtype bfloat16 --threads 2 --autocast bfloat16 --bucket 8
