"""The suite's shared test models: the standard small models that many test files explain, written once.

(captum keeps its shared test models in one module its test files import; zennit keeps its fixtures in conftest.py.
tests/zoo/ is another thing: the models of real libraries, darts, neuralforecast, the foundation forecasters.)

- ``tests.models.torch`` (torch, a core dependency: import it directly):

  - ``RecurrentHead(kind, inputs, hidden, outputs, ...)``: the recurrent classifier/forecaster most tests use,
    ``[embedding | projection] → nn.LSTM / nn.GRU / nn.RNN (layers, bidirectional) → read → nn.Linear → [output]``.
    ``read`` picks what the head sees (``"last"``: the last step, ``"tanh_last"``, ``"relu_last"``, ``"steps"``: every
    step, ``"mean"``, ``"max"``, ``"state"``: the last layer's final hidden state), or is a function
    ``(outputs, state) -> tensor``; ``prepare`` is a function of the input before the layers (a slice, a cleaning);
    ``output`` a function of the head's output (``torch.tanh``, ``torch.sigmoid``). ``names`` gives the attribute
    names of the submodules in the order they are built (``"lstm head"``, ``"embedding gru out"``...), so that a
    test's ``model.lstm`` and the names rnnshap reports stay those of the model the test was written with.
    The submodules are built in that order, so the parameters a seed gives are those of the hand-written class.
  - ``Dense(inputs, hidden, outputs, activation=..., names="inner relu out")``: Linear → activation → Linear.
  - ``Function(fn)``: a model whose forward is ``fn(*inputs)`` (a closure over the test's own modules, or none):
    one operation under test, one refusal to provoke, without a class per case.
  - ``Composite(fn, **parts)``: a model whose forward is ``fn(self, *inputs)`` over the parts given
    (``Composite(lambda m, x: m.head(m.lstm(x)[0][:, -1]), lstm=nn.LSTM(3, 6, batch_first=True), head=nn.Linear(6, 2))``):
    the parts become attributes under the names given, in the order given, and keyword arguments are built in the order
    written, so a seed gives the parameters (and names) of the hand-written class whose ``__init__`` built them in that
    order. A class whose ``__init__`` only builds layers and whose forward is one expression is one ``Composite``.

- ``tests.models.flax`` (Flax NNX: import it after ``pytest.importorskip("flax.nnx")``, so that a test file without
  Flax skips as it did):

  - ``FlaxRecurrent(cell, features, hidden, outputs, seed, read=...)``: nnx.RNN over an LSTMCell/GRUCell and a
    Linear head, float64; and ``torch_twin(flax_model)``: the same function as a ``RecurrentHead`` with the Flax
    model's weights (gate orders and biases mapped).
  - ``FlaxFunction(fn)``: ``Function``'s twin; ``FlaxComposite(fn, **parts)``: ``Composite``'s.

A model that exists to express one case (a forward that writes in place, a hook, a draw, a deliberately odd shape)
stays in its test file; tests/test_test_models.py bounds how many model classes the test files still define.
"""
