"""Categorical addresses: a softmax over the prior's support, as logits added to the prior's."""

import pyro.distributions as dist
import torch.nn.functional as F

from .base import ProposalFamily


class CategoricalProposal(ProposalFamily):
    name = "categorical"

    def fits(self, prior):
        return prior.event_shape == () and isinstance(prior, dist.Categorical)

    def num_params(self, spec):
        return spec.num_categories

    def context(self, prior):
        return prior.logits.float()

    def features(self, value, context, spec):
        onehot = F.one_hot(value.long(), spec.num_categories).float()
        return onehot.reshape(onehot.shape[: onehot.dim() - len(spec.value_shape) - 1] + (-1,))

    def feature_size(self, spec):
        return super().feature_size(spec) * spec.num_categories

    def proposal(self, params, context):
        # prior logits of -inf stay -inf: the proposal never leaves the prior's support,
        # and zero-initialised heads start out as the prior
        return dist.Categorical(logits=context + params, validate_args=False)

    def point(self, params, context):
        return (context + params).argmax(-1)
