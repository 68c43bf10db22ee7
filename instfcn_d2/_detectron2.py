"""Whether detectron2 can be imported. Without it the package still serves exported models
(:mod:`instfcn_d2.deploy`), the native layers (:mod:`instfcn_d2.layers`) and the detectron2-free
parts of the methods (inference after the maps); training, configs and datasets need detectron2."""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # a deployment machine
    DETECTRON2_IMPORT_ERROR = e
else:
    DETECTRON2_IMPORT_ERROR = None


def missing_detectron2(what: str) -> ImportError:
    """The error raised when ``what`` is used on a machine without detectron2."""
    return ImportError(
        f"{what} needs detectron2, which could not be imported ({DETECTRON2_IMPORT_ERROR}). Without "
        "detectron2, instfcn_d2 runs exported models only (instfcn_d2.deploy.load); install detectron2 to "
        "train, evaluate or export"
    )
