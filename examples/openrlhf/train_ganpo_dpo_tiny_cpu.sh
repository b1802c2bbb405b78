#!/usr/bin/env bash
# GANPO DPO with the real OpenRLHF 0.11.2 CLI on CPU, one process, tiny random Llama: 16 pairs,
# batch 4 in micro-batches of 2, so 4 optimiser steps (OpenRLHF's progress bar counts the 8
# micro-batches), ZeRO-2, a checkpoint every 2 steps, TensorBoard logs in ${OUT}/tb.
# Run from the repository root:  bash examples/openrlhf/train_ganpo_dpo_tiny_cpu.sh [extra flags]
#
# OpenRLHF is GPU-first: on CPU it needs the test-only shims in tests/host_openrlhf/cpu_shims (a
# flash_attn import stub and four CUDA-only calls given CPU equivalents). The first run compiles
# two DeepSpeed C++ ops into TORCH_EXTENSIONS_DIR (minutes, silent: about 2.5 on an idle 2-core
# CPU); later runs reuse them as long as that folder is kept (about 20 s for the whole run).
set -euo pipefail

OUT=${OUT:-outputs/openrlhf-tiny}
python examples/tiny/make_tiny_assets.py --out "${OUT}/assets" --pairs 64

export PYTHONPATH="${PWD}/tests/host_openrlhf/cpu_shims${PYTHONPATH:+:${PYTHONPATH}}"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${HOME}/.cache/ganpo-plugins/torch_extensions/openrlhf}
set -a; . ./offline.env; set +a  # offline, no telemetry
# What torchrun would set for a single process.
export RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=${MASTER_PORT:-29517}

echo "ganpo: training 4 optimiser steps of GANPO DPO with OpenRLHF on CPU; output in ${OUT}"
echo "ganpo: DeepSpeed compiles two C++ ops on first use into ${TORCH_EXTENSIONS_DIR}:" \
   "the first run is silent for minutes (about 2.5 on an idle 2-core CPU); later runs reuse them"
python -m ganpo_openrlhf.train_dpo \
   --model.model_name_or_path "${OUT}/assets/model" \
   --data.dataset "${OUT}/assets/prefs.jsonl" \
   --data.prompt_key prompt \
   --data.input_template $'User: {}\nAssistant: ' \
   --data.max_samples 16 \
   --data.max_len 128 \
   --train.batch_size 4 \
   --train.micro_batch_size 2 \
   --ds.zero_stage 2 \
   --ds.attn_implementation eager \
   --adam.lr 1e-3 \
   --ckpt.output_dir "${OUT}/model" \
   --ckpt.path "${OUT}/ckpt" \
   --ckpt.save_steps 2 \
   --logger.tensorboard_dir "${OUT}/tb" \
   --ganpo.discriminator.d_model 32 \
   --ganpo.discriminator.num_heads 4 \
   --ganpo.discriminator.ffn_size 64 \
   "$@"

echo "regularizer state: ${OUT}/model/ganpo_regularizer.pt, ${OUT}/ckpt/global_step*/ganpo_regularizer.pt"
echo "curves: python -m ganpo_plugins.plot ${OUT}/tb"
