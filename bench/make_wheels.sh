#!/usr/bin/env bash
# Fill .whl/ (ignored) with the wheels bench/gpu_session.sh installs on the lent GPU, which has torch,
# transformers, accelerate, tokenizers, rich and pyarrow but no network: diffusers, webdataset, braceexpand,
# at the versions this checkout's venv has (so the GPU runs the code the CPU tests ran). Run once per checkout:
#   bash bench/make_wheels.sh [PYTHON]     (default .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
pins=$("$PY" - <<'PYEOF'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("diffusers", "webdataset", "braceexpand")))
PYEOF
)
mkdir -p .whl
# --no-deps: their dependencies are on the device image already (or are these same three)
"$PY" -m pip download -q --no-deps --only-binary :all: -d .whl $pins
ls .whl
