"""An explanation leaves the process as it found it: no function of torch replaced, no compiler setting left changed,
no switch read from the environment, no allocator setting of the C library made."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import rnnshap

from ...models.torch import Composite, RecurrentHead

PACKAGE = Path(rnnshap.__file__).resolve().parent


def _functions(module: ModuleType) -> dict[str, Any]:
    """Every callable a module holds, by name, as the objects themselves."""
    return {name: value for name, value in vars(module).items() if callable(value)}


def _torch_state() -> dict[str, Any]:
    from torch import fx
    from torch._dynamo import config as dynamo_config
    from torch.fx.experimental import proxy_tensor

    return {
        "torch": _functions(torch),
        "torch.nn.functional": _functions(torch.nn.functional),
        "torch.Tensor": dict(vars(torch.Tensor)),
        "torch.fx": _functions(fx),
        "proxy_tensor": _functions(proxy_tensor),
        "dynamo config": dynamo_config.get_config_copy(),
        "grad": torch.is_grad_enabled(),
        "default dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
    }


def _cell_loop(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = c = x.new_zeros(x.shape[0], m.cell.hidden_size)
    for t in range(x.shape[1]):
        h, c = m.cell(x[:, t], (h, c))
    return m.head(h)


@pytest.mark.parametrize("compile_", [False, "trace", "capture"])
def test_explaining_replaces_no_function_of_torch_and_leaves_its_settings(compile_: Any) -> None:
    torch.manual_seed(0)
    models = [
        RecurrentHead.over(nn.LSTM(3, 5, batch_first=True), 5).eval(),
        Composite(_cell_loop, cell=nn.LSTMCell(3, 5), head=nn.Linear(5, 2)).eval(),
    ]
    background, x = torch.randn(4, 9, 3), torch.randn(2, 9, 3)
    before = _torch_state()
    for model in models:
        explainer = rnnshap.DeepExplainer(model, background, compile=compile_)
        for _ in range(3):  # (a traced program is made at the second call and run at the third)
            values = explainer.shap_values(x)
        assert np.isfinite(np.asarray(values)).all()
    after = _torch_state()
    changed = sorted(
        f"{where}.{name}" if isinstance(was, dict) else where
        for where, was in before.items()
        for name in (set(was) | set(after[where]) if isinstance(was, dict) else [None])
        if (was.get(name) is not after[where].get(name) and was.get(name) != after[where].get(name) if isinstance(was, dict)
            else was != after[where])
    )  # fmt: skip
    assert not changed, f"explaining changed the process: {changed}"


def test_the_package_reads_no_switch_of_its_own_from_the_environment_and_tunes_no_allocator() -> None:
    """Behaviour is chosen by arguments, never by an ``RNNSHAP_*`` variable; the C library's ``malloc`` is the user's to
    tune (docs/faq.md says how)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"RNNSHAP_\w+", r"\bmallopt\b", r"\bmalloc_trim\b"):
            found += [f"{path.relative_to(PACKAGE)}: {m}" for m in re.findall(pattern, text)]
    assert not found, found


def test_an_explainer_let_go_frees_its_engine_at_once() -> None:
    """No reference cycle through the engine: an explainer let go frees its engine (which holds the model, the
    background and the reference passes kept between calls) when its last reference goes, not at Python's next
    garbage collection."""
    import gc
    import weakref

    torch.manual_seed(0)
    explainer = rnnshap.DeepExplainer(RecurrentHead("lstm", 3, 4, 2).eval(), torch.randn(4, 5, 3))
    explainer.shap_values(torch.randn(2, 5, 3))
    engine = weakref.ref(explainer.engine)
    collecting = gc.isenabled()
    gc.disable()
    try:
        del explainer
        assert engine() is None
    finally:
        if collecting:
            gc.enable()


class _Config:
    """A stand-in for a transformers config: the experts' form it names (``_experts_implementation_internal``)."""

    def __init__(self, form: str) -> None:
        self._experts_implementation_internal = form


def _experts(config: _Config, seen: list[str], pause: Any) -> nn.Module:
    """A stand-in for transformers' experts module (``use_experts_implementation``): the form its config names at
    each call, recorded; the same function in every form."""

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        m.seen.append(m.config._experts_implementation_internal)
        m.pause()
        return m.linear(x)

    return Composite(forward, config=config, _is_expert_parallel=False, seen=seen, pause=pause, linear=nn.Linear(4, 2))


def test_experts_switched_to_their_batched_form_by_passes_that_overlap_are_put_back_once_all_are_done() -> None:
    """Two explainers of one model in two threads: every pass of each runs the experts in the batched form, whatever
    the other is doing, and the config's own form is back once both are done (not the batched form one of them saw)."""
    import threading
    import time

    from rnnshap.engines.pytorch.model_forms import BatchedExperts, experts_configs

    config, seen = _Config("grouped_mm"), []
    both = threading.Barrier(2, timeout=10)
    model = _experts(config, seen, lambda: time.sleep(0.001)).eval()  # (each pass lets the other thread run)
    configs = experts_configs(model)
    assert configs == [config]
    errors: list[BaseException] = []

    def explain() -> None:
        try:
            wrapped = BatchedExperts(model, configs)
            for _ in range(20):
                wrapped(torch.randn(3, 4))
            both.wait()  # (one is done with its passes while the other still runs some)
            wrapped(torch.randn(3, 4))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=explain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert set(seen) == {"batched_mm"} and len(seen) == 42
    assert config._experts_implementation_internal == "grouped_mm"
    assert experts_configs(model) == [config]  # (found again: its own form is not the batched one)
