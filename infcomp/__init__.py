"""infcomp: inference compilation for Pyro.

``compile(model, observe=...)`` trains a neural importance-sampling guide on the
model's own prior draws; ``infer(model, guide, observation)`` uses it.
"""

from . import abc
from .guide import Guide, load
from .infer import greedy, infer
from .posterior import Marginal, Posterior
from .temper import temper
from .train import compile

__all__ = ["compile", "infer", "greedy", "temper", "load", "Guide", "Posterior", "Marginal", "abc"]
__version__ = "0.1.0"
