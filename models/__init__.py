"""Model-family specs: per-component I/O descriptors, checkpoint configs, the artifact manifest
contract, the CLIP vocabulary and the demo model's world. Plain Python and numpy; imports neither
the runtime nor the exporter (the demo's training recipe imports torch lazily), so both read the
same source of truth."""
