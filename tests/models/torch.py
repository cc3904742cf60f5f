"""PyTorch models shared by the test files (see tests/models/__init__.py)."""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import Tensor, nn

Read = Callable[[Tensor, Any], Tensor]


def last(out: Tensor, state: Any) -> Tensor:
    return out[:, -1]


def tanh_last(out: Tensor, state: Any) -> Tensor:
    return torch.tanh(out[:, -1])


def relu_last(out: Tensor, state: Any) -> Tensor:
    return torch.relu(out[:, -1])


def steps(out: Tensor, state: Any) -> Tensor:
    return out


def mean(out: Tensor, state: Any) -> Tensor:
    return out.mean(1)


def maximum(out: Tensor, state: Any) -> Tensor:
    return out.max(dim=1).values


def final_state(out: Any, state: Any) -> Tensor:
    h = state[0] if isinstance(state, tuple) else state  # (h, c) for an LSTM
    return h[-1]


READS: dict[str, Read] = {
    "last": last, "tanh_last": tanh_last, "relu_last": relu_last, "steps": steps, "mean": mean, "max": maximum,
    "state": final_state,
}  # fmt: skip

LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentHead(nn.Module):
    """``[embedding | projection] → recurrent layer → read → Linear head → [output]`` (tests/models/__init__.py).

    ``kind``: "lstm", "gru" or "rnn"; ``vocabulary``: token ids in, through an ``nn.Embedding(vocabulary, inputs)``;
    ``project``: an ``nn.Linear(project, inputs)`` and ``project_activation`` at every step first; ``names``: the
    attribute names of the submodules in the order they are built (embedding or projection, layer, head);
    ``layer``: a recurrent layer built already (``RecurrentHead.over(layer, outputs)``)."""

    def __init__(
        self,
        kind: str,
        inputs: int,
        hidden: int,
        outputs: int,
        *,
        layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = True,
        dropout: float = 0.0,
        vocabulary: int | None = None,
        project: int | None = None,
        project_activation: Callable[[Tensor], Tensor] = torch.tanh,
        read: Union[str, Read] = "last",
        head_inputs: int | None = None,
        prepare: Callable[[Tensor], Tensor] | None = None,
        output: Callable[[Tensor], Tensor] | None = None,
        names: str = "rnn head",
        layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.names = tuple(names.split())
        before = vocabulary is not None or project is not None
        if len(self.names) != 2 + before:
            raise ValueError(f"names {names!r}: one name for each submodule")
        if before:
            first = nn.Embedding(vocabulary, inputs) if vocabulary is not None else nn.Linear(project, inputs)  # type: ignore[arg-type]
            setattr(self, self.names[0], first)
        if layer is None:
            layer = LAYERS[kind](inputs, hidden, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional,
                                 dropout=dropout)  # fmt: skip
        setattr(self, self.names[-2], layer)
        width = hidden * (2 if bidirectional else 1) if head_inputs is None else head_inputs
        setattr(self, self.names[-1], nn.Linear(width, outputs))
        self.embedded, self.projected = vocabulary is not None, project is not None
        self.project_activation = project_activation
        self.read = READS[read] if isinstance(read, str) else read
        self.prepare, self.output = prepare, output

    @classmethod
    def over(cls, layer: nn.RNNBase, outputs: int, **options: Any) -> RecurrentHead:
        """The head over a recurrent layer built already (its parameters drawn before the head's)."""
        kind = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}[type(layer)]
        return cls(kind, layer.input_size, layer.hidden_size, outputs, bidirectional=layer.bidirectional, layer=layer,
                   **options)  # fmt: skip

    @property
    def rnn_layer(self) -> nn.Module:
        return getattr(self, self.names[-2])

    @property
    def head_layer(self) -> nn.Module:
        return getattr(self, self.names[-1])

    def forward(self, x: Tensor) -> Tensor:
        if self.prepare is not None:
            x = self.prepare(x)
        if self.embedded:
            x = getattr(self, self.names[0])(x)
        elif self.projected:
            x = self.project_activation(getattr(self, self.names[0])(x))
        out, state = getattr(self, self.names[-2])(x)
        y = getattr(self, self.names[-1])(self.read(out, state))
        return y if self.output is None else self.output(y)


class Dense(nn.Module):
    """``Linear(inputs, hidden) → activation → Linear(hidden, outputs) → [output]``; ``names``: the three submodules'
    names (built in that order)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, activation: nn.Module | None = None,
                 names: str = "inner relu out", output: Callable[[Tensor], Tensor] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.output = output
        self.names = tuple(names.split())
        setattr(self, self.names[0], nn.Linear(inputs, hidden))
        setattr(self, self.names[1], nn.ReLU() if activation is None else activation)
        setattr(self, self.names[2], nn.Linear(hidden, outputs))

    def forward(self, x: Tensor) -> Tensor:
        a, act, b = (getattr(self, name) for name in self.names)
        y = b(act(a(x)))
        return y if self.output is None else self.output(y)


class Function(nn.Module):
    """A model whose forward is ``fn(*inputs)``: one operation, one refusal, without a class per case."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs)


class Composite(nn.Module):
    """A model of the given parts whose forward is ``fn(self, *inputs)``: ``Composite(lambda m, x: m.head(m.lstm(x)[0][:, -1]),
    lstm=nn.LSTM(3, 6, batch_first=True), head=nn.Linear(6, 2))``.

    The parts are attributes under the names given (modules, parameters and ``nn.Buffer`` s registered, as torch's own
    ``setattr`` registers them; anything else kept as is), set
    in the order given; Python builds keyword arguments in the order written, so written in the hand-written class's
    order the same seed gives its parameters, under the same names."""

    def __init__(self, fn: Callable[..., Any], **parts: Any) -> None:
        super().__init__()
        self.fn = fn
        for name, part in parts.items():
            setattr(self, name, part)

    def forward(self, *inputs: Any, **options: Any) -> Any:
        return self.fn(self, *inputs, **options)
