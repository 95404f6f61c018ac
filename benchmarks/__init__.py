"""The benchmark harness. For now one measurement, the UNet step (`python -m sdrt.benchmarks.unet_step`);
`sdrt bench` with peers, memory probes and reports builds on it."""
