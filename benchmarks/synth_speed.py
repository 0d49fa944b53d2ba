"""Time the phantom generator: ``python benchmarks/synth_speed.py --patients 2000 --image-size 128``.

Prints one JSON line: patients, images (MIMIC part + RSNA + COVIDx), wall seconds, images/s, workers, the
machine's 1-minute load average before and after (other work on a shared machine slows the run down) and,
when psutil is installed, the CPU seconds used by this process and its workers together.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

from medst.phantom import synthesize


class CpuMeter:
    """Samples the CPU time (user + system) of this process and all its descendants every ``period`` s."""

    def __init__(self, period: float = 0.2) -> None:
        import psutil

        self.psutil, self.period = psutil, period
        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[p.pid] = max(self.seen.get(p.pid, 0.0), t.user + t.system)
            except self.psutil.Error:
                pass

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._sample()
        self.start = sum(self.seen.values())
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values()) - self.start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--out", default=None, help="output folder (default: a temporary one, removed afterwards)")
    a = p.parse_args()
    try:
        meter = CpuMeter()
    except ImportError:
        meter = None
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or os.path.join(tmp, "phantom")
        start = time.perf_counter()
        if meter is not None:
            meter.__enter__()
        summary = synthesize(
            out, n_patients=a.patients, image_size=a.image_size, seed=a.seed, workers=a.workers, progress=False
        )
        seconds = time.perf_counter() - start
        if meter is not None:
            meter.__exit__(None, None, None)
    c = summary["counts"]
    images = c["images"] + c["rsna_images"] + c["covidx_train"] + c["covidx_test"]
    result = {
        "patients": a.patients,
        "image_size": a.image_size,
        "studies": c["studies"],
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "workers": a.workers or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
    }
    if meter is not None:
        result["cpu_seconds"] = round(meter.seconds, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
