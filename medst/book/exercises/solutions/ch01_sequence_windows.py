import torch


def sequence_windows(meta, length=4, max_gap_days=None):
    """The sequences of the pre-training index, from the image metadata table (Method §1).

    meta: a MIMIC-CXR metadata DataFrame, one row per image, in any order (dicom_id, subject_id, study_id,
    ViewPosition, StudyDate YYYYMMDD, StudyTime HHMMSS.fff); length: L; max_gap_days: None, or the longest
    time allowed between two consecutive studies of a sequence  ->  study ids [n_windows, length] (long).
    """
    hhmmss = meta.StudyTime
    seconds = hhmmss // 10000 * 3600 + hhmmss // 100 % 100 * 60 + hhmmss % 100  # 93512.5 is 09:35:12.5
    when = meta.StudyDate.astype(str).astype("datetime64[ns]") + (seconds * 1e9).astype("timedelta64[ns]")
    images = meta.assign(when=when, frontal=meta.ViewPosition.isin(["PA", "AP"]))
    studies = images.groupby(["subject_id", "study_id"], as_index=False).agg(
        when=("when", "min"),
        frontal=("frontal", "any"),  # a study's time: its earliest image
    )
    studies = studies[studies.frontal].sort_values(["subject_id", "when", "study_id"])  # no frontal: not usable
    cut = studies.subject_id.diff().ne(0)  # a new patient starts a new run ...
    if max_gap_days is not None:  # ... and so does a gap longer than max_gap_days
        cut |= studies.when.diff().dt.total_seconds() > max_gap_days * 86400
    windows = []
    for _, ids in studies.groupby(cut.cumsum(), sort=False).study_id:
        ids = ids.tolist()
        windows += [ids[i : i + length] for i in range(len(ids) - length + 1)]
    return torch.tensor(windows, dtype=torch.long).reshape(-1, length)
