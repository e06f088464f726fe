#!/usr/bin/env bash
# The parity runs of docs/fidelity.md: each head and setting with released training code, the
# authors' script (run_authors.py) and ours (run_ours.py), seeds 1 2 3 (or $SEEDS), two runs at a time on one
# thread each. A run whose JSON exists is skipped, so the script resumes after an interruption.
#
#   AUTHORS=../authors SET=OUT SET64=OUT64 RUNS=runs JOBS=2 bash benchmarks/parity/run_all.sh
#
# SET: make_features.py OUT --train 256 (402 val / 402 test: PSP, VSCG and AVEL read 402);
# SET64: make_features.py OUT64 --train 256 --eval 100 --float64 (CMBS and CACE-Net run in
# float64 and take any size). CACE-Net's braincog package also needs `pip install einops`.
# The lines below give each head and setting's epochs; edit them for longer runs on a GPU.
set -euo pipefail
if [ "${1:-}" = "--one" ]; then
  shift
  H=$1 S=$2 SIDE=$3 SEED=$4 E=$5
  HERE=$(cd "$(dirname "$0")" && pwd)
  D=$SET; case $H in cmbs|cace) D=$SET64;; esac
  OUT=$RUNS/$H-$S-$SIDE-$SEED.json
  [ -f "$OUT" ] && exit 0
  start=$(date +%s)
  if [ "$SIDE" = ours ]; then
    cmd=(python "$HERE/run_ours.py" --head "$H" --setting "$S" --data "$D" --epochs "$E" --seed "$SEED" --out "$OUT")
  else
    case $H-$S in
      avel-fully) a=(--repo "$AUTHORS/AVE-ECCV18" --script supervised_main.py --parser avel -- --train --nb_epoch "$E");;
      avel-weak) a=(--repo "$AUTHORS/AVE-ECCV18" --script weak_supervised_main.py --parser avel -- --train --nb_epoch "$E");;
      psp-fully) a=(--repo "$AUTHORS/PSP_CVPR_2021" --script fully_supervised_main.py -- --train --nb_epoch "$E");;
      psp-weak) a=(--repo "$AUTHORS/PSP_CVPR_2021" --script weakly_supervised_main.py -- --train --nb_epoch "$E");;
      vscg-fully) a=(--repo "$AUTHORS/VSCG" --script fully_supervised_main.py -- --train --nb_epoch "$E");;
      vscg-weak) a=(--repo "$AUTHORS/VSCG" --script weakly_supervised_main.py -- --train --nb_epoch "$E");;
      # as supv_train.sh / weakly_train.sh / run_supp.sh run them
      cmbs-fully) a=(--repo "$AUTHORS/CMBS" --script supv_main.py --float64 --parser cmbs -- --gpu 0 --lr 0.0007
                     --clip_gradient 0.5 --snapshot_pref ./Exps/Supv/exp1/ --n_epoch "$E" --b 64 --test_batch_size 16 --print_freq 1);;
      cmbs-weak) a=(--repo "$AUTHORS/CMBS" --script weakly_main.py --float64 --parser cmbs -- --gpu 0 --lr 0.0006
                    --b 64 --clip_gradient 0.5 --snapshot_pref ./Exps/WeaklySupv/exp1/ --test_batch_size 16 --n_epoch "$E");;
      cace-fully) a=(--repo "$AUTHORS/CACE-Net" --script CACE/supv_main.py --float64 --parser cmbs --stub cv2 --stub dv
                     --stub pandas --stub seaborn -- --gpu 0 --lr 0.0007 --clip_gradient 0.5 --snapshot_pref ./Exps/Supv/exp
                     --n_epoch "$E" --b 64 --test_batch_size 64 --print_freq 10 --seed "$SEED" --guide Co-Guide --psai 0.3
                     --contrastive --Lambda 0.6);;
      *) echo "no authors' command for $H-$S" >&2; exit 2;;
    esac
    cmd=(python "$HERE/run_authors.py" --data "$D" --seed "$SEED" --out "$OUT" "${a[@]}")
  fi
  rc=0
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "${cmd[@]}" > "$RUNS/$H-$S-$SIDE-$SEED.stdout" 2>&1 || rc=$?
  echo "$H-$S-$SIDE-$SEED rc=$rc $(( $(date +%s) - start ))s" >> "$RUNS/done.txt"
  exit 0
fi

: "${AUTHORS:?the folder holding the five clones}" "${SET:?a make_features.py set}" "${SET64:?a --float64 set}"
export AUTHORS SET SET64 RUNS=${RUNS:-runs}
mkdir -p "$RUNS"
while read -r head setting epochs; do
  for seed in ${SEEDS:-1 2 3}; do
    echo "$head $setting theirs $seed $epochs"
    echo "$head $setting ours $seed $epochs"
  done
done <<'EOF' | xargs -P "${JOBS:-2}" -L 1 bash "$0" --one
avel fully 40
avel weak 40
psp weak 16
vscg fully 16
vscg weak 16
cmbs fully 4
cace fully 4
cmbs weak 4
EOF
