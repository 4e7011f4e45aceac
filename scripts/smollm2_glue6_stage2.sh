#!/usr/bin/env bash
# smollm2-glue6, stage 2 (resumable: re-run this script to continue): stage 1's adapter (runs/smollm2-glue6/final,
# from scripts/smollm2_glue6_finetune.sh; the committed stage-1 adapter is models/smollm2-glue6 at commit 5212458)
# trained further on a flatter mixture (cap 500: CB, RTE and MRPC get a larger share), as minilm-glue6's second
# stage. Its final/ adapter is what models/smollm2-glue6 holds.
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=2 exec nice -n 8 .venv/bin/taskprune finetune --model smollm2-135m-instruct \
  --init-adapter runs/smollm2-glue6/final --out-dir runs/smollm2-glue6-stage2 --data-dir ../shared/data \
  --steps 400 --batch-size 16 --lr 2e-4 --warmup-steps 20 --max-length 128 \
  --task-max-length rte=256 cb=256 boolq=256 qnli=192 --mixing-cap 500 --eval-every 200 --eval-examples 100 \
  --save-every 10 --log-every 5 --seed 1 --dtype bfloat16 --threads 2 --autocast bfloat16 --bucket 8
