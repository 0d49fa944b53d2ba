"""Input checks that never make the host wait for an accelerator.

Reading a tensor's value on the host (``bool(t)``, ``.item()``) waits until the device has run everything queued
before it, which in a training step idles the GPU. A check on a CPU tensor costs nothing and raises at once with
details; on an accelerator it is asserted on the device instead (``torch._assert_async``: the host goes on, and a
failed check stops the process when the device reaches it). Inside ``torch.compile`` the checks are left out.
"""

from __future__ import annotations

import torch


def host_can_read(t: torch.Tensor) -> bool:
    """True where reading ``t``'s value costs nothing: a CPU tensor."""
    return t.device.type == "cpu"


def check(ok: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the bool tensor ``ok`` holds (on the device off the CPU; not at all
    inside ``torch.compile``, whose graphs the check would break)."""
    if torch.compiler.is_compiling():
        return
    if host_can_read(ok):
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)
