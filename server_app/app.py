"""FLEX-MoE ServerApp: validate settings, build the global model, run rounds, write results."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flexmoe_core.config import Settings
from flexmoe_core.metrics import STARVED_AFTER, coefficient_of_variation, starvation_streaks
from flexmoe_core.model import build_global_state
from flexmoe_core.results import ResultsWriter, load_checkpoint, save_checkpoint
from flexmoe_core.tracking import make_tracker
from server_app.strategy import FlexMoEStrategy

log = logging.getLogger("flexmoe.server")
app = ServerApp()
REFERENCE_PREFIX = "reference/"  # checkpoint arrays of centered-clip's references (no model key starts so)
VELOCITY_PREFIX = "velocity/"  # checkpoint arrays of the per-expert server step's velocity (remedies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point called by Flower (simulation engine and deployment alike)."""
    _configure_logging()
    settings = Settings.from_run_config(context.run_config)  # stops here, before round 1, on bad settings
    run = FederatedRun(settings, grid)
    run.execute()


def initial_global_state(settings: Settings, *, seed: int) -> dict[str, Any]:
    """The global model (extractor + all E experts) these settings describe, from `seed`."""
    return build_global_state(settings.num_experts, seed=seed, **settings.model_kwargs())


class FederatedRun:
    """The round loop with results and a checkpoint written after every round."""

    def __init__(self, settings: Settings, grid: Grid) -> None:
        self.settings = settings
        self.grid = grid
        self.writer = ResultsWriter(settings.results_dir)
        self.strategy = FlexMoEStrategy(settings, initial_global_state(settings, seed=settings.seed))
        self.rounds: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.first_round = 1
        if settings.resume:
            self._resume()
        self.writer.write_config(settings.to_run_config())
        self.tracker = make_tracker(settings.tracking, settings.results_dir, first_round=self.first_round)

    def execute(self) -> None:
        s = self.settings
        self.strategy.summary()
        log.info("results -> %s (rounds %d..%d)", Path(s.results_dir).resolve(), self.first_round, s.num_server_rounds)
        started = time.perf_counter()
        try:
            for server_round in range(self.first_round, s.num_server_rounds + 1):
                self._run_round(server_round, started)
        finally:
            self._write_plots()
            self.tracker.finish(self.writer.directory, len(self.rounds))
            self.tracker.close()
        log.info("run finished: %d rounds, results in %s", len(self.rounds), Path(s.results_dir).resolve())

    def _run_round(self, server_round: int, started: float) -> None:
        s = self.settings
        row = self._round(server_round)
        self._add_cumulative_load(row)
        self.rounds.append(row)
        self.history.append(self.strategy.assignment_record(server_round))
        self._persist(server_round)
        self.tracker.log_round(row)
        log.info(
            "[round %d/%d] accuracy %.4f (p10 %.4f) | load CV %.3f (cumulative %.3f), routed CV %.3f"
            " | clients %d/%d ok | solve %.3fs, round %.1fs, elapsed %.0fs%s",
            server_round,
            s.num_server_rounds,
            row.get("accuracy", float("nan")),
            row.get("accuracy-p10", float("nan")),
            row["load-cv"],
            row["cumulative-load-cv"],
            row["routed-load-cv"],
            row["num-completed"],
            row["num-sampled"],
            row["solve-seconds"],
            row["round-seconds"],
            time.perf_counter() - started,
            " | NO UPDATE ACCEPTED: global model kept" if row.get("no-update-accepted") else "",
        )

    def _round(self, server_round: int) -> dict[str, Any]:
        """Discovery, training, evaluation. Server time counts only the strategy's own work
        (sampling, assignment, aggregation, bookkeeping), never waiting for nodes."""
        timeout = self.settings.round_timeout
        start = time.perf_counter()
        discovery = self.strategy.discover(self.grid)
        discovery_seconds = time.perf_counter() - start
        server_seconds = 0.0

        def timed(fn, *args):
            nonlocal server_seconds
            t0 = time.perf_counter()
            out = fn(*args)
            server_seconds += time.perf_counter() - t0
            return out

        messages = timed(self.strategy.train_messages, server_round, discovery)
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        train_metrics = timed(self.strategy.aggregate_train_replies, server_round, replies)
        messages = timed(self.strategy.evaluate_messages, server_round)
        replies = self.grid.send_and_receive(messages, timeout=timeout) if messages else []
        eval_metrics = timed(self.strategy.evaluation_metrics, server_round, replies)
        return {
            "round": server_round,
            **eval_metrics,
            **train_metrics,
            "discovery-seconds": discovery_seconds,
            "server-seconds": server_seconds,
            "round-seconds": time.perf_counter() - start,
        }

    def _add_cumulative_load(self, row: dict[str, Any]) -> None:
        """Expert load summed over all rounds so far: what the deficit term balances when a single
        round cannot be exact (e.g. 10 clients x 2 experts over 8 experts gives loads of 2 or 3)."""
        total = np.sum([r["expert-load"] for r in self.rounds] + [row["expert-load"]], axis=0)
        row["cumulative-load"] = total.tolist()
        row["cumulative-load-cv"] = coefficient_of_variation(total)
        # The mechanism: how many samples each expert has been trained on so far, and which experts
        # no participant held for STARVED_AFTER or more consecutive rounds (a streak per expert).
        routed = np.sum([r["routed-load"] for r in self.rounds] + [row["routed-load"]], axis=0)
        row["cumulative-routed-load"] = routed.tolist()
        row["cumulative-routed-load-cv"] = coefficient_of_variation(routed)
        previous = self.rounds[-1].get("starved-streak") if self.rounds else None
        streak = starvation_streaks(previous, row["expert-load"])
        row["starved-streak"] = streak.tolist()
        row["starved-experts"] = int(np.sum(streak >= STARVED_AFTER))

    def _persist(self, server_round: int) -> None:
        """Results first, checkpoint last: a checkpoint never points past results on disk. Plots are
        drawn once, when the run ends (`_write_plots`): drawing them every round took 0.5-0.7 s,
        longer than the server's own work; metrics.csv is there to follow a run as it goes."""
        s = self.settings
        server = self.strategy.state_dict()
        arrays = server.pop("global")
        # centered-clip's references travel as arrays next to the model's, under their own prefix.
        arrays = {**arrays, **{REFERENCE_PREFIX + k: v for k, v in server.pop("references", {}).items()}}
        arrays = {**arrays, **{VELOCITY_PREFIX + k: v for k, v in server.pop("velocity", {}).items()}}
        self.writer.write_rounds(self.rounds)
        self.writer.write_assignments(self.history, server["fitness"])
        state = {"server": server, "config": s.to_run_config(), "rounds": self.rounds, "history": self.history}
        save_checkpoint(self.writer.checkpoint_path, arrays, state)

    def _write_plots(self) -> None:
        """The run's plots from the rounds it finished, also when it stops early (a failed round): a
        plot that cannot be drawn is logged, never raised over the error that ended the run."""
        s = self.settings
        try:
            self.writer.write_plots(self.rounds, self.history, s.num_experts, f"{s.assignment}, {s.dataset}")
        except Exception:  # noqa: BLE001 - plots are a view of results already on disk
            log.exception("could not draw the plots in %s", Path(s.results_dir).resolve())

    def _resume(self) -> None:
        arrays, state = load_checkpoint(self.writer.checkpoint_path)
        _check_compatible(state["config"], self.settings)
        references = {k[len(REFERENCE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(REFERENCE_PREFIX)}
        velocity = {k[len(VELOCITY_PREFIX) :]: v for k, v in arrays.items() if k.startswith(VELOCITY_PREFIX)}
        model = {k: v for k, v in arrays.items() if not k.startswith((REFERENCE_PREFIX, VELOCITY_PREFIX))}
        self.strategy.load_state_dict(
            {**state["server"], "global": model, "references": references, "velocity": velocity}
        )
        self.rounds = state["rounds"]
        self.history = state["history"]
        self.first_round = int(state["server"]["round"]) + 1
        log.info("resumed from %s after round %d", self.writer.checkpoint_path, self.first_round - 1)


# Settings that change what the checkpoint means; the rest (rounds, timeouts, ...) may differ on resume.
_RESUME_MUST_MATCH = (
    "num-experts",
    "model",
    "dataset",
    "partition",
    "dirichlet-alpha",
    "classes-per-client",
    "assignment",
    "fitness",
    "seed",
    "top-r",
    "expert-kind",
    "max-samples-per-client",
    "robust-aggregation",
    "attack",
    "attack-clients",
)


def _check_compatible(saved: dict[str, Any], settings: Settings) -> None:
    current = settings.to_run_config()
    different = [
        f"{k}: checkpoint {saved.get(k)!r}, now {current[k]!r}"
        for k in _RESUME_MUST_MATCH
        if saved.get(k) != current[k]
    ]
    if different:
        raise ValueError("cannot resume: settings differ from the checkpoint's:\n  " + "\n  ".join(different))


def _configure_logging() -> None:
    logger = logging.getLogger("flexmoe")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
