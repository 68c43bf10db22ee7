"""Export of trained models (needs detectron2): :func:`.exporter.export_model` writes the folder
that :func:`instfcn_d2.deploy.load` serves without detectron2; :mod:`.graphs` is the part carried
as a graph."""
from .exporter import export_model
from .graphs import dense_graph_for

__all__ = ["export_model", "dense_graph_for"]
