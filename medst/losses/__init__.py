"""Med-ST losses: global (§4), modality-weighted local (§5) and temporal cycle consistency (§6)."""
from .local import LocalAlignment, LocalAlignmentOutput
from .temporal import (RMRDetails, cycle_consistency_loss, fmc_loss, rmr_details, rmr_loss,
                       temporal_loss)

__all__ = ["LocalAlignment", "LocalAlignmentOutput", "fmc_loss", "rmr_loss", "rmr_details",
           "RMRDetails", "cycle_consistency_loss", "temporal_loss"]

try:
    from .contrastive import global_alignment_loss
except ModuleNotFoundError as error:  # only while contrastive.py is not there yet
    if error.name != f"{__name__}.contrastive":
        raise
else:
    __all__.append("global_alignment_loss")
