#!/usr/bin/env bash
# GANPO on top of OpenRLHF 0.11.2 DPO for Llama-3-8B (the setting of OpenRLHF's own
# examples/scripts/train_dpo_llama.sh, written with 0.11's dotted flags), on one 8-GPU node.
#
# Every flag before "# GANPO" is OpenRLHF's own and means what it means there; the launcher only
# takes the --ganpo.* flags out, validates them before any model loads, and attaches the regularizer.
# Not available with GANPO: --ds.packing_samples and --ds.ring_attn_size > 1 (the launcher refuses
# them: the discriminators need one unpacked hidden-state row per sequence).
set -euo pipefail
set -x

OUT=${OUT:-./checkpoint/llama3-8b-ganpo-dpo}

deepspeed --module ganpo_openrlhf.train_dpo \
   --ckpt.output_dir "${OUT}" \
   --ckpt.path "${OUT}/ckpt" \
   --ckpt.save_steps 200 \
   --ckpt.load_enable \
   --logger.logging_steps 1 \
   --eval.steps -1 \
   --train.batch_size 256 \
   --train.micro_batch_size 1 \
   --train.max_epochs 1 \
   --model.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
   --model.beta 0.1 \
   --model.gradient_checkpointing_enable \
   --ds.param_dtype bf16 \
   --ds.zero_stage 3 \
   --ds.attn_implementation flash_attention_2 \
   --adam.lr 5e-7 \
   --data.dataset OpenRLHF/preference_dataset_mixture2_and_safe_pku \
   --data.apply_chat_template \
   --data.chosen_key chosen \
   --data.rejected_key rejected \
   --data.max_len 8192 \
   `# GANPO (arXiv 2601.22083): these spell out the defaults (mask response is this project's; the public release ran on every position, mask none)` \
   --ganpo.weight 1.0 \
   --ganpo.mask response \
   --ganpo.discriminator.kind transformer \
   --ganpo.discriminator.d_model 512 \
   --ganpo.optimizer.lr_ratio 0.5 \
   "$@"
   # Base loss: OpenRLHF's DPO by default (--model.ipo_enable, --model.label_smoothing work as usual),
   # or any GPO kind / SimPO instead:
   #   --ganpo.preference_loss hinge        (also: squared, exponential, truncated_quadratic, savage)
   #   --ganpo.preference_loss simpo --ganpo.simpo_gamma 0.5 --model.beta 2.0
   # Logging: --logger.wandb.key ... or --logger.tensorboard_dir ./tb  (metrics under train/ganpo/*)
