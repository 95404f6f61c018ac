"""The runtime: artifact reading, backend sessions, sampler plans and pipelines.

Imports numpy and, lazily, one backend package; never torch, diffusers or transformers.
"""
