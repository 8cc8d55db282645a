"""infcomp: inference compilation for Pyro.

``compile(model, observe=...)`` trains a neural importance-sampling guide on the
model's own prior draws; ``infer(model, guide, observation)`` uses it.
"""

from . import abc, diagnostics, weights
from .files import load
from .guide import Guide
from .infer import greedy, infer
from .marginal import GuideMarginal, guide_marginal
from .recalibrate import Recalibration, fit_recalibration
from .nn.encoders import CNNConfig
from .nn.network import NetworkConfig
from .nn.proposals import ProposalFamily, register_family
from .posterior import Marginal, Posterior
from .refine import Refine, RefinementReport
from .shards import TraceShards, save_traces
from .temper import temper
from .weights import UnreliableWeightsWarning, WeightDiagnostics
from .train import Callback, RunStats, compile

__all__ = [
    "compile", "save_traces", "TraceShards", "infer", "greedy", "guide_marginal", "GuideMarginal", "fit_recalibration", "Recalibration", "temper", "load", "Guide", "Posterior", "Marginal", "abc", "diagnostics", "weights",
    "Refine", "RefinementReport", "UnreliableWeightsWarning", "WeightDiagnostics",
    "NetworkConfig", "CNNConfig", "ProposalFamily", "register_family", "Callback", "RunStats",
]
__version__ = "0.1.0"
