"""Evaluators of instfcn-d2: class-agnostic segment-proposal recall (InstanceFCN's AR@N)."""
from .proposal_recall import IOU_THRESHOLDS, SegmentProposalEvaluator, match_proposals, plot_recall_vs_iou

__all__ = ["IOU_THRESHOLDS", "SegmentProposalEvaluator", "match_proposals", "plot_recall_vs_iou"]
