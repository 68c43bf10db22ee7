"""Evaluators of instfcn-d2: class-agnostic segment-proposal recall (InstanceFCN's AR@N) and
VOC / SBD region AP (mAPr@0.5 / @0.7 of FCIS and BiSeg), and the mean IU of BiSeg's semantic output
against labels derived from instance annotations (datasets without label files)."""
from .proposal_recall import IOU_THRESHOLDS, SegmentProposalEvaluator, match_proposals, plot_recall_vs_iou
from .region_ap import RegionAPEvaluator, match_detections, plot_region_ap
from .sem_seg_from_instances import InstanceSemSegEvaluator, LabelCheckedSemSegEvaluator

__all__ = [
    "IOU_THRESHOLDS",
    "SegmentProposalEvaluator",
    "match_proposals",
    "plot_recall_vs_iou",
    "RegionAPEvaluator",
    "match_detections",
    "plot_region_ap",
    "InstanceSemSegEvaluator",
    "LabelCheckedSemSegEvaluator",
]
