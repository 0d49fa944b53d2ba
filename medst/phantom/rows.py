"""The rows of the phantom's tables, one typed row per line of a CSV file (field names = column names).

Every table the phantom writes has its row type here; :func:`medst.phantom.writers.write_rows` takes the
header from the type's fields, so a column is named in one place only. :class:`Tables` collects the rows that
one generation task (a patient, an RSNA image, a COVIDx image) produces, :class:`CtTables` those of a CT volume;
``synthesize`` concatenates them in task order and sorts each table before writing it::

    MetadataRow      mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv
    SplitRow         mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv
    StudyRow         ground_truth/studies.csv (severity, side, lateral-only per finding)
    ProgressionRow   ground_truth/progression.csv (change label per finding, Method §6)
    BoxRow           ground_truth/boxes.csv (lesion boxes per image, Method §8)
    SequenceRow      ground_truth/sequences.csv (windows of consecutive studies, Method §1)
    MscxrtRow        ms-cxr-t/MS_CXR_T_temporal_image_classification_v1.0.0.csv
    SentencePairRow  ms-cxr-t/MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv
    RsnaRow          rsna/stage_2_train_labels.csv
    CovidxRow        covidx/{train,test}.txt (space-separated, no header)
    CtMetadataRow    mimic-cxr-jpg/ct/ct-metadata.csv (CT volumes, ``synthesize(ct_fraction > 0)`` only)
    CtSliceRow       ground_truth/ct_slices.csv (the slices each finding of a CT volume occupies)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import NamedTuple


class MetadataRow(NamedTuple):
    """One image of MIMIC-CXR-JPG's metadata table (its column names)."""

    dicom_id: str
    subject_id: int
    study_id: int
    PerformedProcedureStepDescription: str
    ViewPosition: str  # PA, AP, LATERAL, LL
    Rows: int
    Columns: int
    StudyDate: int  # YYYYMMDD
    StudyTime: str  # HHMMSS.fff
    ProcedureCodeSequence_CodeMeaning: str
    ViewCodeSequence_CodeMeaning: str
    PatientOrientationCodeSequence_CodeMeaning: str  # Erect, Recumbent


class SplitRow(NamedTuple):
    """One image of MIMIC-CXR-JPG's split table."""

    dicom_id: str
    study_id: int
    subject_id: int
    split: str  # train, validate, test


class StudyRow(NamedTuple):
    """One study's ground truth: its images and, per finding (in ``FINDINGS`` order), the severity ("0.000" =
    absent), the side ("" when absent) and whether it is a lateral-only pleural effusion (0 / 1)."""

    subject_id: int
    study_id: int
    study_index: int
    split: str
    frontal_dicom_id: str
    frontal_view: str
    lateral_dicom_id: str  # "" without a lateral image
    lateral_view: str
    pleural_effusion_severity: str
    pleural_effusion_side: str
    pleural_effusion_lateral_only: int
    consolidation_severity: str
    consolidation_side: str
    consolidation_lateral_only: int
    edema_severity: str
    edema_side: str
    edema_lateral_only: int
    pneumothorax_severity: str
    pneumothorax_side: str
    pneumothorax_lateral_only: int
    pneumonia_severity: str
    pneumonia_side: str
    pneumonia_lateral_only: int
    cardiomegaly_severity: str
    cardiomegaly_side: str
    cardiomegaly_lateral_only: int


class ProgressionRow(NamedTuple):
    """The change of every finding between a study and the previous one: improving, stable, worsening or ""
    (absent in both)."""

    subject_id: int
    study_id: int
    previous_study_id: int
    pleural_effusion_progression: str
    consolidation_progression: str
    edema_progression: str
    pneumothorax_progression: str
    pneumonia_progression: str
    cardiomegaly_progression: str


class BoxRow(NamedTuple):
    """One lesion's box in one image, in pixel edges (pixel i covers [i, i + 1))."""

    dicom_id: str
    view: str  # frontal, lateral
    finding: str
    x_min: int
    y_min: int
    x_max: int
    y_max: int


class SequenceRow(NamedTuple):
    """One pre-training sequence: consecutive study ids joined by ";"."""

    split: str
    subject_id: int
    sequence_index: int
    study_ids: str


class MscxrtRow(NamedTuple):
    """One MS-CXR-T image pair (frontal images of consecutive studies of a test patient) with the change of
    each MS-CXR-T finding."""

    dicom_id: str
    previous_dicom_id: str
    study_id: int
    previous_study_id: int
    subject_id: int
    consolidation_progression: str
    edema_progression: str
    pleural_effusion_progression: str
    pneumonia_progression: str
    pneumothorax_progression: str


class SentencePairRow(NamedTuple):
    """One MS-CXR-T temporal sentence pair."""

    sentence_1: str
    sentence_2: str
    category: str  # paraphrase, contradiction
    subset_name: str


class RsnaRow(NamedTuple):
    """One RSNA Pneumonia label row: a box (x, y, width, height with one decimal) of a positive image, or one
    row with empty box fields and ``Target`` 0 for a negative image."""

    patientId: str
    x: str
    y: str
    width: str
    height: str
    Target: int


class CovidxRow(NamedTuple):
    """One COVIDx image, a line ``patient_id filename label source`` of the ``split`` list."""

    split: str  # train, test
    patient_id: str
    filename: str
    label: str  # normal, pneumonia, COVID-19
    source: str


class CtMetadataRow(NamedTuple):
    """One CT volume (``medst.phantom.ct``): its file under the ``ct`` folder, its size in voxels (columns: i,
    rows: j, slices: k) and its voxel spacing in mm."""

    subject_id: int
    study_id: int
    path: str  # files/pXX/pSUBJECT/sSTUDY.nii.gz
    columns: int
    rows: int
    slices: int
    spacing_x: str
    spacing_y: str
    spacing_z: str  # slice thickness = spacing between slice centres


class CtSliceRow(NamedTuple):
    """One finding present in a CT volume's study: the slices (k indices, 0 = most inferior, joined by ";")
    whose slab holds part of its 3-D region, and the slice holding the most of it (-1: none)."""

    subject_id: int
    study_id: int
    finding: str
    side: str  # "left", "right", "bilateral", "" (cardiomegaly)
    severity: str
    slices: str
    peak_slice: int


@dataclass
class Tables:
    """The rows of every table, as one task (or the whole data set) produces them."""

    metadata: list[MetadataRow] = field(default_factory=list)
    split: list[SplitRow] = field(default_factory=list)
    studies: list[StudyRow] = field(default_factory=list)
    progression: list[ProgressionRow] = field(default_factory=list)
    boxes: list[BoxRow] = field(default_factory=list)
    sequences: list[SequenceRow] = field(default_factory=list)
    mscxrt: list[MscxrtRow] = field(default_factory=list)
    rsna: list[RsnaRow] = field(default_factory=list)
    covidx: list[CovidxRow] = field(default_factory=list)

    def extend(self, other: Tables) -> None:
        """Append ``other``'s rows to each table, in order."""
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))


@dataclass
class CtTables:
    """The rows of the CT tables, as one CT task (or the whole data set) produces them; apart from
    :class:`Tables`, so that a phantom without CT volumes has exactly the tables it always had."""

    metadata: list[CtMetadataRow] = field(default_factory=list)
    slices: list[CtSliceRow] = field(default_factory=list)

    def extend(self, other: CtTables) -> None:
        """Append ``other``'s rows to each table, in order."""
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))
