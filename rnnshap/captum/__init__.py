"""Captum's ``DeepLift`` and ``DeepLiftShap`` call, answered by rnnshap's exact rules.

Change one import and keep the code that calls Captum::

    from captum.attr import DeepLiftShap          # before
    from rnnshap.captum import DeepLiftShap       # after

    explainer = DeepLiftShap(model)
    attributions, delta = explainer.attribute(x, baselines=background, target=3, return_convergence_delta=True)

``attribute`` takes Captum's arguments (``inputs``, ``baselines``, ``target``,
``additional_forward_args``, ``return_convergence_delta``) and returns what Captum returns, in
Captum's shapes, dtypes and devices: a tensor for a tensor, a tuple for a tuple, and with
``return_convergence_delta=True`` the pair ``(attributions, delta)``. What differs is the rules:
Captum hooks activation modules (``nn.ReLU``, ``nn.Tanh``, ...) and takes plain gradients through
everything else, which includes the gates of ``nn.LSTM`` / ``nn.GRU`` and every product of two
input-dependent tensors, so its attributions miss ``f(x) - f(baseline)`` there (``delta`` shows by
how much). rnnshap's rules are exact: ``delta`` is float rounding. On models made of linear layers
and hooked activations only (a ReLU or tanh MLP) both compute the same DeepLIFT Rescale values.

Captum's layer and neuron classes take the same route: :class:`LayerDeepLift` and
:class:`LayerDeepLiftShap` attribute to a layer's output (or input), an ``nn.LSTM``'s hidden states over
time included, exactly (Captum cannot see inside the LSTM and refuses its tuple output);
:class:`NeuronDeepLift` and :class:`NeuronDeepLiftShap` attribute one neuron of a layer (a hidden unit at
a time step) to the inputs. See docs/captum.md, "Layers and neurons".

This module does not need Captum installed. It is a package of three: :mod:`.deeplift` (the model
doors), :mod:`.layers` (the layer and neuron doors, built on the model doors) and :mod:`.arguments`
(Captum's forms of inputs, baselines and targets, which both use).
"""

from .arguments import BaselineError
from .deeplift import DeepLift, DeepLiftShap
from .layers import LayerDeepLift, LayerDeepLiftShap, NeuronDeepLift, NeuronDeepLiftShap

__all__ = [
    "BaselineError", "DeepLift", "DeepLiftShap", "LayerDeepLift", "LayerDeepLiftShap", "NeuronDeepLift", "NeuronDeepLiftShap",
]  # fmt: skip
