"""``add_instfcn_config(cfg)``: the project's config keys, added to a detectron2 ``CfgNode``.

detectron2 rejects unknown keys in YAML files and ``KEY VALUE`` overrides (``merge_from_file``
raises ``KeyError: 'Non-existent config key: ...'``), so every key a config file of this project
uses must be declared here first.
"""
from detectron2.config import CfgNode as CN


def add_instfcn_config(cfg: CN) -> CN:
    """Add instfcn-d2's keys to ``cfg`` in place (and return it, for chaining).

    Calling it twice is harmless: keys already present keep their values.
    """
    _C = cfg
    if _C.is_frozen():
        raise ValueError("add_instfcn_config needs a mutable config; call it before cfg.freeze()")

    # Data loading (instfcn_d2.data.dataset_mapper).
    if "INSTFCN" not in _C:
        _C.INSTFCN = CN()
        # Training: side of a random square crop taken after the scale jitter (0 = none); images
        # smaller than it are kept whole. Bounds the cost of large training scales.
        _C.INSTFCN.TRAIN_CROP_SIZE = 0
    # A COCO-format instance dataset given by its files, no Python needed (instfcn_d2.data.coco_json,
    # docs/custom_dataset.md): tools/train_net.py registers each JSON with register_coco_instances
    # and sets DATASETS.TRAIN / TEST and MODEL.ROI_HEADS.NUM_CLASSES from it. "" = not used.
    if "COCO_JSON_TRAIN" not in _C.DATASETS:
        _C.DATASETS.COCO_JSON_TRAIN = ""  # the training annotations (instances JSON)
        _C.DATASETS.COCO_IMAGE_ROOT_TRAIN = ""  # the folder its images' file_name are relative to
        _C.DATASETS.COCO_JSON_TEST = ""  # the evaluation annotations
        _C.DATASETS.COCO_IMAGE_ROOT_TEST = ""
    from .modeling.backbone.config import add_backbone_config  # MODEL.VGG, MODEL.DILATED_RESNET

    add_backbone_config(_C)
    from .modeling.instance_fcn.config import add_instance_fcn_config  # MODEL.INSTANCE_FCN

    add_instance_fcn_config(_C)
    from .modeling.fcis.config import add_fcis_config  # MODEL.FCIS

    add_fcis_config(_C)
    from .modeling.biseg.config import add_biseg_config  # MODEL.BISEG

    add_biseg_config(_C)
    return cfg


class ConfigKeyError(KeyError):
    """A config file or override names a key that does not exist (with the closest valid keys)."""

    def __str__(self):  # KeyError would print the message repr-quoted
        return str(self.args[0])


def _all_keys(node: CN, prefix: str = ""):
    for key, value in node.items():
        full = f"{prefix}{key}"
        yield full
        if isinstance(value, CN):
            yield from _all_keys(value, full + ".")


def _unknown_key_error(cfg: CN, err: Exception, source: str) -> ConfigKeyError:
    import difflib
    import re

    msg = str(err.args[0]) if err.args else str(err)
    match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", msg)
    if not match:
        return ConfigKeyError(f"{source}: {msg}")
    bad = match.group(1)
    close = difflib.get_close_matches(bad, list(_all_keys(cfg)), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigKeyError(f"{source}: unknown config key '{bad}'{hint}")


def get_instfcn_cfg(config_file: str = "", opts=()) -> CN:
    """detectron2's ``get_cfg()`` + :func:`add_instfcn_config`, merged with a YAML file and
    ``KEY VALUE`` overrides. A misspelt key raises :class:`ConfigKeyError` naming the file (or
    "command line") and the key, with the nearest valid keys as suggestions."""
    import os

    from detectron2.config import get_cfg

    cfg = add_instfcn_config(get_cfg())
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise _unknown_key_error(cfg, e, config_file) from None
    if opts:
        flags = [o for o in opts[::2] if str(o).startswith("--")]
        if flags:
            raise ValueError(
                f"{flags[0]} stands among the KEY VALUE overrides {list(opts)}: flags go before the overrides "
                "(everything after the first KEY is read as overrides, as in detectron2's tools)"
            )
        if len(opts) % 2:
            raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:  # yacs asserts on unknown override keys
            raise _unknown_key_error(cfg, e, "command-line override") from None
    return cfg
