"""Neighbours of Med-ST: other pre-training methods built on the same towers, data, losses and evaluation, so that
they can be compared with Med-ST on the same phantom (chapter 10).

* ``mpma.py``: MPMA, paired masking with alignment (Zhang et al., IEEE TMM 2023): masked image and report
  reconstruction through a memory-augmented cross-modal fusion, plus global and local alignment.

A run chooses its method with ``model.method`` (``medst`` or ``mpma``); :func:`medst.models.medst.build_model`
builds either.
"""

from medst.neighbours.mpma import MPMA, MPMAOutput, build_mpma

__all__ = ["MPMA", "MPMAOutput", "build_mpma"]
