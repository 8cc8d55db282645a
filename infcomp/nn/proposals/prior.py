"""The fallback: addresses whose family has no head propose from their prior (no parameters)."""

import torch

from .base import ProposalFamily, flat


class PriorProposal(ProposalFamily):
    name = "prior"
    has_head = False

    def fits(self, prior):
        return True

    def num_params(self, spec):
        return 0

    def context(self, prior):
        return torch.zeros(prior.batch_shape + (0,))

    def features(self, value, context, spec):
        v = value.float()
        return flat(torch.nan_to_num(v), spec)
