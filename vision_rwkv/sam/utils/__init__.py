"""Image and prompt transforms of RWKV-SAM (segment-anything conventions)."""
