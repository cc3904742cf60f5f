"""An integer 0/1 mask input turned into a bool mask with ``.bool()`` (or ``.to(torch.bool)``) and then
used on floating-point values through a cast is attributed as a *number*, not used as context.

docs/concepts.md lists ``ids.bool()`` among the comparisons that make an integer input context
("compared (ids != pad, ids < 0, ids.bool()) into a mask used on floating-point values → context:
not attributed, used as given by the explained sample on both sides"). ``m != 0`` behaves so;
``m.bool()`` and ``m.to(torch.bool)`` do not.

Observed: the mask input gets nonzero attributions (max |φ| = 0.11 here), the references are run with
their own masks; with ``keep.sum(1)`` also used (lengths for packing, a count), the constructor refuses
the model with InputError ("Input 1 is used as a number (cast to floating point by torch.Tensor.to),
and torch.Tensor.sum also uses its values directly").
Through nn.MultiheadAttention(key_padding_mask=~mask.bool()) the refusal is misleading: with token ids
"UnsupportedOperationError: the model's output: it does not depend on the explained inputs", with a float
input "InputError: Input 1 (integers): torch.Tensor.masked_fill_ computes floating-point values from it
..." (torch's own masked_fill_ inside MHA); with ``~(mask != 0)`` or a bool mask the same model is explained.
Expected: as for ``m != 0`` or a bool input: zeros for the mask input, references run with the explained
sample's mask. Found by tests/test_fuzz.py (context_dtype=uint8_bool, int64_tobool).
Run: python tests/fuzz/reproducers/int_mask_bool_is_a_number.py
"""

import torch
from torch import nn

import rnnshap


class MaskedMean(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.head = nn.Linear(2, 1)

    def forward(self, x, mask):  # x: (N, T, 2) float, mask: (N, T) uint8 0/1
        keep = {"!= 0": lambda: mask != 0, "bool()": mask.bool, "to(bool)": lambda: mask.to(torch.bool)}[self.how]()
        w = keep[..., None].to(x.dtype)
        return self.head((x * w).sum(1) / w.sum(1))


def mask_attribution(how: str) -> float:
    torch.manual_seed(0)
    model = MaskedMean(how).double().eval()
    background = [torch.randn(2, 4, 2, dtype=torch.float64), torch.ones(2, 4, dtype=torch.uint8)]
    x = [torch.randn(1, 4, 2, dtype=torch.float64), torch.tensor([[1, 1, 0, 1]], dtype=torch.uint8)]
    _, phi_mask = rnnshap.DeepExplainer(model, background).shap_values(x)
    return float(abs(phi_mask).max())


class TokensMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.mha = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(4, 1)

    def forward(self, ids, mask):  # ids: (N, T) int64 token ids, mask: (N, T) uint8 0/1
        h = self.emb(ids)
        return self.head(self.mha(h, h, h, key_padding_mask=~mask.bool(), need_weights=False)[0][:, -1])


def mha_refusal() -> str | None:
    torch.manual_seed(0)
    model = TokensMHA().double().eval()
    try:
        rnnshap.DeepExplainer(model, [torch.randint(0, 5, (2, 3)), torch.ones(2, 3, dtype=torch.uint8)])
    except rnnshap.RnnShapError as error:
        return f"{type(error).__name__}: {str(error).splitlines()[1].strip()}"
    return None


def check() -> None:
    for how in ("!= 0", "bool()", "to(bool)"):
        assert mask_attribution(how) == 0.0, f"mask.{how}: the mask input is attributed"
    assert mha_refusal() is None, mha_refusal()


if __name__ == "__main__":
    for how in ("!= 0", "bool()", "to(bool)"):
        print(f"mask {how:9s}: max |phi| of the mask input = {mask_attribution(how):.4f}  (expected 0)")
    print("MultiheadAttention(key_padding_mask=~mask.bool()):", mha_refusal() or "explained")
