#!/usr/bin/env bash
# Download into .whl/ the wheels that bench/gpu_check.sh needs on the device machine (an NVIDIA H200 with python3.12,
# torch 2.11 + CUDA, numpy, scipy, matplotlib, h5py, pandas, sympy, opt-einsum(-fx), torchmetrics, pyyaml, typer,
# rich, tqdm, pytest... but no mace-torch, ase, spglib, matscipy and no network). Run here, in the repo root:
#
#     bash scripts/gpu_wheels.sh
#
# then run the device tool with carry [".whl"] and command `bash bench/gpu_check.sh` (see bench/RESULTS.md).
#
# The set is what `import mace`, `from mace.calculators import MACECalculator`, mace.modules,
# mace.tools.{compile,scripts_utils}, limace.{potentials,md,analysis.neb/relax/hops/barriers,data.generate} and
# tests/test_{md,neb,batched_mace}.py import, less what the device has (checked by tracing the imports in .venv):
#   mace-torch 0.3.16 -> e3nn==0.4.4 (pinned; shadows the device's newer e3nn), torch-ema (mace.tools.train),
#                        matscipy (mace.data.neighborhood), lmdb + orjson (mace.tools.fairchem_dataset), ase
#   limace             -> ase, spglib (analysis.hops, data.structures); limace itself goes by PYTHONPATH=src
# Requires-Dist of mace-torch that nothing above imports (prettytable, python-hostlist, configargparse, GitPython)
# are left out. pymatgen is not needed: the check runs MD + NEB only (limace.analysis.hull / data.io / consistency
# are the only pymatgen users). Versions are those of this repo's .venv. Pure-Python or manylinux cp312 x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  mace-torch==0.3.16
  e3nn==0.4.4
  torch-ema==0.3
  matscipy==1.3.1
  lmdb==3.0.0
  orjson==3.13.0
  ase==3.29.0
  spglib==2.8.0
)

# .whl/ must never be committed, nor travel except when carried
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done

mkdir -p .whl
# one version of each package only: drop stale wheels of these names first
for spec in "${WHEELS[@]}"; do
  name="${spec%%==*}"; norm="$(echo "$name" | tr '-' '_')"
  for f in .whl/"$norm"-*.whl .whl/"$name"-*.whl; do
    [ -e "$f" ] || continue
    case "$f" in *"-${spec##*==}-"*) ;; *) echo "removing stale $f"; rm -f "$f" ;; esac
  done
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d .whl "${WHEELS[@]}"

echo "wheels in .whl/:"
ls -l .whl/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5/1024, $NF}'
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "total: $(awk -v b="$total" 'BEGIN{printf "%.1f MiB", b/1048576}') (the device tool carries at most 64 MiB with the tree)"
n=$(ls .whl/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "warning: $n wheels for ${#WHEELS[@]} packages: remove extra versions from .whl/" >&2
  exit 1
fi
