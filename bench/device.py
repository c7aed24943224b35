"""What the device pays: an exported device model (k experts) against the full E-expert model, in ONNX Runtime.

How to run (from the repository root, with the optional extra: pip install -e ".[export]")::

    .venv/bin/python bench/device.py                    # main job's configuration and E = 32, ~1-2 min
    .venv/bin/python bench/device.py --repeats 9 --out results/bench/device.json

For each case (the main job's configuration, conf/main.toml on top of the pyproject defaults; and
the same with E = 32) both models are built from one seed and exported by the same exporter
(flexmoe_core.export.export_onnx): the device model holds the extractor, the gate and k experts;
the full model all E experts. Timings and memory do not depend on trained values, so no run is
needed. Reported, as device / full ratios from this one run (these machines are noisy, so only
ratios are comparable across runs):

* latency: batch-1 inference, one intra-op thread (an edge CPU), the two sessions timed in
  alternating blocks within one process; per model the fastest block's mean time per call (the
  medians are in the JSON too);
* peak memory: for each model a fresh Python process that imports only numpy + onnxruntime, resets
  its peak-RSS mark (Linux /proc/self/clear_refs), loads the model and runs 200 batch-1 inferences;
  the peak resident set (VmHWM) minus the resident set after the imports; the median over
  --repeats processes (Linux only);
* file size and parameter count;
* beside them the bytes a client downloads per round, (|psi| + k|theta|) / (|psi| + E|theta|).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script

import torch  # noqa: E402

from flexmoe_core.aggregation import payload_bytes, select_experts  # noqa: E402
from flexmoe_core.config import Settings  # noqa: E402
from flexmoe_core.export import export_onnx, onnx_parameters  # noqa: E402
from flexmoe_core.model import MoEClassifier, build_global_state  # noqa: E402

# Peak-memory probe, run in a fresh interpreter: only numpy and onnxruntime are imported.
MEMORY_PROBE = """
import sys
import numpy as np
import onnxruntime as ort

def status(key):  # kB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:  # reset the high-water mark (VmHWM) to the current RSS
    handle.write("5")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
x = np.zeros([1] + [int(d) for d in sys.argv[2:]], dtype=np.float32)
for _ in range(200):
    session.run(None, {session.get_inputs()[0].name: x})
print(before, status("VmHWM"))
"""


def case_settings(num_experts: int | None) -> Settings:
    """The main job's settings (pyproject defaults + conf/main.toml), optionally with another E."""
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    main = tomllib.loads((ROOT / "conf" / "main.toml").read_text())
    overrides = {"num-experts": num_experts} if num_experts else {}
    return Settings.from_run_config({**defaults, **main, **overrides})


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latencies(paths: dict[str, Path], shape: tuple[int, ...], blocks: int, calls: int) -> dict[str, float]:
    # (keys: "device", "full", "device-median", "full-median")
    """Per model, the fastest of the alternating blocks' mean seconds per batch-1 call (the least disturbed
    estimate on a shared machine, as `timeit` advises), and the median for reference."""
    sessions = {name: session(path) for name, path in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for name, s in sessions.items():  # warm-up
        for _ in range(50):
            s.run(None, feeds[name])
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for block in range(blocks):
        order = list(sessions) if block % 2 == 0 else list(reversed(sessions))
        for name in order:
            start = time.perf_counter()
            for _ in range(calls):
                sessions[name].run(None, feeds[name])
            samples[name].append((time.perf_counter() - start) / calls)
    return {
        **{name: min(values) for name, values in samples.items()},
        **{f"{name}-median": statistics.median(values) for name, values in samples.items()},
    }


def peak_memory(path: Path, shape: tuple[int, ...], repeats: int) -> float:
    """Median growth of a fresh process's peak RSS (bytes) from loading and running the model."""
    growths = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(path), *map(str, shape)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.split()
        before, after = int(out[0]), int(out[1])
        growths.append((after - before) * 1024.0)  # /proc reports kB
    return statistics.median(growths)


def run_case(name: str, settings: Settings, folder: Path, *, repeats: int, blocks: int, calls: int) -> dict[str, Any]:
    kwargs = settings.model_kwargs()
    shape = (kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    e, k = settings.num_experts, settings.capacity
    state = build_global_state(e, seed=settings.seed, **kwargs)
    models = {
        "device": MoEClassifier(e, list(range(k)), gate_seed=1, **kwargs),
        "full": MoEClassifier(e, list(range(e)), gate_seed=1, **kwargs),
    }
    paths = {}
    for label, model in models.items():
        model.load_shared_state(select_experts(state, model.held_experts))
        paths[label] = export_onnx(model, folder / f"{name}-{label}.onnx", in_channels=shape[0], image_size=shape[1])
    seconds = latencies(paths, shape, blocks, calls)
    memory = {label: peak_memory(path, shape, repeats) for label, path in paths.items()}
    sizes = {label: path.stat().st_size for label, path in paths.items()}
    params = {label: sum(onnx_parameters(path).values()) for label, path in paths.items()}
    download = payload_bytes(select_experts(state, list(range(k)))) / payload_bytes(state)
    return {
        "case": name,
        "num-experts": e,
        "capacity": k,
        "top-r": settings.top_r,
        "expert-hidden": settings.expert_hidden,
        "model": settings.model,
        "input-shape": [1, *shape],
        "latency-seconds": seconds,
        "latency-ratio": seconds["device"] / seconds["full"],
        "peak-memory-bytes": memory,
        "peak-memory-ratio": memory["device"] / memory["full"],
        "file-bytes": sizes,
        "file-ratio": sizes["device"] / sizes["full"],
        "parameters": params,
        "parameter-ratio": params["device"] / params["full"],
        "bytes-per-round-ratio": download,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "case",
        "E",
        "k",
        "latency dev/full (ms)",
        "ratio",
        "peak mem dev/full (MiB)",
        "ratio",
        "file dev/full (KiB)",
        "ratio",
        "bytes/round ratio",
    ]
    body = [
        [
            r["case"],
            str(r["num-experts"]),
            str(r["capacity"]),
            f"{r['latency-seconds']['device'] * 1e3:.3f} / {r['latency-seconds']['full'] * 1e3:.3f}",
            f"{r['latency-ratio']:.3f}",
            f"{r['peak-memory-bytes']['device'] / 2**20:.1f} / {r['peak-memory-bytes']['full'] / 2**20:.1f}",
            f"{r['peak-memory-ratio']:.3f}",
            f"{r['file-bytes']['device'] / 1024:.0f} / {r['file-bytes']['full'] / 1024:.0f}",
            f"{r['file-ratio']:.3f}",
            f"{r['bytes-per-round-ratio']:.3f}",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per model for peak memory")
    parser.add_argument("--blocks", type=int, default=40, help="alternating timing blocks per model")
    parser.add_argument("--calls", type=int, default=100, help="batch-1 calls per timing block")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "device.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = [("main", case_settings(None)), ("main-E32", case_settings(32))]
    with tempfile.TemporaryDirectory(prefix="flexmoe-device-bench-") as tmp:
        rows = [
            run_case(name, s, Path(tmp), repeats=args.repeats, blocks=args.blocks, calls=args.calls)
            for name, s in cases
        ]
    print(format_table(rows))
    import onnxruntime

    report = {
        "rows": rows,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
