"""Per-device export for ONNX Runtime: `python -m flexmoe_core.export RESULTS_DIR --all`.

For one client (``--client ID``, repeatable) or every client of a run (``--all``) this writes

    <out>/<client-id>/model.onnx      the shared extractor psi, the client's personal gate phi_c and
                                      ONLY the k experts it held in its last completed round
    <out>/<client-id>/manifest.json   client id, expert ids (local position -> global id), input and
                                      output shapes, normalisation, class names, sizes, parameter counts
    <out>/full/model.onnx (+ manifest) the full E-expert model exported the same way, the size reference

with ``<out>`` = ``RESULTS_DIR/export`` unless ``--out`` says otherwise.

Where the parts come from:

* psi and the experts: the run's ``checkpoint.npz`` (the global arrays after the last round) and its
  assignment history (the experts each client held, by stable client id).
* the gate: it never leaves the client, so it is read from the client's gate snapshots
  ``<state-dir>/run-<token>/<client-id>/gate-round<R>.npz`` (flexmoe_core.protocol.gate_folder), which a
  ClientApp writes when it has a state dir: the run setting ``client-state-dir`` (every simulated client)
  or a SuperNode's ``state-dir`` node config. The export reads ``client-state-dir`` from the run's
  config; ``--state-dir`` points it elsewhere (e.g. a device's own state dir, or a copy of it). A run
  with no state dir kept its gates in memory only: there is nothing to export, and the error says so.

The exported graph is `MoEClassifier.forward_with_routing` itself, traced by ``torch.onnx.export``
(the dynamo exporter; needs onnxscript) on the model a client evaluates with: the same masked top-r
routing over the held experts. Outputs: ``logits`` (batch, classes) and ``expert_probs``
(batch, k), the gate's softmax over the held experts in local order (local j = global
``expert-ids[j]`` of the manifest). The file is checked with ``onnx.checker`` after writing.

onnx / onnxscript / onnxruntime are the optional extra ``[export]`` and are imported only inside the
functions that need them, so the core imports without the extra.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flexmoe_core import protocol as P
from flexmoe_core.aggregation import select_experts
from flexmoe_core.config import Settings
from flexmoe_core.data import spec_of
from flexmoe_core.files import atomic_write_json
from flexmoe_core.model import FEATURE_DIM, MoEClassifier
from flexmoe_core.results import CHECKPOINT_NAME, load_checkpoint
from flexmoe_core.seeds import derive_seed

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
FULL_DIR = "full"
INPUT_NAME = "image"
OUTPUTS = ("logits", "expert_probs")
MANIFEST_FORMAT = "flexmoe-device-model/1"
EXTRA_HINT = 'the export needs the optional extra: pip install -e ".[export]"'

# Class names in label order; datasets not listed use the label numbers.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple(str(d) for d in range(10)),
    "emnist": tuple(str(d) for d in range(10)),
    "emnist-balanced": tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


class ExportError(RuntimeError):
    """The run cannot be exported as asked (missing gate, unknown client, ...); the message says why."""


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class ExportRun:
    """What a finished (or interrupted) run left on disk, read from its checkpoint."""

    results_dir: Path
    settings: Settings
    global_state: dict[str, np.ndarray]
    run_token: str
    last_round: int
    history: list[dict[str, Any]]

    def client_ids(self) -> list[str]:
        """Every client that completed at least one round, in order of first appearance."""
        seen: dict[str, None] = {}
        for record in self.history:
            seen.update(dict.fromkeys(record.get("completed", [])))
        return list(seen)

    def assignment(self, client_id: str) -> tuple[int, list[int]]:
        """(round, held experts) of the client's last COMPLETED round: in the final round when it took
        part, else its latest one (partial participation, or it failed in the final round)."""
        for record in reversed(self.history):
            if client_id in record.get("completed", []):
                held = dict(zip(record["clients"], record["held"]))[client_id]
                return int(record["round"]), sorted(int(e) for e in held)
        known = ", ".join(self.client_ids()) or "none"
        raise ExportError(f"client {client_id!r} completed no round of this run (clients: {known})")


def load_run(results_dir: str | Path) -> ExportRun:
    """Read a run's checkpoint (global arrays, assignment history, settings, run token)."""
    directory = Path(results_dir)
    path = directory / CHECKPOINT_NAME
    if not path.is_file():
        raise ExportError(f"no {CHECKPOINT_NAME} in {directory}: point the export at a run's results directory")
    arrays, state = load_checkpoint(path)
    return ExportRun(
        results_dir=directory,
        settings=Settings.from_run_config(state["config"]),
        global_state=arrays,
        run_token=str(state["server"]["run-token"]),
        last_round=int(state["server"]["round"]),
        history=list(state["history"]),
    )


def state_dir_of(run: ExportRun, override: str | Path | None = None) -> Path:
    """The directory holding the clients' gate snapshots: `override`, else the run's `client-state-dir`."""
    chosen = str(override) if override else run.settings.client_state_dir
    if not chosen:
        raise ExportError(
            "this run kept each client's personal gate in memory only (client-state-dir was empty), so no "
            "gate can be exported. Re-run with client-state-dir set (e.g. --set \"client-state-dir='"
            f"{(run.results_dir / 'client-state').resolve()}'\"), or pass --state-dir with a device's own "
            "state dir"
        )
    return Path(chosen)


def find_gate(state_dir: Path, run: ExportRun, client_id: str, up_to_round: int) -> tuple[int, dict[str, np.ndarray]]:
    """The client's newest gate snapshot stored in a round <= `up_to_round`: (round, arrays)."""
    folder = P.gate_folder(state_dir, run.run_token, client_id)
    rounds = sorted(
        (P.gate_round_of(p) for p in folder.glob("gate-round*.npz") if P.gate_round_of(p) <= up_to_round),
        reverse=True,
    )
    if not rounds:
        raise ExportError(
            f"no gate of client {client_id!r} for this run under {folder} (state dir {state_dir}): "
            "the gate lives on the client; pass --state-dir with the directory its ClientApp wrote to"
        )
    with np.load(folder / P.gate_file(rounds[0]), allow_pickle=False) as data:
        return rounds[0], {key: data[key] for key in data.files}


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class DeviceModel:
    """One client's on-device model and where its parts came from."""

    client_id: str
    model: MoEClassifier
    assigned_round: int
    gate_round: int

    @property
    def expert_ids(self) -> list[int]:
        return list(self.model.held_experts)


def device_model(run: ExportRun, client_id: str, state_dir: Path) -> DeviceModel:
    """The model the client evaluates with: global psi + the experts it held + its own gate (eval mode)."""
    assigned_round, held = run.assignment(client_id)
    gate_round, gate = find_gate(state_dir, run, client_id, assigned_round)
    model = MoEClassifier(run.settings.num_experts, held, **run.settings.model_kwargs())
    model.load_shared_state(select_experts(run.global_state, held))
    model.load_gate_state(gate)
    return DeviceModel(client_id, model.eval(), assigned_round, gate_round)


def full_model(run: ExportRun) -> MoEClassifier:
    """The dense reference: psi + all E global experts + a gate (a seeded one: the size and the cost of a
    forward pass do not depend on its values)."""
    s = run.settings
    model = MoEClassifier(
        s.num_experts,
        list(range(s.num_experts)),
        gate_seed=derive_seed(s.seed, "gate", "full-model"),
        **s.model_kwargs(),
    )
    model.load_shared_state(run.global_state)
    return model.eval()


def parameter_counts(model: MoEClassifier) -> dict[str, int]:
    """psi, gate and per-expert theta parameter counts of a model (k experts of one size); the shared
    classifier of an `expert-kind = "hidden"` model counts with the extractor (both are shared)."""
    counts = {"extractor": 0, "gate": 0, "experts": 0}
    for name, param in model.named_parameters():
        group = "extractor" if P.is_shared(name) else "gate" if P.is_gate(name) else "experts"
        counts[group] += param.numel()
    k = len(model.held_experts)
    counts["per-expert"] = counts["experts"] // k
    counts["total"] = counts["extractor"] + counts["gate"] + counts["experts"]
    return counts


# --------------------------------------------------------------------------- ONNX


class _ExportGraph(nn.Module):
    """What goes into the ONNX file: `MoEClassifier.forward_with_routing` unchanged, returning the
    mixture's logits and the gate's probabilities over the held experts (local order).

    It registers the model's own parts under the model's own names, so the file's initializers are
    named exactly like the state-dict keys (``extractor.*``, ``experts.{e}.*``, ``gate.*``), and calls
    the model's forward (held outside the module tree, so its parameters are not registered twice).
    """

    _held_index: torch.Tensor
    _model: MoEClassifier

    def __init__(self, model: MoEClassifier) -> None:
        super().__init__()
        self.extractor = model.extractor
        self.experts = model.experts
        self.gate = model.gate
        if model.classifier is not None:  # expert-kind = "hidden": the shared classifier after the mixture
            self.classifier = model.classifier
        self.register_buffer("_held_index", model._held_index, persistent=False)
        self.register_buffer("_held_mask", model._held_mask, persistent=False)
        object.__setattr__(self, "_model", model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, routing = self._model.forward_with_routing(x)
        return logits, routing.gate_probs.index_select(1, self._held_index)


def export_onnx(model: MoEClassifier, path: str | Path, *, in_channels: int, image_size: int) -> Path:
    """Write `model` (eval mode) to one self-contained ONNX file with a dynamic batch axis; checked."""
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ExportError(EXTRA_HINT) from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _ExportGraph(model.eval()).eval()
    example = torch.zeros(2, in_channels, image_size, image_size)  # batch 2: a batch of 1 would be specialised
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUTS),
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            )
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def onnx_parameters(path: str | Path) -> dict[str, int]:
    """Element counts of the file's initializers named like model parameters (extractor / experts / gate);
    the exporter's own small constants (shapes, indices) are left out."""
    import onnx

    proto = onnx.load(str(path))
    prefixes = (P.EXTRACTOR_PREFIX, P.EXPERTS_PREFIX, P.GATE_PREFIX, P.CLASSIFIER_PREFIX)
    return {
        init.name: int(np.prod(init.dims, dtype=np.int64))
        for init in proto.graph.initializer
        if init.name.startswith(prefixes)
    }


# --------------------------------------------------------------------------- manifests


def _io_spec(settings: Settings) -> dict[str, Any]:
    spec = spec_of(settings.dataset)
    names = CLASS_NAMES.get(settings.dataset, tuple(str(c) for c in range(spec.num_classes)))
    return {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", spec.in_channels, spec.image_size, spec.image_size],
            "dtype": "float32",
            "preprocessing": "pixels / 255, then (x - mean) / std per channel",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "outputs": [
            {"name": OUTPUTS[0], "shape": ["batch", spec.num_classes], "dtype": "float32"},
            {"name": OUTPUTS[1], "shape": ["batch", "k"], "dtype": "float32", "axis-1": "local expert position"},
        ],
        "class-names": list(names),
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def export_full(run: ExportRun, out: Path) -> dict[str, Any]:
    """The full E-expert model, exported the same way: `<out>/full/model.onnx` and its manifest."""
    s, spec = run.settings, spec_of(run.settings.dataset)
    model = full_model(run)
    path = export_onnx(model, out / FULL_DIR / MODEL_FILE, in_channels=spec.in_channels, image_size=spec.image_size)
    manifest = {
        "format": MANIFEST_FORMAT,
        "client-id": None,
        "file": MODEL_FILE,
        "size-bytes": path.stat().st_size,
        "expert-ids": list(range(s.num_experts)),
        "num-experts": s.num_experts,
        "top-r": model.effective_top_r,
        "dataset": s.dataset,
        "arch": s.model,
        **_io_spec(s),
        "parameters": parameter_counts(model),
        "note": "reference only: the global experts with a seeded gate, as if a device held all E experts",
    }
    atomic_write_json(out / FULL_DIR / MANIFEST_FILE, manifest)
    return manifest


def export_client(
    run: ExportRun, client_id: str, out: Path, state_dir: Path, full: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One device's model and manifest under `<out>/<client-id>/`; returns the manifest."""
    s, spec = run.settings, spec_of(run.settings.dataset)
    device = device_model(run, client_id, state_dir)
    folder = out / _safe(client_id)
    path = export_onnx(device.model, folder / MODEL_FILE, in_channels=spec.in_channels, image_size=spec.image_size)
    counts = parameter_counts(device.model)
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "client-id": client_id,
        "file": MODEL_FILE,
        "size-bytes": path.stat().st_size,
        "expert-ids": device.expert_ids,
        "local-to-global": {str(j): e for j, e in enumerate(device.expert_ids)},
        "num-experts": s.num_experts,
        "top-r": device.model.effective_top_r,
        "assigned-round": device.assigned_round,
        "gate-round": device.gate_round,
        "last-round": run.last_round,
        "dataset": s.dataset,
        "arch": s.model,
        **_io_spec(s),
        "parameters": counts,
        "feature-dim": FEATURE_DIM,
    }
    if full is not None:
        manifest["full-model"] = {
            "file": f"../{FULL_DIR}/{MODEL_FILE}",
            "size-bytes": full["size-bytes"],
            "parameters": full["parameters"]["total"],
        }
        manifest["size-vs-full"] = manifest["size-bytes"] / full["size-bytes"]
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def export_run(
    results_dir: str | Path,
    client_ids: Sequence[str] | None = None,
    *,
    out: str | Path | None = None,
    state_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Export the given clients (None: all) of a run; writes the full reference model first."""
    run = load_run(results_dir)
    gates = state_dir_of(run, state_dir)
    wanted = list(client_ids) if client_ids is not None else run.client_ids()
    for client_id in wanted:  # every problem before minutes of exporting
        run.assignment(client_id)
        find_gate(gates, run, client_id, run.assignment(client_id)[0])
    target = Path(out) if out else run.results_dir / "export"
    full = export_full(run, target)
    return [export_client(run, client_id, target, gates, full) for client_id in wanted]


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a run's results directory (holds checkpoint.npz)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--client", action="append", metavar="ID", help="client id to export (may repeat)")
    which.add_argument("--all", action="store_true", help="every client that completed a round")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RESULTS_DIR/export)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the clients stored their gates (default: the run's client-state-dir)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        manifests = export_run(
            args.results_dir, None if args.all else args.client, out=args.out, state_dir=args.state_dir
        )
    except ExportError as err:
        print(f"export: {err}", file=sys.stderr)
        return 2
    out = args.out or args.results_dir / "export"
    full = json.loads((out / FULL_DIR / MANIFEST_FILE).read_text())
    print(f"{'client':>16}  {'experts':>10}  {'KiB':>8}  {'params':>9}  vs full")
    for m in manifests:
        print(
            f"{m['client-id']:>16}  {','.join(map(str, m['expert-ids'])):>10}  {m['size-bytes'] / 1024:8.1f}"
            f"  {m['parameters']['total']:9d}  {m['size-vs-full']:.3f}"
        )
    label = f"full (E={full['num-experts']})"
    print(f"{label:>16}  {'all':>10}  {full['size-bytes'] / 1024:8.1f}  {full['parameters']['total']:9d}  1.000")
    print(f"written under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
