"""Fuzzing: random realistic sequence models, each held to rnnshap's promise.

Models are drawn from a grammar (``tests/fuzz/torch_grammar.py``, ``tests/fuzz/keras_grammar.py``):
recurrent layers and cells (stacked, bidirectional, seq-first, projected, packed with lengths as a
context input, python cell loops), embeddings of token ids moved by flips, rolls, shifts, permutations
and column indexing, masks (masked_fill / where / multiplied, key padding, causal -inf masks, masks made
from the ids), attention (hand-written, nn.MultiheadAttention, scaled_dot_product_attention), pooling,
norms, residuals, elementwise activations, heads with 1..3 outputs or one per step. Each model either

- is refused by name at construction (``UnsupportedOperationError``, ``ModelStateError``,
  ``InputError``), or
- is explained exactly: finite values adding up to f(x) − mean_r f(r) from the model's own outputs
  (references run with the explained sample's context) within 1e-9·max(1, |Δ|) in float64, exactly 0
  for a feature the model never reads, a masked step, a future step of a causal per-step model, a context
  input, and a sample equal to the only reference; explaining a subset of the outputs gives the same
  values.

Anything else is a defect. Grammar elements that expose a known defect are left out of the draws
(``KNOWN_DEFECTS_*``), each with a strict-xfail test of its minimal reproducer below, so that CI stays
green and a fix is noticed. The default budget runs in CI (derandomized); ``-m slow`` runs a longer one.
``python -m tests.fuzz.census torch 300`` counts outcomes over every element, known defects included
(``RNNSHAP_FUZZ_TALLY=file`` makes the tests below log each model's outcome, to count a pytest run);
``python -m tests.fuzz.shrink torch SEED`` shrinks a census seed's defect to a small spec.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from .fuzz import torch_grammar
from .fuzz.choosers import HypothesisChooser

REPRODUCERS = Path(__file__).parent / "fuzz" / "reproducers"

#: grammar elements ("choice=option") left out of the draws, by the defect they expose
KNOWN_DEFECTS_TORCH: dict[str, str] = {
    "context_dtype=uint8_bool": (
        "an integer mask input turned into a bool mask by .bool() and then cast to float is attributed as a "
        "number (nonzero φ, references with their own masks) or refused (InputError; through nn.MultiheadAttention's "
        "key_padding_mask even 'the model's output does not depend on the explained inputs'), though docs/concepts.md "
        "lists ids.bool() as a comparison, i.e. context (reproducers/int_mask_bool_is_a_number.py)"
    ),
    "context_dtype=int64_tobool": "as context_dtype=uint8_bool, with .to(torch.bool)",
}
KNOWN_DEFECTS_KERAS: dict[str, str] = {}

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def _tally(which: str, outcome: object) -> None:
    """With RNNSHAP_FUZZ_TALLY=path, append each drawn model's outcome to that file (to count a run)."""
    path = os.environ.get("RNNSHAP_FUZZ_TALLY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            detail = outcome.detail.split("\n")[0][:160] if outcome.status != "exact" else ",".join(outcome.checks)  # type: ignore[attr-defined]
            f.write(f"{which}\t{outcome.status}\t{detail}\n")  # type: ignore[attr-defined]


def _torch_model(data: st.DataObject) -> None:
    spec = torch_grammar.draw_spec(HypothesisChooser(data, frozenset(KNOWN_DEFECTS_TORCH)))
    note(repr(spec))
    outcome = torch_grammar.evaluate(spec)
    _tally("torch", outcome)
    assert outcome.status != "defect", str(outcome)


def _keras_model(data: st.DataObject) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from .fuzz import keras_grammar

    spec = keras_grammar.draw_spec(HypothesisChooser(data, frozenset(KNOWN_DEFECTS_KERAS)))
    note(repr(spec))
    outcome = keras_grammar.evaluate(spec)
    _tally("keras", outcome)
    assert outcome.status != "defect", str(outcome)


# -- the CI budget ---------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=HEALTH, database=None)
@given(data=st.data())
def test_random_torch_models_are_refused_by_name_or_exact(data: st.DataObject) -> None:
    _torch_model(data)


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=HEALTH, database=None)
@given(data=st.data())
def test_random_keras_models_are_refused_by_name_or_exact(data: st.DataObject) -> None:
    _keras_model(data)


# -- the longer run (-m slow) ----------------------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=HEALTH, database=None)
@given(data=st.data())
def test_many_random_torch_models_are_refused_by_name_or_exact(data: st.DataObject) -> None:
    _torch_model(data)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=HEALTH, database=None)
@given(data=st.data())
def test_many_random_keras_models_are_refused_by_name_or_exact(data: st.DataObject) -> None:
    _keras_model(data)


# -- the known defects, each by its minimal reproducer: strict xfail, so that a fix is noticed -------
@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            "int_mask_bool_is_a_number.py",
            marks=pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS_TORCH["context_dtype=uint8_bool"]),
        ),
    ],
)
def test_known_defect_is_fixed(script: str) -> None:
    """Each reproducer exposes ``check()``, which asserts the promised behaviour."""
    namespace = runpy.run_path(str(REPRODUCERS / script), run_name="reproducer")
    namespace["check"]()
