"""Backbones, heads and meta-architectures (registered in detectron2 registries on import)."""
