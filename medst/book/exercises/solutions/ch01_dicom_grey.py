import torch


def dicom_grey(stored, bits_stored, slope=1.0, intercept=0.0, center=None, width=None, monochrome1=False):
    """Display grey levels of a DICOM radiograph, as read_dicom gives them (DICOM PS3.3 C.11).

    stored [H, W] integer tensor (unsigned, bits_stored bits); Rescale Slope / Intercept; Window Center /
    Width (None: no window); monochrome1: True when white is stored as 0  ->  float [H, W] in [0, 1], 1 = white.
    """
    values = stored.double() * slope + intercept  # 1. modality LUT: stored -> physical values (e.g. HU)
    if center is None:  # no window: the range that bits_stored allows, after the same rescale
        ends = torch.tensor([0.0, 2.0**bits_stored - 1.0], dtype=torch.float64) * slope + intercept
        grey = (values - ends.min()) / (ends.max() - ends.min())
    else:  # 2. LINEAR VOI window, as the standard writes it (c - 0.5, w - 1), clipped to its output range
        grey = ((values - (center - 0.5)) / (width - 1) + 0.5).clamp(0.0, 1.0)
    if monochrome1:  # 3. after the window: MONOCHROME1 shows low values white
        grey = 1.0 - grey
    return grey.float()
