#!/usr/bin/env bash
# Fetch, here, the wheels the lent GPU machine lacks, into .whl/ (git-ignored through
# .git/info/exclude), for its Python 3.12 on x86-64. That machine reaches no package index: it
# installs these with `pip install --no-index` (benchmarks/gpu_session.sh does).
#
#     bash benchmarks/gpu_wheels.sh          # about 20 MB; elasticdeform is built against NumPy 2
#
# The machine's image already has torch, torchvision, timm, numpy, scipy, pluggy, click, tqdm,
# pyyaml, matplotlib, pillow, pandas, scikit-learn, opencv and huggingface-hub (see
# /work/.library/device/KINDS.md); the list below is what noisyseg needs beyond them.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
# the versions the test suite passes with here (pydantic and pydantic-core, albumentations and
# albucore go in pairs)
wheels=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 packaging==26.4 higher==0.2.1 segmentation-models-pytorch==0.6.0
        nibabel==5.4.2 nilearn==0.14.1 albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16
        stringzilla==5.3.2 cleanlab==2.9.0 termcolor==3.3.0
        monai==1.6.1)  # the tests compare the metrics with MONAI's
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
rm -f .whl/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${wheels[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
# elasticdeform has no NumPy 2 wheel: build it with a Python 3.12 here, against NumPy 2
py312=$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 || true)
if [ -z "$py312" ]; then
    echo "no Python 3.12 here: elasticdeform not built (the elastic noise will not run there)" >&2
else
    "$py312" -m pip wheel -q --no-deps --no-binary elasticdeform -w .whl elasticdeform==0.5.1 \
        2> >(grep -v "is ignored: it is neither" >&2)
fi
ls -la .whl
du -sh .whl
