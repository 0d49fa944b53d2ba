"""medst: Med-ST, spatial and temporal vision-language pre-training for chest X-rays, in small typed modules.

Med-ST (Yang, Su, Zhao and Wen, ICML 2024) encodes the frontal and the lateral radiograph of a study with one
Mixture-of-View-Experts ViT, a report with a BERT, and trains both with a global, a modality-weighted local and a
temporal cycle-consistency objective. This package is the library that the book in ``book/`` builds up chapter
by chapter: data (real MIMIC-CXR-JPG or the synthetic phantom), models, losses, training, evaluation.

Docstrings cite the book's method page, ``book/method.md`` ("The method, precisely"), as "Method §N" (a section)
or "Method §N.M" (a sub-section): §1 data unit, §2 encoders and heads, §3 MoVE, §4 global alignment, §5 local
alignment, §6 temporal modelling, §7 objective and training setup, §8 evaluation, §9 where medst differs from
the published code.

Layers (a module imports only from its own layer or a lower one; no import cycles):

0. ``medst.utils``, ``medst.config``, ``medst.checks``
1. ``medst.data``, ``medst.phantom``
2. ``medst.losses``
3. ``medst.models``, ``medst.neighbours`` (MPMA, chapter 10)
4. ``medst.train``
5. ``medst.eval``
6. ``medst.ablation``, ``medst.convert``, ``medst.book`` (a chapter's setup, the book's build, the students'
   edition, the exercises), ``medst.viz``, ``medst.cli``
"""
