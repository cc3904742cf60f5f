"""Keras 3 (TensorFlow and JAX backends) support: the Keras engine of ``rnnshap.DeepExplainer(keras_model, background)``.

Importing this package does not import TensorFlow; :class:`~rnnshap.DeepExplainer` hands a Keras
model to :class:`rnnshap.engines.keras.engine.KerasEngine`, which does. The results, shapes and
errors are those of the PyTorch explainer.

Supported: Functional and Sequential models (nested too) and subclassed models of Dense, EinsumDense and
Conv1D/Conv2D (any padding, ``"causal"`` included; with any elementwise activation, softmax or log-softmax),
Activation, ReLU, LeakyReLU, PReLU, ELU, Softmax, Embedding (integer inputs are token ids, attributed per
token), LSTM, GRU (``reset_after`` True or False), SimpleRNN, ``RNN`` over LSTMCell/GRUCell/SimpleRNNCell or
StackedRNNCells, the cells called on their own, Bidirectional (every merge mode), TimeDistributed, Masking and
``Embedding(mask_zero=True)``, Attention, AdditiveAttention, MultiHeadAttention (:mod:`.attention`),
LayerNormalization, GroupNormalization, RMSNormalization, reshaping, average pooling, max pooling
(MaxPooling1D/2D/3D, GlobalMaxPooling1D/2D, channels last or first), merging (Add, Subtract, Average,
Concatenate, Multiply of two inputs), BatchNormalization and dropout at inference, keras ops (:mod:`.kops`),
and Lambda layers and Layer/Model subclasses whose ``call()`` traces into those or into TensorFlow ops with
rules (:mod:`.trace`). Recurrent layers take ``return_sequences``,
``return_state``, ``go_backwards`` and initial states given as inputs. Layers compute in their own dtype
policy (``mixed_float16`` too, checked at that precision). A model with several outputs is explained as one
flat output vector (``engine.output_layout``), or one output with ``output=`` (:mod:`rnnshap.engines.outputs`).

Masks propagate as in Keras 3's ``Layer.__call__``: a layer's ``call`` gets the mask Keras would
give it (none to a recurrent layer given initial states), and a layer that does not support masking
(Conv1D, pooling, cropping, padding, reshaping, ...) drops it. With a mask, each reference is read
with the mask of the input it is paired with (as packed sequences are on the PyTorch side): masked
steps get no attribution, and the attributions of a sample add up to its output minus the mean
output over references read with its mask (``explainer(X).base_values``).

Every explained block checks that the pass reproduces the model: the input side against
``model(x)``, the reference side against the model on the references wherever a reference is read
with the masks the model computes on it; a mismatch raises :class:`~rnnshap.RnnShapError`. Anything else
(stateful RNNs, ops without a rule, calls that cannot be traced) is refused by name.

The modules, from the engine down:

- ``engine.py``: :class:`~rnnshap.engines.keras.engine.KerasEngine`, blocks of (sample, reference) pairs
  through the dual pass and its gradient, checked against the model;
- ``inputs.py``: what the engine is given to explain (one array, a list, named inputs), checked and in the
  model's dtypes, and what to say when arrays do not fit the model;
- ``walker.py``: the walker, a model run on Duals layer by layer, with Keras' masks; hands each keras op
  to ``kops.py`` and each layer to its entry in the layer table;
- ``layer_rules.py``: the layer table, ``{layer class: rule}``, each entry the layer's refusal check and its
  call (dense, convolution, pooling, merging, masking, ...), and ``problems()``, every refusal of a model;
- ``recurrent.py``: the recurrent layers step by step (LSTM, GRU, SimpleRNN, ConvLSTM, Bidirectional, the
  cells), and ``fused.py`` beside it, the fused LSTM/GRU path over a grid of pairs;
- ``attention.py``: attention, EinsumDense and the normalization layers;
- ``kops.py``: keras ops by their rules; ``picked.py``: indices picked by argmax/argmin/top_k and their uses;
- ``trace.py``: Lambda layers and custom ``call()``, traced into a Functional or a TensorFlow graph;
- ``activations.py``: activations by the catalog's rules, and weights in the compute dtype;
- ``dual.py``: the Dual (input side, reference side) and the rules on it;
- ``pass_state.py``: what a pass carries (``Run``, token ids) and the refusals;
- ``backend.py``: what differs between TensorFlow and JAX (the gradient of a pass, compiled steps, dtypes);
- ``private.py``: every private part of Keras the engine reads, and the Keras versions it was verified on.
"""

from __future__ import annotations

from typing import Any

_KERAS_MODULES = ("keras", "tf_keras", "tensorflow")


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras layer or model, checked by module name without importing TensorFlow."""
    return any(getattr(klass, "__module__", "").startswith(_KERAS_MODULES) for klass in type(model).__mro__)


__all__ = ["is_keras_model"]
