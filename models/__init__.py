"""Model-family specs: per-component I/O descriptors, checkpoint configs, the artifact manifest
contract and the CLIP vocabulary. Pure data and numpy-free Python; imports neither torch nor the
runtime, so both the exporter and the runtime read the same source of truth."""
