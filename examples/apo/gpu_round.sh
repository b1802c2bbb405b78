#!/usr/bin/env bash
# APO rounds (arXiv 2311.08045) on one multi-GPU node with TRL as the host, paper settings:
# k = 4 samples per prompt at temperature 1.2, top-p 1.0, <= 256 new tokens; L_RM with
# c_human = 1, c_apo = 0.1; rejection sampling of the best non-empty sample; SFT on it.
#
#   POLICY=Qwen/Qwen2.5-1.5B-Instruct RM=outputs/rm_base DATA=data bash examples/apo/gpu_round.sh
#
# Inputs (jsonl, one object per line):
#   $DATA/prompts.jsonl  {"prompt": ..., "golden": ...}       prompts with a golden response
#   $DATA/human.jsonl    {"prompt": ..., "chosen": ..., "rejected": ...}   human preference pairs
# $RM is a sequence-classification reward model already trained on $DATA/human.jsonl (the
# paper's "base RM"; e.g. `trl reward --model_name_or_path $POLICY --dataset_name <dir of human>`).
# Each round writes $OUT/round<r>/{samples,scored}.jsonl, rm_data/, rm/, sft_data/, policy/ and
# starts the next round from that policy and reward model. Re-running resumes `sample`/`score`.
# Other hosts for the two training steps: see docs/apo.md (Axolotl, OpenRLHF).
set -euo pipefail

POLICY=${POLICY:?set POLICY to the causal LM to align}
RM=${RM:?set RM to the base reward model}
DATA=${DATA:-data}
OUT=${OUT:-outputs/apo}
ROUNDS=${ROUNDS:-3}
K=${K:-4}
APO="python -m ganpo_plugins.apo"   # or the installed `ganpo-apo`

for r in $(seq 1 "$ROUNDS"); do
  W="$OUT/round$r"

  # 1. k samples per prompt from the current policy (bf16 on GPU, resumable)
  $APO sample --model "$POLICY" --prompts "$DATA/prompts.jsonl" --out "$W/samples.jsonl" \
    --k "$K" --temperature 1.2 --top-p 1.0 --max-new-tokens 256 --batch-size 32

  # 2. APO pairs (golden preferred over each sample) + the human pairs, with is_apo flags
  $APO pairs --samples "$W/samples.jsonl" --golden "$DATA/prompts.jsonl" --golden-field golden \
    --human "$DATA/human.jsonl" --out "$W/rm_data/train.jsonl"

  # 3. reward model: TRL's RewardTrainer with L_RM = c_human BT(human) + (c_apo / k) BT(APO)
  #    (the release fine-tunes the base RM for one epoch at lr 1e-7, batch 64, on LLaMA-7B)
  accelerate launch -m ganpo_trl.reward \
    --model_name_or_path "$RM" --dataset_name "$W/rm_data" --output_dir "$W/rm" \
    --apo_c_human 1.0 --apo_c_apo 0.1 --apo_samples_per_prompt "$K" \
    --num_train_epochs 1 --learning_rate 1e-7 --warmup_steps 100 --weight_decay 0.0 \
    --per_device_train_batch_size 2 --gradient_accumulation_steps 4 --max_length 1024 \
    --bf16 true --gradient_checkpointing true --save_strategy no --report_to none

  # 4. score every sample with the new reward model (reward at the last response token)
  $APO score --reward-model "$W/rm" --samples "$W/samples.jsonl" --out "$W/scored.jsonl" --batch-size 16

  # 5. rejection sampling: the best non-empty sample per prompt
  $APO select --scored "$W/scored.jsonl" --out "$W/sft_data/train.jsonl" --format prompt-completion

  # 6. the host's own SFT on it (loss on the completion only)
  trl sft --model_name_or_path "$POLICY" --dataset_name "$W/sft_data" --output_dir "$W/policy" \
    --num_train_epochs 1 --learning_rate 1e-5 --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 4 --max_length 2048 --bf16 true --save_strategy no --report_to none

  POLICY="$W/policy"
  RM="$W/rm"
done
echo "aligned policy: $POLICY   reward model: $RM"
