"""The runtime's own compute: the guidance + sampler update and latent/image conversions.

The fused step (guidance, update, next UNet input) exists once per compute target and each
form must equal the numpy one: sampler_step.py (numpy, the reference), step_graph.py (the
shipped ONNX graph sampler_step.onnx, for ONNX Runtime device loops), triton_step.py (CUDA).

Run-time compute only: the ONNX attention fusion is an export-time graph rewrite
(export.fusions) and PSNR/SSIM are quality metrics (export.metrics).
"""
