"""Med-ST losses: global (§4), modality-weighted local (§5) and temporal cycle consistency (§6)."""

from .contrastive import global_alignment_loss
from .local import LocalAlignment, LocalAlignmentOutput
from .temporal import RMRDetails, cycle_consistency_loss, fmc_loss, rmr_details, rmr_loss, temporal_loss

__all__ = [
    "global_alignment_loss",
    "LocalAlignment",
    "LocalAlignmentOutput",
    "fmc_loss",
    "rmr_loss",
    "rmr_details",
    "RMRDetails",
    "cycle_consistency_loss",
    "temporal_loss",
]
