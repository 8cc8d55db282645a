"""Bounded counts: a Binomial with the prior's total count and a logit added to the prior's."""

import pyro.distributions as dist

from .base import ProposalFamily, broadcast_context, flat


class BinomialProposal(ProposalFamily):
    name = "binomial"

    def fits(self, prior):
        return prior.event_shape == () and isinstance(prior, dist.Binomial)

    def num_params(self, spec):
        return 1

    def context(self, prior):
        return broadcast_context(prior, prior.total_count, prior.logits)

    def features(self, value, context, spec):
        return flat(value / context[..., 0].clamp(min=1), spec)

    def proposal(self, params, context):
        return dist.Binomial(total_count=context[..., 0], logits=context[..., 1] + params[..., 0], validate_args=False)
