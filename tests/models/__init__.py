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

- ``tests.models.flax`` (Flax NNX: import it after ``pytest.importorskip("flax.nnx")``, so that a test file without
  Flax skips as it did):

  - ``FlaxRecurrent(cell, features, hidden, outputs, seed, read=...)``: nnx.RNN over an LSTMCell/GRUCell and a
    Linear head, float64; and ``torch_twin(flax_model)``: the same function as a ``RecurrentHead`` with the Flax
    model's weights (gate orders and biases mapped).
  - ``FlaxFunction(fn)``: ``Function``'s twin.

A model that exists to express one case (a forward that writes in place, a hook, a draw, a deliberately odd shape)
stays in its test file; tests/test_test_models.py bounds how many model classes the test files still define.
"""
