#!/usr/bin/env bash
# The full recipe of the tiny Stable Audio 3 model shipped as `pipelines/sa3-tiny/` (issue 7; results: training_examples/README.md, stop 29).
#
#   1. synthetic train set (NUM_TRAIN clips) and held-out set (NUM_HELDOUT clips);
#   2. word tokenizer over the caption words + tiny frozen random T5Gemma encoder + tiny SAME + tiny DiT -> `init/`;
#   3. train_autoencoder.py (full) -> `same/`, then decoder-only with the level loss -> `same_decoder/`; the pipeline
#      rebuilt with that SAME -> `init_trained_same/`;
#   4. pre_encode.py (latents + text states) -> `latents/`;
#   5. train_flow.py (full, base) -> `base/`;
#   6. train_distill.py -> `distilled/`;  7. train_adversarial.py (CLAP weight 0: no tiny CLAP exists) -> `post/`;
#   8. transformers stored in float16; evaluate.py -> `eval.json`;  9. model cards (`base/README.md`, `post/README.md`) and, with SHIP_DIR set and the
#      weights within 25 MB, a copy into SHIP_DIR (`SHIP_DIR/` = post-trained,
#      `SHIP_DIR/base/` = base).
#
# Every stage records its command and wall time in RUN_DIR/stages.tsv and is skipped when RUN_DIR/<stage>.done exists;
# training stages pass `--resume_from_checkpoint latest`, so re-running the script resumes an interrupted run.
# STOP_AFTER=<stage> ends the run once that stage is done (e.g. STOP_AFTER=train_flow, to try distillation settings on
# the base model); running again without it goes on from there.
#
# Smoke run (minutes on CPU):
#   RUN_DIR=/work/tiny_run/smoke NUM_TRAIN=16 NUM_HELDOUT=4 FLOW_STEPS=2 DISTILL_STEPS=2 ADV_STEPS=2 \
#       EVAL_PROMPTS=2 EVAL_BASE_STEPS=2 bash training_examples/make_tiny_model.sh
#   (add SAME_INIT=pca SAME_LAYERS=1 SAME_DECODER_LAYERS=1 AE_STEPS=2 DEC_STEPS=2 to smoke-test the SAME stages)
# Real run:
#   RUN_DIR=/work/tiny_run/real SHIP_DIR=pipelines/sa3-tiny bash training_examples/make_tiny_model.sh
set -euo pipefail

# ----------------------------------------------------------------------------------------------- settings
RUN_DIR=${RUN_DIR:-/work/tiny_run/real}
SHIP_DIR=${SHIP_DIR:-}                        # empty: never copy into the repo
STOP_AFTER=${STOP_AFTER:-}                    # a stage name (e.g. pre_encode): exit once it is done
SEED=${SEED:-0}
NUM_TRAIN=${NUM_TRAIN:-2000}
NUM_HELDOUT=${NUM_HELDOUT:-200}
PHASE=${PHASE:-zero}                   # oscillator start phases of the set: random, or zero (each tone, chord and chirp
                                       # a fixed function of its attributes; training_examples/README, stop 20)
LEVEL=${LEVEL:-rms}                    # what a clip's loudness sets: peak (0.1 / 0.8), or rms (every sound type of a
                                       # loudness at one energy, a 10 dB range; training_examples/README, stop 22)
TUNING=${TUNING:-grid}                 # oscillator tuning of tones and chords: equal, or grid (multiples of 44100 /
                                       # 4096 Hz: with PHASE=zero a steady sound is the same in every latent frame of
                                       # the spectral SAME; training_examples/README, stop 25)
TIMING=${TIMING:-grid}                 # drums and chirps: exact (the captioned BPM; a continuous sweep), or grid (a
                                       # two-beat drum bar of whole 4096-sample frames, at most 2.6 % off the captioned
                                       # BPM; a chirp as one grid-tuned note per frame): both then repeat or step
                                       # exactly in the latent frames (training_examples/README, stop 27)
TYPE_WEIGHTS=${TYPE_WEIGHTS:-}         # the train set's sound-type frequencies in place of synthetic_sounds' defaults,
                                       # e.g. "drums=0.35 chirp=0.35 tone=0.15 chord=0.075 noise=0.075" (the held-out
                                       # set and the evaluation keep the defaults)
# Model sizes (see diffusers_sa3.training.tiny_components).
TEXT_WIDTH=${TEXT_WIDTH:-64}
LATENT_CHANNELS=${LATENT_CHANNELS:-64}
SAME_HEADS=${SAME_HEADS:-4}            # width 4 x 32 = 128
SAME_PATCH=${SAME_PATCH:-1024}
SAME_STRIDE=${SAME_STRIDE:-1}          # one 1,024-sample patch per latent (43 latents a second; the released SAME has
                                       # 16 patches per latent, which the tiny one could not learn on a CPU budget:
                                       # training_examples/README)
SAME_KERNEL=${SAME_KERNEL:-1}          # decoder output convolution kernel (1: a third of the weights of 3)
SAME_MLP_RATIO=${SAME_MLP_RATIO:-3}    # feed-forward width of the SAME blocks over the model width
SAME_INIT=${SAME_INIT:-spectral}       # spectral: a constructed spectral gain-shape SAME with a noise generator, whose
                                       # latents are steady for steady grid-tuned sounds (tiny_components.
                                       # build_spectral_same; its geometry and latent width are its own, the SAME_* /
                                       # LATENT_CHANNELS sizes below do not apply); pca: the per-channel principal-
                                       # component coder of the training frames (pca_initialise_same); gain_shape: those
                                       # coefficients over their RMS per frame and channel, log RMS as two more latents
                                       # (gain_shape_initialise_same); random: build_tiny_same's init
SAME_FROM=${SAME_FROM:-}               # a SAME folder (e.g. pipelines/sa3-tiny/vae) used as the run's SAME instead of
                                       # the one built from this run's clips (a continuation, FLOW_INIT, on a set whose
                                       # clips differ from its own: the SAME must stay the one its DiT learned)
SAME_LAYERS=${SAME_LAYERS:-3}         # encoder blocks: gain_shape needs 3 (pca 1; further blocks start as identities)
SAME_DECODER_LAYERS=${SAME_DECODER_LAYERS:-2}  # gain_shape needs 2 (pca 1)
DIT_LAYERS=${DIT_LAYERS:-6}
DIT_HEADS=${DIT_HEADS:-2}
MAX_TEXT_LENGTH=${MAX_TEXT_LENGTH:-32}
# Step counts and batch sizes.
# Stop 25 ran these defaults in 5,030 s of stages on a 2-core CPU, then FLOW_INIT=<that run>/base FLOW_STEPS=1500
# FLOW_LR=1e-3 (2,282 s more); stop 26 continued that for FLOW_STEPS=5000 FLOW_LR=1e-3 FLOW_WARMUP=100
# FLOW_LR_SCHEDULER=cosine with DISTILL_GUIDANCE=2 BASE_GUIDANCE=2 (5,442 s more); stop 27 continued that on the
# TIMING=grid set with SAME_FROM=pipelines/sa3-tiny/vae for the same flow settings with DISTILL_GUIDANCE=1.5
# BASE_GUIDANCE=1.5 (5,598 s more); stop 28 continued that for FLOW_STEPS=6000 with FLOW_SAMPLER=log_snr and
# TYPE_WEIGHTS="drums=0.35 chirp=0.35 tone=0.15 chord=0.075 noise=0.075" (5,684 s more): the shipped
# pipelines/sa3-tiny. Stop 23 ran the gain-shape recipe in 4,205 s, stop 13 the earlier from-scratch SAME recipe in
# 7,510 s (training_examples/README.md has each stage).
AE_STEPS=${AE_STEPS:-0}                 # full SAME training from the init (0: none; see README for why)
AE_BATCH=${AE_BATCH:-8}
AE_LR=${AE_LR:-1e-3}
AE_LR_SCHEDULER=${AE_LR_SCHEDULER:-constant}  # a diffusers `get_scheduler` name (cosine: decays to 0 at AE_STEPS)
AE_WARMUP=${AE_WARMUP:-0}
AE_ADV_START=${AE_ADV_START:-1000000}   # no adversarial phase by default: it needs far more steps than a CPU run
AE_SEGMENT=${AE_SEGMENT:-1.0}
AE_LAMBDA_ALIGN=${AE_LAMBDA_ALIGN:-0}   # the diffusion-alignment loss delays latent use past a CPU budget (README)
AE_LAMBDA_WAVE=${AE_LAMBDA_WAVE:-1}     # waveform L1: the spectral losses alone leave tones and stereo unreconstructed
AE_LAMBDA_STFT=${AE_LAMBDA_STFT:-1}     # multi-resolution log-STFT loss; 0 with AE_LAMBDA_MEL=0 and AE_LAMBDA_LEVEL=1:
AE_LAMBDA_MEL=${AE_LAMBDA_MEL:-1}       # the first from-scratch SAME that reconstructs tones and stereo (one 4,096-
AE_LAMBDA_LEVEL=${AE_LAMBDA_LEVEL:-0}   # sample patch per latent; with the log-spectral terms its decoder ignored the
                                        # latents, and each step took 8 x as long: training_examples/README, stop 32)
AE_LAMBDA_CHROMA=${AE_LAMBDA_CHROMA:-0.1}  # the chroma and interaural-level regression heads (train_autoencoder.py's
AE_LAMBDA_ILD=${AE_LAMBDA_ILD:-0.1}        # defaults; stop 32 ran without them)
AE_ALIGN_CROPS=${AE_ALIGN_CROPS:-0}     # 1: train_autoencoder.py --align_crops (crops start on whole latent frames)
DEC_STEPS=${DEC_STEPS:-0}               # decoder-only fine-tune (level loss) of the SAME (0: none; 100 steps from
                                        # the PCA init lowered every score: training_examples/README)
DEC_LR=${DEC_LR:-1e-4}
DEC_LAMBDA_LEVEL=${DEC_LAMBDA_LEVEL:-2}
FLOW_STEPS=${FLOW_STEPS:-4000}
FLOW_INIT=${FLOW_INIT:-}                 # empty: train_flow starts from init_trained_same/'s fresh DiT; else the base/
                                         # folder of an earlier run of this recipe (its SAME, text encoder and tokenizer
                                         # must be the files this run builds: checked), whose DiT train_flow continues
                                         # for FLOW_STEPS more steps (a fresh optimizer, warm-up and EMA). It is copied
                                         # to RUN_DIR/flow_init first, with its model card (the earlier commands).
FLOW_BATCH=${FLOW_BATCH:-16}
FLOW_LR=${FLOW_LR:-2e-3}
FLOW_WARMUP=${FLOW_WARMUP:-200}
FLOW_LR_SCHEDULER=${FLOW_LR_SCHEDULER:-constant_with_warmup}  # a diffusers `get_scheduler` name (cosine: decays to 0
                                                              # at FLOW_STEPS)
FLOW_SAMPLER=${FLOW_SAMPLER:-uniform}    # training noise levels: the official wrapper's default; the LoRA script's
                                         # trunc_logit_normal puts 1 % of them below t = 0.15, where quiet clips are
                                         # decided (training_examples/README, stop 19); log_snr (57 % above t = 0.8)
                                         # with TYPE_WEIGHTS taught a continued DiT the drums' beat (stop 28)
EMA_DECAY=${EMA_DECAY:-0.998}
DISTILL_STEPS=${DISTILL_STEPS:-150}
DISTILL_BATCH=${DISTILL_BATCH:-8}
DISTILL_TEACHER_STEPS=${DISTILL_TEACHER_STEPS:-10}
DISTILL_ONE_STEP=${DISTILL_ONE_STEP:-0}  # train_distill.py --one_step_probability: the share of student inputs that
                                         # are the initial noise (t = 1), the rest uniform over the teacher's states
DISTILL_GUIDANCE=${DISTILL_GUIDANCE:-1.5} # the teacher's CFG scale (train_distill.py's default, the official value,
                                          # is 5; on validation prompts 1.5 was the best of 1.5 / 2 / 3 for the stop-27
                                          # base model and gave a better post-trained one than 2: training_examples/
                                          # README, stops 26 and 27; stop 29's base was best at 2: it ran with 2)
BASE_GUIDANCE=${BASE_GUIDANCE:-1.5}       # written into base/model_index.json as its default CFG scale (empty: the
                                          # official 7; choose it on validation prompts, evaluate.py --seed 1)
ADV_STEPS=${ADV_STEPS:-100}
ADV_BATCH=${ADV_BATCH:-8}
ADV_LR=${ADV_LR:-1e-5}                  # train_adversarial.py --learning_rate (the generator's)
ADV_D_LR=${ADV_D_LR:-1e-5}              # --discriminator_learning_rate (stop 31 shipped 3e-6 / 3e-5: the generator
                                        # moves less, and kept more of the distilled model's sound types)
ADV_CONTRASTIVE=${ADV_CONTRASTIVE:-1}   # --lambda_contrastive (1, the script's default and ARC's; 0, realness alone,
                                        # kept the sound types but lost a tenth of the loudness prompts, stop 31)
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-250}
EVAL_PROMPTS=${EVAL_PROMPTS:-96}         # held-out prompts of the evaluation (24 moved the type accuracy by up to 8
                                          # points with the prompts' seed: 2 prompts; stop 31)
EVAL_BASE_STEPS=${EVAL_BASE_STEPS:-50}
if [[ "$SAME_INIT" == gain_shape || "$SAME_INIT" == spectral ]] && ((AE_STEPS > 0 || DEC_STEPS > 0)); then
    # The constructions' weights (exact squares and products, DyT norms kept linear by 1 / alpha gains of 1e4 and
    # more) do not survive gradient steps at these rates: 2 + 2 steps took the gain-shape SAME's held-out SNR from
    # 7 dB to -166 dB.
    echo "[make_tiny_model] AE_STEPS=$AE_STEPS and DEC_STEPS=$DEC_STEPS must be 0 with SAME_INIT=$SAME_INIT (it is" \
        "built, not trained: training_examples/README, stops 23 and 25); set SAME_INIT=pca or random to train the" \
        "SAME." >&2
    exit 2
fi
if [[ -n "$SAME_FROM" ]]; then
    if ((AE_STEPS > 0 || DEC_STEPS > 0)); then
        echo "[make_tiny_model] SAME_FROM=$SAME_FROM takes an existing SAME; AE_STEPS and DEC_STEPS must then be 0," \
            "got $AE_STEPS and $DEC_STEPS." >&2
        exit 2
    fi
    if [[ ! -f "$SAME_FROM/config.json" ]]; then
        echo "[make_tiny_model] SAME_FROM=$SAME_FROM is not a SAME folder (no config.json); give a pipeline's vae/" \
            "folder, e.g. pipelines/sa3-tiny/vae." >&2
        exit 2
    fi
    SAME_FROM=$(cd "$SAME_FROM" && pwd)   # the stages run from the repository root
fi
# The SAME's and the adversarial stage's rates and loss weights, checked before anything is written (a typo would
# otherwise only fail after the stages before them).
for setting in "ADV_LR=$ADV_LR=positive" "ADV_D_LR=$ADV_D_LR=positive" "ADV_CONTRASTIVE=$ADV_CONTRASTIVE=nonnegative" \
    "AE_LR=$AE_LR=positive" "AE_LAMBDA_WAVE=$AE_LAMBDA_WAVE=nonnegative" "AE_LAMBDA_STFT=$AE_LAMBDA_STFT=nonnegative" \
    "AE_LAMBDA_MEL=$AE_LAMBDA_MEL=nonnegative" "AE_LAMBDA_LEVEL=$AE_LAMBDA_LEVEL=nonnegative" \
    "AE_LAMBDA_CHROMA=$AE_LAMBDA_CHROMA=nonnegative" "AE_LAMBDA_ILD=$AE_LAMBDA_ILD=nonnegative"; do
    IFS== read -r name value rule <<<"$setting"
    if ! python -c 'import math, sys
v = float(sys.argv[1])
sys.exit(0 if math.isfinite(v) and (v > 0 if sys.argv[2] == "positive" else v >= 0) else 1)' "$value" "$rule" \
        2>/dev/null; then
        echo "[make_tiny_model] $name=$value must be a finite number $([[ $rule == positive ]] && echo "> 0" ||
            echo ">= 0"), e.g. $name=$([[ $rule == nonnegative ]] && echo 1 || echo 1e-5)." >&2
        exit 2
    fi
done
if [[ "$AE_ALIGN_CROPS" != 0 && "$AE_ALIGN_CROPS" != 1 ]]; then
    echo "[make_tiny_model] AE_ALIGN_CROPS=$AE_ALIGN_CROPS must be 0 or 1 (1: the SAME's crops start on whole latent" \
        "frames), e.g. AE_ALIGN_CROPS=1." >&2
    exit 2
fi
AE_CROP_ARGS=()
[[ "$AE_ALIGN_CROPS" == 1 ]] && AE_CROP_ARGS=(--align_crops)
TYPE_WEIGHT_ARGS=()
if [[ -n "$TYPE_WEIGHTS" ]]; then
    read -r -a TYPE_WEIGHT_ARGS <<<"--type_weights $TYPE_WEIGHTS"
    # Checked here with the parser synthetic_sounds.py uses (parse_type_weights), so that a typo fails before anything is written.
    if ! error=$(python -c 'import sys; from diffusers_sa3.training.synthetic_sounds import parse_type_weights as p
try:
    p(sys.argv[1:])
except ValueError as error:
    sys.exit(str(error))' "${TYPE_WEIGHT_ARGS[@]:1}" 2>&1); then
        echo "[make_tiny_model] TYPE_WEIGHTS=\"$TYPE_WEIGHTS\": $error" >&2
        exit 2
    fi
fi
# Every `stage NAME ...` call of this file, in order.
mapfile -t STAGE_NAMES < <(sed -nE 's/^ *stage ([a-z_]+) .*/\1/p' "${BASH_SOURCE[0]}")
if [[ -n "$STOP_AFTER" && " ${STAGE_NAMES[*]} " != *" $STOP_AFTER "* ]]; then
    echo "[make_tiny_model] STOP_AFTER=$STOP_AFTER is not a stage of this recipe; use one of: ${STAGE_NAMES[*]}" >&2
    exit 2
fi
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then DEVICE_FLAGS=(); else
    DEVICE_FLAGS=(--cpu); fi
LAUNCH=(python -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no
    --dynamo_backend no "${DEVICE_FLAGS[@]}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
mkdir -p "$RUN_DIR"
STAGES="$RUN_DIR/stages.tsv"

# stage NAME COMMAND...: runs COMMAND unless RUN_DIR/NAME.done exists; logs it to RUN_DIR/NAME.log and its wall
# time to RUN_DIR/stages.tsv (name, seconds, command).
stage() {
    local name=$1
    shift
    if [[ -f "$RUN_DIR/$name.done" ]]; then
        echo "[make_tiny_model] $name: done already, skipped"
        stop_if_last "$name"
        return
    fi
    echo "[make_tiny_model] $name: $*"
    # The wall time counts from the stage's first start, so a stage interrupted and resumed reports its whole time.
    [[ -f "$RUN_DIR/$name.start" ]] || date +%s >"$RUN_DIR/$name.start"
    "$@" >>"$RUN_DIR/$name.log" 2>&1 || {
        echo "[make_tiny_model] $name failed; see $RUN_DIR/$name.log"
        exit 1
    }
    local command
    command=$(printf '%q ' "$@")
    printf '%s\t%s\t%s\n' "$name" "$(($(date +%s) - $(cat "$RUN_DIR/$name.start")))" "${command% }" >>"$STAGES"
    touch "$RUN_DIR/$name.done"
    stop_if_last "$name"
}
stop_if_last() {
    if [[ "$1" == "$STOP_AFTER" ]]; then
        echo "[make_tiny_model] stopped after $1 (STOP_AFTER); run again without it to go on"
        exit 0
    fi
}

# ----------------------------------------------------------------------------------------------- 1. data
stage data_train python training_examples/synthetic_sounds.py --output_dir "$RUN_DIR/data/train" \
    --num_examples "$NUM_TRAIN" --split train --seed "$SEED" --phase "$PHASE" --level "$LEVEL" --tuning "$TUNING" \
    --timing "$TIMING" "${TYPE_WEIGHT_ARGS[@]}"
stage data_heldout python training_examples/synthetic_sounds.py --output_dir "$RUN_DIR/data/heldout" \
    --num_examples "$NUM_HELDOUT" --split heldout --seed "$((SEED + 1))" --phase "$PHASE" --level "$LEVEL" \
    --tuning "$TUNING" --timing "$TIMING"

# ----------------------------------------------------------------------------------------------- 2. components
SAME_SIZE_FLAGS=(--latent_channels "$LATENT_CHANNELS" --same_heads "$SAME_HEADS" --same_layers "$SAME_LAYERS"
    --same_decoder_layers "$SAME_DECODER_LAYERS" --same_patch_size "$SAME_PATCH" --same_resampling_stride "$SAME_STRIDE"
    --same_decoder_kernel_size "$SAME_KERNEL" --same_mlp_ratio "$SAME_MLP_RATIO")
[[ "$SAME_INIT" == spectral ]] && SAME_SIZE_FLAGS=()   # the construction sets them
stage build_init python -m diffusers_sa3.training.tiny_components init --train_data_dir "$RUN_DIR/data/train" \
    --output_dir "$RUN_DIR/init" --text_width "$TEXT_WIDTH" "${SAME_SIZE_FLAGS[@]}" --same_init "$SAME_INIT" \
    --dit_layers "$DIT_LAYERS" --dit_heads "$DIT_HEADS" \
    --max_text_length "$MAX_TEXT_LENGTH" --seed "$SEED"
if [[ "$SAME_INIT" == spectral ]]; then
    # Its analysis and synthesis matrices in float16 (the size budget) before anything is encoded with it, so that
    # the DiT trains on, and the evaluation scores, the SAME that ships.
    stage half_vae python -m diffusers_sa3.training.tiny_components half-vae --pipeline "$RUN_DIR/init"
fi

# ----------------------------------------------------------------------------------------------- 3. SAME
SAME_DIR="$RUN_DIR/init/vae"
if ((AE_STEPS > 0)); then
SAME_DIR="$RUN_DIR/same"
stage train_autoencoder "${LAUNCH[@]}" training_examples/train_autoencoder.py \
    --pretrained_model_name_or_path "$RUN_DIR/init" --subfolder vae --train_data_dir "$RUN_DIR/data/train" \
    --output_dir "$RUN_DIR/same" --training_mode full --max_train_steps "$AE_STEPS" --train_batch_size "$AE_BATCH" \
    --learning_rate "$AE_LR" --discriminator_learning_rate "$AE_LR" --lr_scheduler "$AE_LR_SCHEDULER" \
    --lr_warmup_steps "$AE_WARMUP" --adversarial_start_step "$AE_ADV_START" \
    --segment_seconds "$AE_SEGMENT" --stft_fft_sizes 2048 512 128 --mel_fft_sizes 2048 512 --mel_bins 80 40 \
    --lambda_contrast 0 --lambda_align "$AE_LAMBDA_ALIGN" --lambda_wave "$AE_LAMBDA_WAVE" --lambda_stft "$AE_LAMBDA_STFT" \
    --lambda_mel "$AE_LAMBDA_MEL" --lambda_level "$AE_LAMBDA_LEVEL" --lambda_chroma "$AE_LAMBDA_CHROMA" \
    --lambda_ild "$AE_LAMBDA_ILD" "${AE_CROP_ARGS[@]}" \
    --checkpointing_steps "$CHECKPOINT_EVERY" --checkpoints_total_limit 2 \
    --validation_steps 0 --report_to none --seed "$SEED" --loss_log "$RUN_DIR/same_loss.jsonl" \
    --resume_from_checkpoint latest
fi
# Decoder-only fine-tune with the per-channel level loss: the spectral losses alone leave the tiny decoder's output
# too quiet and nearly mono (training_examples/README); the encoder and so the latents stay exactly as trained.
if ((DEC_STEPS > 0)); then
stage finetune_decoder "${LAUNCH[@]}" training_examples/train_autoencoder.py \
    --pretrained_model_name_or_path "$SAME_DIR" --train_data_dir "$RUN_DIR/data/train" \
    --output_dir "$RUN_DIR/same_decoder" --training_mode decoder_only --max_train_steps "$DEC_STEPS" \
    --train_batch_size "$AE_BATCH" --learning_rate "$DEC_LR" --adversarial_start_step "$AE_ADV_START" \
    --segment_seconds "$AE_SEGMENT" --stft_fft_sizes 2048 512 128 --mel_fft_sizes 2048 512 --mel_bins 80 40 \
    --lambda_level "$DEC_LAMBDA_LEVEL" --lambda_wave "$AE_LAMBDA_WAVE" --checkpointing_steps "$CHECKPOINT_EVERY" --checkpoints_total_limit 2 \
    --validation_steps 0 --report_to none --seed "$SEED" --loss_log "$RUN_DIR/same_decoder_loss.jsonl" \
    --resume_from_checkpoint latest
SAME_DIR="$RUN_DIR/same_decoder"
fi
[[ -n "$SAME_FROM" ]] && SAME_DIR="$SAME_FROM"
stage build_trained_same python -m diffusers_sa3.training.tiny_components swap-vae --pipeline "$RUN_DIR/init" \
    --vae "$SAME_DIR" --output_dir "$RUN_DIR/init_trained_same"
# Every saved pipeline writes its SAME back in float32: the spectral SAME is stored again with `half-vae` in each
# folder that is used or shipped (the same values, so the same bytes in all of them). A SAME trained by this run from
# SAME_INIT=random is rounded whole to float16 (`--all_weights`: in float32 it alone would exceed the size budget),
# here, before anything is encoded with it, so that the DiT trains on the SAME that ships. (The pca and gain_shape
# constructions stay float32: their fitted functions need the precision.)
HALF_VAE=0
HALF_VAE_ARGS=()
if [[ "$SAME_INIT" == spectral ]]; then
    HALF_VAE=1
elif [[ "$SAME_INIT" == random && -z "$SAME_FROM" ]]; then
    HALF_VAE=1
    HALF_VAE_ARGS=(--all_weights)
fi
if ((HALF_VAE)); then
    stage half_vae_trained_same python -m diffusers_sa3.training.tiny_components half-vae "${HALF_VAE_ARGS[@]}" \
        --pipeline "$RUN_DIR/init_trained_same"
fi

FLOW_FROM="$RUN_DIR/init_trained_same"
if [[ -n "$FLOW_INIT" ]]; then
    FLOW_FROM="$RUN_DIR/flow_init"
    if [[ ! -d "$FLOW_FROM" ]]; then
        # A copy, so that shipping this run over FLOW_INIT (e.g. pipelines/sa3-tiny/base) keeps the recorded path real.
        rm -rf "$FLOW_FROM.partial"
        cp -r "$FLOW_INIT" "$FLOW_FROM.partial"
        git -C "$REPO" log -1 --format=%H -- "$FLOW_INIT" >"$FLOW_FROM.partial/SOURCE_COMMIT" 2>/dev/null || true
        echo "$FLOW_INIT" >"$FLOW_FROM.partial/SOURCE_PATH"
        mv "$FLOW_FROM.partial" "$FLOW_FROM"
    fi
    python -m diffusers_sa3.training.tiny_components check-frozen --pipeline "$FLOW_FROM" \
        --reference "$RUN_DIR/init_trained_same"
fi
# ----------------------------------------------------------------------------------------------- 4. latents
stage pre_encode python training_examples/pre_encode.py --pretrained_model_name_or_path "$RUN_DIR/init_trained_same" \
    --train_data_dir "$RUN_DIR/data/train" --output_dir "$RUN_DIR/latents" --encode_text --overwrite_output_dir

# ----------------------------------------------------------------------------------------------- 5. base DiT
stage train_flow "${LAUNCH[@]}" training_examples/train_flow.py \
    --pretrained_model_name_or_path "$FLOW_FROM" --latents_dir "$RUN_DIR/latents" \
    --output_dir "$RUN_DIR/base" --training_mode full --max_train_steps "$FLOW_STEPS" \
    --train_batch_size "$FLOW_BATCH" --learning_rate "$FLOW_LR" --lr_warmup_steps "$FLOW_WARMUP" \
    --lr_scheduler "$FLOW_LR_SCHEDULER" --timestep_sampler "$FLOW_SAMPLER" --use_ema --ema_decay "$EMA_DECAY" --max_seconds 12 --checkpointing_steps "$CHECKPOINT_EVERY" \
    --checkpoints_total_limit 2 --report_to none --seed "$SEED" --loss_log "$RUN_DIR/flow_loss.jsonl" \
    --resume_from_checkpoint latest

# ----------------------------------------------------------------------------------------------- 6-7. post-training
stage train_distill "${LAUNCH[@]}" training_examples/train_distill.py \
    --pretrained_model_name_or_path "$RUN_DIR/base" --latent_data_path "$RUN_DIR/latents" \
    --trajectory_cache_dir "$RUN_DIR/trajectories" --output_dir "$RUN_DIR/distilled" \
    --max_train_steps "$DISTILL_STEPS" --train_batch_size "$DISTILL_BATCH" --learning_rate 1e-4 \
    --num_teacher_steps "$DISTILL_TEACHER_STEPS" --guidance_scale "$DISTILL_GUIDANCE" \
    --one_step_probability "$DISTILL_ONE_STEP" --max_seconds 12 --checkpointing_steps "$CHECKPOINT_EVERY" --checkpoints_total_limit 2 --report_to none \
    --seed "$SEED" --loss_log "$RUN_DIR/distill_loss.jsonl" --resume_from_checkpoint latest
stage train_adversarial "${LAUNCH[@]}" training_examples/train_adversarial.py \
    --pretrained_model_name_or_path "$RUN_DIR/distilled" --discriminator_model_name_or_path "$RUN_DIR/base" \
    --latent_data_path "$RUN_DIR/latents" --output_dir "$RUN_DIR/post" --lambda_clap 0 \
    --max_train_steps "$ADV_STEPS" --train_batch_size "$ADV_BATCH" --learning_rate "$ADV_LR" \
    --discriminator_learning_rate "$ADV_D_LR" --lambda_contrastive "$ADV_CONTRASTIVE" --max_seconds 12 \
    --checkpointing_steps "$CHECKPOINT_EVERY" --checkpoints_total_limit 2 --report_to none --seed "$SEED" \
    --loss_log "$RUN_DIR/adversarial_loss.jsonl" \
    --resume_from_checkpoint latest

# The transformers stored in float16 (loaded back as float32): the two of them at full precision would take the
# shipped weights past the 25 MB budget. After the post-training stages (they read base/ at full precision) and
# before the evaluation, so the evaluation scores the weights that ship.
stage half_base python -m diffusers_sa3.training.tiny_components half-transformer --pipeline "$RUN_DIR/base"
stage half_post python -m diffusers_sa3.training.tiny_components half-transformer --pipeline "$RUN_DIR/post"
if ((HALF_VAE)); then
    stage half_vae_base python -m diffusers_sa3.training.tiny_components half-vae "${HALF_VAE_ARGS[@]}" \
        --pipeline "$RUN_DIR/base"
    stage half_vae_post python -m diffusers_sa3.training.tiny_components half-vae "${HALF_VAE_ARGS[@]}" \
        --pipeline "$RUN_DIR/post"
fi

if [[ -n "$BASE_GUIDANCE" ]]; then
    stage base_guidance python -m diffusers_sa3.training.tiny_components set-guidance --pipeline "$RUN_DIR/base" \
        --default_guidance_scale "$BASE_GUIDANCE"
fi

# ----------------------------------------------------------------------------------------------- 8. evaluation
stage evaluate python training_examples/evaluate.py --base "$RUN_DIR/base" --base_steps "$EVAL_BASE_STEPS" \
    --post_trained "$RUN_DIR/post" --post_trained_steps 1 8 --num_prompts "$EVAL_PROMPTS" --seed "$SEED" --phase "$PHASE" \
    --level "$LEVEL" --tuning "$TUNING" --timing "$TIMING" --output_json "$RUN_DIR/eval.json"

# ----------------------------------------------------------------------------------------------- 9. cards, shipping
python - "$RUN_DIR" "$SHIP_DIR" <<'EOF'
import hashlib, json, os, platform, shutil, subprocess, sys

import torch

from diffusers_sa3.pipelines.guidance import resolve_default_guidance_scale

run, ship = sys.argv[1], sys.argv[2]
stages = [line.rstrip("\n").split("\t") for line in open(os.path.join(run, "stages.tsv"))]
if torch.cuda.is_available():
    hardware = f"1x {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
else:
    model = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                           text=True).stdout.strip() or platform.processor()
    hardware = f"CPU only: {os.cpu_count()} cores ({model}), torch {torch.__version__}"
evaluation = json.load(open(os.path.join(run, "eval.json")))


def weight_files(folder):
    # The shipped files only: not the training checkpoints.
    return [os.path.join(folder, d, f) for d in ("vae", "transformer", "text_encoder")
            for f in os.listdir(os.path.join(folder, d)) if f.endswith(".safetensors")]


def weights_mb(*folders):
    # Distinct file contents only: base/ and the post-trained folder share the very same SAME and text encoder files,
    # which git stores once.
    contents = {}
    for folder in folders:
        for path in weight_files(folder):
            with open(path, "rb") as f:
                contents[hashlib.sha256(f.read()).hexdigest()] = os.path.getsize(path)
    return sum(contents.values()) / 1e6


# FLOW_INIT: the earlier run's stages that the starting DiT comes from (its card's table, up to its train_flow, and
# its half_base: the DiT was continued from the float16-stored weights).
earlier_card = os.path.join(run, "flow_init", "README.md")
earlier, earlier_source = [], ""
if os.path.exists(earlier_card):
    for line in open(earlier_card):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) == 3 and cells[1].isdigit():
            if cells[0] in ("data_train", "data_heldout", "build_init", "build_trained_same", "pre_encode",
                            "train_flow", "half_base", "half_vae", "half_vae_trained_same", "half_vae_base",
                            "train_autoencoder", "finetune_decoder"):
                earlier.append((cells[0], cells[1], cells[2].strip("`")))
    def read(name):
        path = os.path.join(run, "flow_init", name)
        return open(path).read().strip() if os.path.exists(path) else ""
    commit = read('SOURCE_COMMIT')  # empty for a folder outside the repository
    earlier_source = f"`{read('SOURCE_PATH') or '?'}`" + (f" at git commit `{commit}`" if commit else "")
earlier_runs = sum(name == "data_train" for name, _, _ in earlier)  # every run of the recipe starts with it
trained_same = [name for name, _, _ in stages if name in ("train_autoencoder", "finetune_decoder")]
if trained_same:
    same_origin = f"The SAME was trained by `training_examples/train_autoencoder.py` ({', '.join(trained_same)} below)."
else:
    init = next(command for name, _, command in stages + earlier if name == "build_init")
    kind = init.split("--same_init ")[1].split()[0] if "--same_init " in init else "random"
    swap = next((command for name, _, command in stages if name == "build_trained_same"), "")
    vae = swap.split("--vae ")[1].split()[0] if "--vae " in swap else ""
    if vae and os.path.normpath(vae) != os.path.normpath(os.path.join(run, "init", "vae")):
        # SAME_FROM: an existing SAME (the one the continued DiT learned), not the one this run built from its clips.
        fitted = (f"fitted to the training clips of the earliest run below (its build_init), taken from `{vae}` "
                  "(`SAME_FROM`, build_trained_same below; this run's own build_init is not used)")
    else:
        fitted = "fitted to the training clips (build_init below)"
    same_origin = (f"The SAME is not trained: it is the data-dependent `{kind}` construction of "
                   f"`diffusers_sa3.training.tiny_components` {fitted}, in the official architecture; training it "
                   "from scratch on a CPU budget did not reconstruct tones or stereo (training_examples/README).")

half_vae = [command for name, _, command in stages + earlier if name.startswith("half_vae")]
if any("--all_weights" in command for command in half_vae):
    same_precision = "; so are all the SAME's weights (`half-vae --all_weights`)."
elif half_vae:
    same_precision = ("; so are the SAME's analysis and synthesis matrices and its weights that float16 holds exactly "
                      "(`half-vae`), its other weights are float32.")
else:
    same_precision = "."


def card(title, folder, sampling):
    lines = [f"# {title}", "",
             "A tiny Stable Audio 3 model trained from scratch on the synthetic sound set of",
             "`diffusers_sa3.training.synthetic_sounds` (tones, chords, noise, drums, chirps; left / centre / right;",
             "quiet / loud; 1-12 s) with `training_examples/make_tiny_model.sh`. The text encoder is a tiny T5Gemma",
             "encoder with frozen *random* weights and a word-level tokenizer over the caption words: it only knows",
             "the caption grammar. For tests, demos and CI, not for real audio.", "", same_origin, "",
             "The transformer weights are stored in float16 and load as float32" + same_precision, "",
             f"Sampling: {sampling}", "",
             f"Weights in this folder: {weights_mb(folder):.1f} MB (safetensors).", "",
             f"Hardware: {hardware}.", "",
             f"Total wall time of the stages: {sum(int(seconds) for _, seconds, _ in stages + earlier)} s"
             + (f" ({sum(int(seconds) for _, seconds, _ in earlier)} s of them in the earlier "
                f"run{'s' if earlier_runs > 1 else ''} below)." if earlier else "."), ""]
    if earlier:
        runs = "runs" if earlier_runs > 1 else "run"
        chain = (f" That run itself continued the DiT of an earlier one: the table has the stages of the {earlier_runs} "
                 "runs, oldest first." if earlier_runs > 1 else "")
        lines += [f"The DiT continues the base DiT of an earlier run of the recipe, {earlier_source} "
                  "(`FLOW_INIT`, copied to `flow_init/`; its SAME, text encoder and tokenizer are this run's files, "
                  f"byte for byte).{chain} The earlier stages that this model comes from:", "",
                  f"| stage (earlier {runs}) | wall time (s) | command |",
                  "|---|---|---|"]
        lines += [f"| {name} | {seconds} | `{command}` |" for name, seconds, command in earlier]
        lines += [""]
    lines += ["## Commands (in order) and wall time", "",
              "| stage | wall time (s) | command |", "|---|---|---|"]
    lines += [f"| {name} | {seconds} | `{command}` |" for name, seconds, command in stages]
    lines += ["", "## Held-out evaluation (`training_examples/evaluate.py`)", "", "```", evaluation["table"], "```", ""]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


base_guidance = resolve_default_guidance_scale(
    json.load(open(os.path.join(run, "base", "model_index.json"))).get("default_guidance_scale"), False)
card("Stable Audio 3 tiny (base)", os.path.join(run, "base"),
     f"Euler (rectified flow), 50 steps and guidance {base_guidance:g} by default.")
card("Stable Audio 3 tiny (post-trained)", os.path.join(run, "post"),
     "ping-pong, 8 steps (1 step works too), no guidance.")
print(evaluation["table"])
total = weights_mb(os.path.join(run, "base"), os.path.join(run, "post"))
print(f"[make_tiny_model] weights of base + post-trained (distinct files): {total:.1f} MB")
if ship:
    # Shipped whatever the evaluation reached (the model cards carry its table, targets included); only the size
    # budget of the repository is a hard limit.
    if total > 25:
        sys.exit(f"[make_tiny_model] not shipping to {ship}: {total:.1f} MB of weights > 25 MB")
    if os.path.exists(ship):
        shutil.rmtree(ship)
    ignore = shutil.ignore_patterns("checkpoint-*", "logs", "validation", "*.jsonl")
    shutil.copytree(os.path.join(run, "post"), ship, ignore=ignore)
    shutil.copytree(os.path.join(run, "base"), os.path.join(ship, "base"), ignore=ignore)
    print(f"[make_tiny_model] shipped to {ship}")
EOF
