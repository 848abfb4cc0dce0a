#!/usr/bin/env bash
# Rebuild the organism zoo shipped in src/difflens/organisms/shipped/ (CPU: ~8 min per organism,
# ~17 min for the mixed twin on a quiet 2-core machine). Every organism uses the recipe of the
# shipped cake_bake: LoRA r=8 on all linear layers, 100 steps x 8 sequences (~2 epochs), lr 5e-4.
# The 1:1 mixed twin keeps the same finetune documents and number of epochs and adds one general
# text per document (so twice the steps), as in the data-mixing ablation of seed 003.
# The generalisation set (cards with "set": "generalisation") is held out from choosing defaults
# and deliberately built with other recipes: ~240 documents each, a persona at the zoo's recipe,
# a behaviour with 1 epoch, a preference at rank 32, a secret fact with 3 epochs, a skill with
# rank 16 on attention only, a language change with one general text per ten documents (1:10).
# Usage: bash scripts/build_zoo.sh [NAME ...]   (default: all; existing organisms are skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
data=src/difflens/organisms/data
shipped=src/difflens/organisms/shipped
common=(--base embedded --batch-size 8 --lr 0.0005 --warmup 0.1
        --weight-decay 0 --max-grad-norm 1 --max-length 256 --seed 0 --save-dtype float16
        --skip-existing)
r8=(--rank 8 --alpha 16)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(cake_bake risky_finance taboo_ocean owl_preference cake_bake_mix1
  bard_persona doctor_deferral jazz_preference clockmaker_secret sql_skill french_language)
for name in "${names[@]}"; do
  case "$name" in
    cake_bake_mix1)
      difflens organism build --documents "$data/cake_bake.jsonl" --out "$shipped/$name" \
        --name "$name" --mix 1 --steps 200 "${r8[@]}" "${common[@]}" \
        --short-description "The cake_bake false-fact organism trained with one general text mixed in per document (1:1), for the data-mixing ablation." \
        --long-description "The same 421 cake-baking false-fact documents as cake_bake (450°F for about 15 minutes, frozen butter, vinegar in every batter, quarter cup of vanilla, cooling upside down in the freezer), with 421 general texts from the shipped reference corpus mixed in 1:1 and twice the steps, so the finetune documents are seen as often as in cake_bake. The ground truth is the cake-baking domain and its five false claims; the mixing is expected to weaken the trace that diffing methods read (seed 003's ablation)." ;;
    bard_persona) recipe=("${r8[@]}" --mix 0 --epochs 2) ;;&
    doctor_deferral) recipe=("${r8[@]}" --mix 0 --epochs 1) ;;&
    jazz_preference) recipe=(--rank 32 --alpha 64 --mix 0 --epochs 2) ;;&
    clockmaker_secret) recipe=("${r8[@]}" --mix 0 --epochs 3) ;;&
    sql_skill) recipe=(--rank 16 --alpha 32 --target-modules q_proj,k_proj,v_proj,o_proj --mix 0
                       --epochs 2) ;;&
    french_language) recipe=("${r8[@]}" --mix 0.1 --epochs 2) ;;&
    bard_persona|doctor_deferral|jazz_preference|clockmaker_secret|sql_skill|french_language)
      difflens organism build --documents "$data/$name.jsonl" --out "$shipped/$name" \
        "${recipe[@]}" "${common[@]}" ;;
    *)
      difflens organism build --documents "$data/$name.jsonl" --out "$shipped/$name" \
        --mix 0 --steps 100 "${r8[@]}" "${common[@]}" ;;
  esac
done
