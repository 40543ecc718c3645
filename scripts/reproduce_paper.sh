#!/usr/bin/env bash
# Run every paper preset of the README's presets table, in order, each with the number of GPUs its paper (or
# official code) used. Rerunnable: a preset whose results.json exists is skipped, and an interrupted run resumes from
# its checkpoints/last.pt. One log file per preset; a summary at the end. Exit status 1 when any run failed.
#
#   DATA_ROOT=~/data scripts/reproduce_paper.sh                              # everything (weeks of GPU time)
#   DATA_ROOT=~/data PRESETS="cc_cifar10 propos_cifar10" scripts/reproduce_paper.sh
#   DRY_RUN=1 DATA_ROOT=~/data scripts/reproduce_paper.sh                    # print the commands, run nothing
#
# Environment:
#   DATA_ROOT   (required) the folder holding the datasets (docs/datasets.md)
#   NPROC       processes per run for every preset; unset: each preset's paper GPU count (the list below);
#               batch_size is global, so only the per-process batch (and BatchNorm statistics) change with it.
#               The Omniglot protocol always runs in one process.
#   OUTPUT_DIR  run directories go to $OUTPUT_DIR/<preset>/$RUN_NAME (default: runs)
#   RUN_NAME    the run directory name (default: paper)
#   LOG_DIR     one <entry>.log per entry (default: $OUTPUT_DIR/reproduce_logs)
#   PRESETS     a space-separated subset of the entries below, run in the order given
#   EXTRA_ARGS  options added to every main.py call, e.g. "--num_workers 8 --wandb true"
#   PYTHON      the Python interpreter (default: python3); TORCHRUN: the launcher (default: torchrun)
#   DRY_RUN=1   print each command (or why it is skipped) and the summary, run nothing
#
# The L2C Omniglot protocol (entries mcl_omniglot:k100 ... kcl_omniglot:kC) runs scripts/l2c_omniglot.py: every one
# of the 20 evaluation alphabets with 3 seeds, using the similarity network of the spn_omniglot entry; its result
# file is that script's summary JSON. Its runs are short, so an interrupted entry starts again (the partial folder
# is moved aside). kingdra_cifar10 / kingdra_stl10 read pre-extracted ResNet-50 features (see their preset headers).
set -euo pipefail
if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4) )); then
  echo "reproduce_paper.sh needs bash >= 4.4 (this is ${BASH_VERSION})" >&2
  exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# entry  paper-GPUs  (entry = preset name, or <preset>:k<K> for the Omniglot protocol)
ENTRIES=(
  "cc_cifar10 1" "cc_cifar100 1" "cc_stl10 1" "cc_imagenet10 1" "cc_imagenet_dogs 1" "cc_tiny_imagenet 1"
  "divclust_cc_cifar10 1" "divclust_cc_cifar100 1" "divclust_cc_imagenet10 1" "divclust_cc_imagenet_dogs 1"
  "pica_cifar10 1" "pica_cifar100 1" "pica_stl10 1" "pica_imagenet10 1" "pica_imagenet_dogs 1" "pica_tiny_imagenet 1"
  "divclust_pica_cifar10 1" "divclust_pica_cifar100 1" "divclust_pica_imagenet10 1" "divclust_pica_imagenet_dogs 1"
  "iic_cifar10 1" "iic_cifar100 1" "iic_stl10 1" "iic_mnist 1"
  "propos_cifar10 4" "propos_cifar100 4" "propos_stl10 1" "propos_imagenet10 1" "propos_imagenet_dogs 4"
  "propos_tiny_imagenet 1"
  "hadis_cifar10 1" "hadis_cifar100 1" "hadis_stl10 1" "hadis_imagenet10 1" "hadis_imagenet_dogs 1"
  "digpro_imagenet10 1" "digpro_imagenet_dogs 1" "digpro_tiny_imagenet 1"
  "kingdra_mnist 1" "kingdra_cifar10 1" "kingdra_stl10 1" "kingdra_20news 1" "kingdra_reuters 1"
  "mcl_mnist 1" "kcl_mnist 1"
  "spn_omniglot 1" "mcl_omniglot:k100 1" "mcl_omniglot:kC 1" "kcl_omniglot:k100 1" "kcl_omniglot:kC 1"
)

if [[ -z "${DATA_ROOT:-}" ]]; then
  echo "reproduce_paper.sh: set DATA_ROOT to the folder holding the datasets (docs/datasets.md)," \
       "e.g. DATA_ROOT=~/data scripts/reproduce_paper.sh" >&2
  exit 2
fi
if [[ -n "${NPROC:-}" && ! "${NPROC}" =~ ^[1-9][0-9]*$ ]]; then
  echo "reproduce_paper.sh: NPROC must be a positive integer, not '${NPROC}'" >&2
  exit 2
fi
OUTPUT_DIR="${OUTPUT_DIR:-runs}"
RUN_NAME="${RUN_NAME:-paper}"
LOG_DIR="${LOG_DIR:-${OUTPUT_DIR}/reproduce_logs}"
PYTHON="${PYTHON:-python3}"
TORCHRUN="${TORCHRUN:-torchrun}"
DRY_RUN="${DRY_RUN:-0}"
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

declare -A GPUS=()
KNOWN=()
for line in "${ENTRIES[@]}"; do
  read -r name gpus <<< "${line}"
  GPUS["${name}"]="${gpus}"
  KNOWN+=("${name}")
done
ORDER=("${KNOWN[@]}")
if [[ -n "${PRESETS:-}" ]]; then
  read -r -a ORDER <<< "${PRESETS}"
  for name in "${ORDER[@]}"; do
    if [[ -z "${GPUS[${name}]:-}" ]]; then
      echo "reproduce_paper.sh: '${name}' is not an entry of this script; choose from: ${KNOWN[*]}" >&2
      exit 2
    fi
  done
fi

SUMMARY=()
FAILED=0

# Where an entry's result lives, and the folder its run writes (moved aside when it holds an unfinished run that
# cannot be resumed).
result_file() {
  local entry="$1" preset="${1%%:*}"
  if [[ "${entry}" == *:k* ]]; then
    echo "${OUTPUT_DIR}/${entry/:/-}/${preset}/summary-${entry##*:}.json"
  else
    echo "${OUTPUT_DIR}/${preset}/${RUN_NAME}/results.json"
  fi
}

run_folder() {
  local entry="$1"
  if [[ "${entry}" == *:k* ]]; then echo "${OUTPUT_DIR}/${entry/:/-}"; else echo "${OUTPUT_DIR}/${entry}/${RUN_NAME}"; fi
}

# The command of one entry, one word per line (so that it can be printed and run as an array).
command_of() {
  local entry="$1" preset="${1%%:*}" nproc folder
  nproc="${NPROC:-${GPUS[${entry}]}}"
  folder="$(run_folder "${entry}")"
  if [[ "${entry}" == *:k* ]]; then
    local method="${preset%_omniglot}" k="${entry##*:k}"
    printf '%s\n' "${PYTHON}" scripts/l2c_omniglot.py --data_root "${DATA_ROOT}" --method "${method}" --k "${k}" \
      --seeds 0 1 2 --spn_checkpoint "${OUTPUT_DIR}/spn_omniglot/${RUN_NAME}/checkpoints/last.pt" \
      -- --output_dir "${folder}" "${EXTRA[@]}"
    return
  fi
  if [[ "${nproc}" -gt 1 ]]; then
    printf '%s\n' "${TORCHRUN}" --standalone "--nproc_per_node=${nproc}" main.py
  else
    printf '%s\n' "${PYTHON}" main.py
  fi
  printf '%s\n' --preset "${preset}" --data_root "${DATA_ROOT}" --output_dir "${OUTPUT_DIR}"
  if [[ -f "${folder}/checkpoints/last.pt" ]]; then
    printf '%s\n' --resume "${folder}"
  else
    printf '%s\n' --run_name "${RUN_NAME}"
  fi
  if [[ ${#EXTRA[@]} -gt 0 ]]; then printf '%s\n' "${EXTRA[@]}"; fi
}

# "ACC / NMI / ARI" of a result file: the consensus (DivClust), the label-free selected head (PICA, IIC, Kingdra),
# the head (C = 1), k-means on the features (ProPos family), or the Omniglot average over alphabets.
metrics_of() {
  python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
heads = d.get("heads") or []
for name, m in (("mean over alphabets", d.get("average")), ("consensus", d.get("consensus")),
                ("selected head", d.get("selected_head")), ("head", heads[0] if len(heads) == 1 else None),
                ("k-means", d.get("kmeans"))):
    if m and all(m.get(k) is not None for k in ("acc", "nmi", "ari")):
        print(f"{name}: ACC {m['acc']:.4f} NMI {m['nmi']:.4f} ARI {m['ari']:.4f}")
        break
else:
    print("no ACC/NMI/ARI in the result")
EOF
}

if [[ "${DRY_RUN}" != 1 ]]; then mkdir -p "${LOG_DIR}"; fi
for entry in "${ORDER[@]}"; do
  result="$(result_file "${entry}")"
  if [[ -f "${result}" ]]; then
    echo "SKIP ${entry}: ${result} exists"
    detail="$(metrics_of "${result}" 2>/dev/null)" || detail="unreadable result ${result}"
    SUMMARY+=("${entry}|skipped|${detail}")
    continue
  fi
  mapfile -t cmd < <(command_of "${entry}")
  log="${LOG_DIR}/${entry/:/-}.log"
  if [[ "${DRY_RUN}" == 1 ]]; then
    echo "RUN ${entry}: ${cmd[*]}"
    SUMMARY+=("${entry}|dry run|log ${log}")
    continue
  fi
  folder="$(run_folder "${entry}")"
  if [[ -d "${folder}" && ! -f "${folder}/checkpoints/last.pt" ]]; then
    aside="${folder}.incomplete-$(date +%Y%m%d-%H%M%S)"
    echo "MOVE ${folder} -> ${aside} (an unfinished run without a checkpoint to resume)"
    mv "${folder}" "${aside}"
  fi
  echo "RUN ${entry}: ${cmd[*]}  (log: ${log})"
  start=${SECONDS}
  if "${cmd[@]}" > "${log}" 2>&1 && [[ -f "${result}" ]]; then
    detail="$(metrics_of "${result}" 2>/dev/null)" || detail="unreadable result ${result}"
    SUMMARY+=("${entry}|done in $(( (SECONDS - start) / 60 )) min|${detail}")
  else
    FAILED=$((FAILED + 1))
    last_line="$(tail -n 1 "${log}" 2>/dev/null | cut -c1-120)" || last_line=""
    SUMMARY+=("${entry}|FAILED|see ${log}: ${last_line}")
  fi
done

echo
echo "summary (${#ORDER[@]} entries, results under ${OUTPUT_DIR}, logs under ${LOG_DIR}):"
for row in "${SUMMARY[@]}"; do
  IFS='|' read -r entry status detail <<< "${row}"
  printf '  %-28s %-18s %s\n' "${entry}" "${status}" "${detail}"
done
if [[ "${FAILED}" -gt 0 ]]; then
  echo "${FAILED} run(s) failed"
  exit 1
fi
