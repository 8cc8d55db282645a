"""Generative models for :mod:`infcomp` (installed as ``infcomp_models``)."""
