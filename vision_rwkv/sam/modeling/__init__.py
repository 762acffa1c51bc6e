"""RWKV-SAM building blocks, laid out like segment-anything's ``modeling`` package."""
