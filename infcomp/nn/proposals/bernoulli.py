"""Bernoulli addresses: a logit added to the prior's."""

import pyro.distributions as dist

from .base import ProposalFamily, flat


class BernoulliProposal(ProposalFamily):
    name = "bernoulli"

    def fits(self, prior):
        return prior.event_shape == () and isinstance(prior, dist.Bernoulli)

    def num_params(self, spec):
        return 1

    def context(self, prior):
        return prior.logits.float().unsqueeze(-1)

    def features(self, value, context, spec):
        return flat(value.float() * 2 - 1, spec)

    def proposal(self, params, context):
        return dist.Bernoulli(logits=(context + params).squeeze(-1), validate_args=False)
