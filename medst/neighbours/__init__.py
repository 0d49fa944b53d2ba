"""Neighbours of Med-ST: other pre-training methods built on the same towers, data, losses and evaluation, so that
they can be compared with Med-ST on the same phantom (chapters 10 and 11).

* ``mpma.py``: MPMA, paired masking with alignment (Zhang et al., IEEE TMM 2023): masked image and report
  reconstruction through a memory-augmented cross-modal fusion, plus global and local alignment.
* ``unimedi.py``: UniMedI, unified 2-D and 3-D pre-training in a language-guided common space (He et al., ECCV 2024):
  one ViT for radiographs and CT volumes, aligned with the reports, with text-guided slice selection making pseudo
  2-D pairs out of the volumes.

A run chooses its method with ``model.method`` (``medst``, ``mpma`` or ``unimedi``);
:func:`medst.models.medst.build_model` builds each.
"""

from medst.neighbours.mpma import MPMA, MPMAOutput, build_mpma
from medst.neighbours.unimedi import UniMedI, UniMedIOutput, VolumeEmbedding, build_unimedi

__all__ = ["MPMA", "MPMAOutput", "build_mpma", "UniMedI", "UniMedIOutput", "VolumeEmbedding", "build_unimedi"]
