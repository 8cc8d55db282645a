"""Files of format version 1, upgraded to today's layout as they load, tensors unchanged.

Version 1 kept the image encoder's settings among the network's, one embedding matrix for
every proposal family (a row per built-in family), the encoder under ``embed.``, and no
gradient-balancer state.  Today each family's embedding is a parameter of its own, owned by
the family's first address (so the optimiser holds it in that address's group).
"""

from __future__ import annotations

from .nn.network import split_config

__all__ = ["upgrade", "upgrade_optimizer"]

#: What a setting meant in version-1 files saved before the setting existed (they lack its key).
DEFAULTS = {"conv_norm": False, "share_heads": False, "column_rnn": 0, "memory_columns": 16}
#: The rows of version 1's family embedding matrix.
FAMILY_ROWS = ("categorical", "bernoulli", "normal_mixture", "lognormal_mixture", "beta_interval",
               "poisson_mixture", "binomial", "prior")
_RENAMED = (("embed.embeds.", "encoder.per_site."), ("embed.", "encoder."))


def _families_in_order(sites) -> list:
    seen = []
    for d in sites:
        if d["family"] not in seen:
            seen.append(d["family"])
    return seen


def upgrade(data: dict) -> dict:
    """A version-1 file's contents in today's layout; the optimiser's state is upgraded once the
    network is built (:func:`upgrade_optimizer`)."""
    fields, cnn = split_config({**DEFAULTS, **data["config"]}, warn=False)
    state = {}
    for key, value in data["state_dict"].items():
        for old, new in _RENAMED:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if key != "family_embedding.weight":
            state[key] = value
    rows = data["state_dict"]["family_embedding.weight"]
    for family in _families_in_order(data["sites"]):
        state[f"family_embedding.{family}"] = rows[FAMILY_ROWS.index(family)].clone()
    if fields.get("balance_gradients", True):
        state["balancer._extra_state"] = []
    out = dict(data, version=2, config=fields, state_dict=state, families=[],
               encoder={"cnn": cnn, "custom": bool(data["custom_embedding"])})
    out.pop("custom_embedding")
    out["upgrade_optimizer"] = data.get("optimizer") is not None
    return out


def upgrade_optimizer(state: dict, net) -> dict:
    """A version-1 Adam state for ``net``'s parameter groups: the core group without the family
    matrix, and each family's row at the head of its first address's group."""
    groups = state["param_groups"]
    n_encoder = sum(1 for n, _ in net.named_parameters() if n.startswith("encoder."))
    core = groups[0]["params"]
    family_index = core[n_encoder]  # version 1's core group: encoder, family matrix, LSTM, attention
    new_state, new_groups, count = {}, [], 0

    def take(old_index, value=None):
        nonlocal count
        if value is not None:
            new_state[count] = value
        elif old_index in state["state"]:
            new_state[count] = state["state"][old_index]
        count += 1
        return count - 1

    new_groups.append(dict(groups[0], params=[take(i) for i in core if i != family_index]))
    first = {}
    for name, spec in net.specs.items():
        first.setdefault(spec.family, name)
    for group, name in zip(groups[1:], net.specs):
        params = []
        family = net.specs[name].family
        if first[family] == name:
            params.append(take(None, _family_row(state["state"].get(family_index), FAMILY_ROWS.index(family))))
        params += [take(i) for i in group["params"]]
        new_groups.append(dict(group, params=params))
    return {"state": new_state, "param_groups": new_groups}


def _family_row(adam_state, row):
    if adam_state is None:
        return None
    return {k: v[row].clone() if v.dim() > 0 else v.clone() for k, v in adam_state.items()}  # step: a tensor of its own
