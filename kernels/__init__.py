"""The runtime's own compute: the guidance + sampler update and latent/image conversions.

numpy on the host for now; device versions (a tiny ONNX graph, Triton) must equal these.
"""
