"""Backbones, heads and meta-architectures (registered in detectron2 registries on import)."""
from . import backbone  # noqa: F401,E402  (build_vgg16_dilated_backbone, build_resnet_dilated_backbone)
from . import meta_arch  # noqa: F401
