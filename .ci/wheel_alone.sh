#!/usr/bin/env bash
# The wheel stands alone: built from the tree, installed into a fresh venv with the core dependencies
# only (the pinned CPU torch and numpy), imported and run from outside the source tree; then, with the
# plot extra, the demo (its bundled data and report) and the README's PyTorch quickstart, as written; with
# the tf extra, its Keras quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip wheel --quiet --no-deps . -w "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet torch==2.13.0
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/rnnshap-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib.metadata, torch, rnnshap
from torch import nn

assert rnnshap.__file__.startswith(__import__("sys").prefix), rnnshap.__file__   # the installed wheel, not the tree
torch.manual_seed(0)
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 2)
    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])
model = M().eval()
background, x = torch.randn(5, 6, 3), torch.randn(2, 6, 3)
explainer = rnnshap.DeepExplainer(model, background)
values = explainer.shap_values(x)
gap = model(x).detach().numpy() - explainer.expected_value
assert abs(values.sum((1, 2)) - gap).max() < 1e-5
print(f"wheel rnnshap {rnnshap.__version__} (metadata {importlib.metadata.version('rnnshap')}) alone: exact, values {values.shape}")
PY
wheel=$(ls "$work"/dist/rnnshap-*.whl)
"$work/venv/bin/python" -m pip install --quiet "rnnshap[plot] @ file://$wheel"
"$work/venv/bin/rnnshap" --version
"$work/venv/bin/python" -m rnnshap demo --samples 3 --epochs 5 --out "$work/report" | tail -3
test -f "$work/report/index.html"
readme="$root/README.md"
"$work/venv/bin/python" - "$readme" <<'PY'
import re, sys
blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1]).read(), flags=re.S)
exec(compile(blocks[0], "README.md, the PyTorch quickstart", "exec"), {"__name__": "quickstart"})
print("the README's PyTorch quickstart runs against the installed wheel")
PY
# the Keras quickstart, with the tf extra installed from the wheel (TensorFlow and Keras at the pinned versions)
"$work/venv/bin/python" -m pip install --quiet "rnnshap[tf] @ file://$wheel" -c "$root/constraints/cpu-torch.txt"
TF_CPP_MIN_LOG_LEVEL=3 "$work/venv/bin/python" - "$readme" <<'PY'
import re, sys
blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1]).read(), flags=re.S)
assert "keras" in blocks[1], "the README's second python block is the Keras quickstart"
exec(compile(blocks[1], "README.md, the Keras quickstart", "exec"), {"__name__": "quickstart"})
print("the README's Keras quickstart runs against the installed wheel")
PY
