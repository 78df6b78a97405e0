"""Results page: the report's table beside ours, from run directories' metrics.json (figures: plots.py).

Every run of the study (variants.study_runs) that has no completed metrics file is listed as
"not yet measured" with the exact command that produces it; no number is ever filled in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import rundir
from training.config import TrainConfig
from training.constants import SPLITS
from training.variants import LOSS_RULE, Reported, get_variant, loss_rule

from .runs import study_runs

SWEEP = np.round(np.linspace(0, 1, 41), 3)


@dataclass
class RunResult:
    name: str
    variant: str
    imbalance: int
    seed: int
    dir: Path
    run: rundir.RunState  # its status: an unfinished run is `running` while a process holds it, else `stopped`

    @property
    def metrics(self) -> dict:
        return self.run.metrics

    @property
    def config(self) -> dict:
        return self.run.config

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def last(self) -> dict:
        """The last evaluated epoch's record (runs with --eval-every skip some)."""
        return next((e for e in reversed(self.metrics["epochs"]) if "overall" in e), {})

    @property
    def reported(self) -> Reported | None:
        """The report's entry for this run's variant and IF (None where the report has no row)."""
        return get_variant(self.variant).reported.get(self.imbalance)

    def gap(self, accuracy: float, penalty: float = 0.0) -> float:
        """`accuracy`, with the copy's measured `penalty` added back, minus the report's overall number
        (points; for runs the report has a number for)."""
        return accuracy + penalty - self.reported.overall

    @property
    def final_exit_alone(self) -> float | None:
        """The last evaluated epoch's accuracy with every image at the final exit: it parts the
        network's accuracy from the exit rule's (None where the epoch has no per-exit numbers)."""
        per_exit = self.last.get("per_exit")
        return per_exit[-1]["overall"] if per_exit else None

    @property
    def device(self) -> str:
        """The machine the run started on, and each other one it was resumed on, from its epoch."""
        (_, first), *others = rundir.machines(self.config, self.metrics)
        return "; ".join([first, *(f"from epoch {epoch}: {machine}" for epoch, machine in others)])

    @property
    def train_config(self) -> TrainConfig | None:
        return TrainConfig.from_dict(self.config["config"]) if "config" in self.config else None

    @property
    def flags(self) -> list[str]:
        """The `train` flags of this run's data path and speed options (and --eval-every, if given)."""
        config = self.train_config
        if config is None:
            return []
        return [*config.path_flags(), *(["--eval-every", str(config.eval_every)] if config.eval_every != 1 else [])]

    @property
    def rule(self) -> str:
        """The SPEC §4 loss rule the run was trained under (runs of the old rule are retired)."""
        return loss_rule(self.config.get("variant", {}))

    @property
    def path(self) -> str:
        """'reference', 'cpu-fast', or the flags of the path this run was trained with."""
        return self.train_config.path_name() if self.train_config else "?"


def collect_runs(root: Path) -> list[RunResult]:
    runs = []
    for metrics_file in sorted(Path(root).glob(f"*/{rundir.METRICS}")):
        run = rundir.state(metrics_file.parent)
        m, config = run.metrics, run.config
        if m.get("kind", "train") != "train":  # fit-exits runs are derived models, not table runs
            continue
        if config.get("config", {}).get("eval_split", "test") != "test":  # pilots: not test-set results
            continue
        runs.append(
            RunResult(
                metrics_file.parent.name, m["variant"], m["imbalance"], m.get("seed", 0), metrics_file.parent, run
            )
        )
    return runs


def train_command(
    variant: str, imbalance: int, seed: int = 0, flags=(), resume: bool = False, name: str | None = None
) -> str:
    """The command that produces (or, with resume, finishes) a run; without `flags`, on `train`'s
    default path (the CPU fast path on a CPU)."""
    name = name or rundir.run_name(variant, imbalance, seed)
    return " ".join(
        [
            "python -m training train --variant",
            variant,
            "--imbalance",
            str(imbalance),
            "--seed",
            str(seed),
            *flags,
            "--out",
            f"results/runs/{name}",
            *(["--resume"] if resume else []),
        ]
    )


def measured_commands(runs: list[RunResult]) -> list[str]:
    """The `train` command of each finished run of the current loss rule, on its own path."""
    return [
        train_command(r.variant, r.imbalance, r.seed, r.flags, name=r.name)
        for r in runs
        if r.status in rundir.FINISHED and r.rule == LOSS_RULE
    ]


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _reported_cell(variant: str, imbalance: int) -> str:
    r = get_variant(variant).reported.get(imbalance)
    return "–" if r is None else r.summary()


def jpeg_penalties(runs: list[RunResult]) -> dict[int, float]:
    """The dataset copy's measured penalty at each IF where a completed `erm` control exists: the
    published ERM accuracy (SPEC §6) minus ours (the mean of its seeds), in points."""
    gaps: dict[int, list[float]] = {}
    for r in runs:
        published = r.reported
        if (
            get_variant(r.variant).family == "control"
            and r.status == rundir.COMPLETED
            and r.rule == LOSS_RULE
            and published is not None
            and published.overall is not None
        ):
            gaps.setdefault(r.imbalance, []).append(published.overall - r.last["overall"])
    return {imbalance: float(np.mean(g)) for imbalance, g in gaps.items()}  # the mean over seeds


def penalty_at(penalties: dict[int, float], imbalance: int) -> tuple[float, str] | None:
    """(penalty, where it comes from) at an IF: measured there, else interpolated in log(IF)
    between the IF 1 and IF 100 controls, else the IF 100 control's."""
    if imbalance in penalties:
        return penalties[imbalance], f"erm IF {imbalance}"
    if 1 in penalties and 100 in penalties:
        w = np.log(imbalance) / np.log(100)
        return (1 - w) * penalties[1] + w * penalties[100], "erm IF 1 / IF 100, interpolated"
    if 100 in penalties:
        return penalties[100], "erm IF 100"
    return None


def results_table(
    runs: list[RunResult], planned=None, penalties: dict[int, float] | None = None
) -> tuple[str, list[str]]:
    """Markdown table of the planned (variant, IF) runs (default: the study's) from runs of the
    current loss rule, one row per run (runs of different paths apart), each against the report and
    against the report less the measured JPEG penalty; and the commands of runs not yet measured."""
    by_key = {}
    for r in runs:
        if r.rule != LOSS_RULE:
            continue
        by_key.setdefault((r.variant, r.imbalance), []).append(r)
    penalties = {} if penalties is None else penalties
    lines = [
        "| variant | IF | report: overall (many / medium / few) | ours: overall | many | medium | few "
        "| ours − report | ours + JPEG penalty − report | final exit alone (+ JPEG penalty − report) "
        "| exits (% by exit) | mean MACs | seed | status | machine | path |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for variant, imbalance in study_runs() if planned is None else planned:
        found = by_key.get((variant, imbalance), [])
        if not found:
            lines.append(
                f"| {variant} | {imbalance} | {_reported_cell(variant, imbalance)} | not yet measured "
                "| | | | | | | | | | | | |"
            )
            missing.append(train_command(variant, imbalance))
        completed = [r for r in found if r.status == rundir.COMPLETED]
        seeded = completed if len({r.seed for r in completed}) > 1 else []  # more than one seed: their mean
        for r in found:
            e, done, total = r.last, r.run.done, r.run.planned or "?"
            if r.status not in rundir.FINISHED:
                where, state = (
                    (f"running, epoch {done} of {total} done", "running")
                    if r.status == rundir.RUNNING
                    else (f"stopped at epoch {done} of {total}", "resumable")
                )
                lines.append(
                    f"| {variant} | {imbalance} | {_reported_cell(variant, imbalance)} | not yet measured: "
                    f"{where} | | | | | | | | | {r.seed} | {state} | {r.device} | {r.path} |"
                )
                missing.append(train_command(variant, imbalance, r.seed, r.flags, resume=True, name=r.name))
                continue
            status = (
                "completed" if r.status == rundir.COMPLETED else f"diverged at epoch {r.metrics.get('diverged_at')}"
            )
            exits = "/".join(f"{100 * d:.1f}" for d in e.get("exit_distribution", []))
            share = e.get("mean_macs_share")
            macs = f"{e['mean_macs'] / 1e6:.1f}M ({100 * share:.0f}%)" if share is not None else "–"
            published = r.reported
            final = r.final_exit_alone
            diff = adjusted = "–"
            final_cell = _fmt(final)
            if r.status == rundir.COMPLETED and published is not None and published.overall is not None:
                diff = f"{r.gap(e['overall']):+.2f}"
                penalty = penalty_at(penalties, imbalance)
                if penalty is not None:
                    adjusted = f"{r.gap(e['overall'], penalty[0]):+.2f} ({penalty[1]})"
                    if final is not None:
                        final_cell += f" ({r.gap(final, penalty[0]):+.2f})"
            if seeded:  # the seeds' mean carries the comparison with the report
                diff = adjusted = "–"
                final_cell = _fmt(final)
            lines.append(
                f"| {variant} | {imbalance} | {_reported_cell(variant, imbalance)} | {_fmt(e.get('overall'))} "
                f"| {_fmt(e.get('many'))} | {_fmt(e.get('medium'))} | {_fmt(e.get('few'))} | {diff} "
                f"| {adjusted} | {final_cell} | {exits} | {macs} | {r.seed} | {status} | {r.device} | {r.path} |"
            )
        if seeded:
            lines.append(seed_mean_row(variant, imbalance, seeded, penalties))
    return "\n".join(lines), missing


def mean_std(values: list[float]) -> str:
    """ "mean ± std" (the sample standard deviation, n − 1)."""
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def seed_mean_row(variant: str, imbalance: int, runs: list[RunResult], penalties: dict[int, float]) -> str:
    """One table row for the completed seeds of a (variant, IF): each number's mean ± std over them,
    and the mean's distance to the report."""
    last = [r.last for r in runs]
    cells = {key: mean_std([e[key] for e in last]) for key in ("overall", "many", "medium", "few")}
    overall = float(np.mean([e["overall"] for e in last]))
    finals = [r.final_exit_alone for r in runs if r.final_exit_alone is not None]
    final_cell = mean_std(finals) if len(finals) == len(runs) else "–"
    diff = adjusted = "–"
    published = runs[0].reported
    if published is not None and published.overall is not None:
        diff = f"{runs[0].gap(overall):+.2f}"
        penalty = penalty_at(penalties, imbalance)
        if penalty is not None:
            adjusted = f"{runs[0].gap(overall, penalty[0]):+.2f} ({penalty[1]})"
    seeds = ", ".join(str(r.seed) for r in runs)
    return (
        f"| {variant} | {imbalance} | {_reported_cell(variant, imbalance)} | **{cells['overall']}** "
        f"| {cells['many']} | {cells['medium']} | {cells['few']} | {diff} | {adjusted} | {final_cell} "
        f"| | | mean ± std, n = {len(runs)} (seeds {seeds}) | completed | | |"
    )


# The run the ablations are read against (RESULTS.md's ablation section and its plot panel).
ABLATIONS_BESIDE = [("model8", 100)]

# (with, without, what the difference measures): contrasts of the ablation section, IF 100.
ABLATION_CONTRASTS = (
    ("model8", "model8-linear", "the ResLT head and loss, against a linear head with plain CE"),
    ("model8-reslt-official", "model8", "the official ResLT code's branch masks, against ours"),
)


def contrasts(runs: list[RunResult], pairs=ABLATION_CONTRASTS, imbalance: int = 100) -> list[str]:
    """One line per pair whose two runs (current rule, IF `imbalance`) have both completed: the
    last-epoch difference overall and per split, with the paths when they differ (one seed each)."""
    done: dict[str, RunResult] = {}
    for r in runs:
        if r.rule == LOSS_RULE and r.status == rundir.COMPLETED and r.imbalance == imbalance:
            done.setdefault(r.variant, r)
    lines = []
    for a, b, what in pairs:
        if a not in done or b not in done:
            continue
        ea, eb = done[a].last, done[b].last
        splits = ", ".join(f"{s} {ea[s] - eb[s]:+.2f}" for s in SPLITS)
        paths = "" if done[a].path == done[b].path else f"; paths: {done[a].path} vs {done[b].path}"
        lines.append(
            f"- {what}: **{ea['overall'] - eb['overall']:+.2f}** points ({a} {ea['overall']:.2f} − "
            f"{b} {eb['overall']:.2f}; {splits}{paths}; one seed each)"
        )
    return lines


def heldout_choices(fits: Path) -> str:
    """Markdown table of every second-stage model calibrated on held-out training images
    (<fit>/calibration-heldout.json, written by `calibrate --json`): the numbers candidates are
    chosen by."""
    rows = []
    for path in sorted(Path(fits).glob("*/calibration-heldout.json")):
        c = json.loads(path.read_text())
        thresholds = c["threshold"] if isinstance(c["threshold"], list) else [c["threshold"]]
        rows.append(
            f"| {path.parent.name} | {c['final_exit_accuracy']:.2f} | {c['heldout_accuracy']:.2f} "
            f"| {c['mean_macs_share']:.3f} | {' / '.join(f'{t:.2f}' for t in thresholds)} "
            f"| {' / '.join(f'{t:g}' for t in c.get('taus', [c.get('tau')]))} | {c['heldout_images']} "
            f"| {drop_rule(c)} |"
        )
    if not rows:
        return ""
    return "\n".join(
        [
            "| model (results/fits/) | final exit | at its thresholds | MACs share | thresholds | τ | images "
            "| drop within the allowed one |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def drop_rule(calibration: dict) -> str:
    """How the drop was held within max_drop: its point estimate (before 2026-12-05) or a bound."""
    confidence = calibration.get("drop_confidence", 0.5)
    if confidence == 0.5:
        return "point estimate"
    return f"{100 * confidence:g}% bound ({calibration['drop_upper_bound']:.2f})"


def retired_table(runs: list[RunResult]) -> str:
    """Markdown: runs trained under the old loss rule (simulated loss at every exit of the
    simulated family), kept for their history and checkpoints but not results of the table."""
    old = [r for r in runs if r.rule != LOSS_RULE]
    lines = [
        "| run | variant | IF | last epoch | overall | many | medium | few | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in old:
        e = r.last
        lines.append(
            f"| {r.name} | {r.variant} | {r.imbalance} | {e.get('epoch', 0)} | {_fmt(e.get('overall'))} "
            f"| {_fmt(e.get('many'))} | {_fmt(e.get('medium'))} | {_fmt(e.get('few'))} "
            f"| {r.status} |"
        )
    return "\n".join(lines) if old else ""


def path_agreement(runs: list[RunResult], goal: float = 1.5) -> str:
    """Markdown: last-epoch accuracy of each completed bf16 (--amp) run beside the fp32 run of the
    same variant, imbalance and seed (within `goal` points: seed noise)."""
    done = [r for r in runs if r.status == rundir.COMPLETED and r.rule == LOSS_RULE and r.train_config]
    fp32 = {(r.variant, r.imbalance, r.seed): r for r in done if not r.train_config.amp}
    lines = [
        f"| variant | IF | seed | fp32 run | bf16 run | difference | within {goal} points | fp32 path | bf16 path |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in done:
        ref = fp32.get((r.variant, r.imbalance, r.seed))
        if not r.train_config.amp or ref is None:
            continue
        a, b = ref.last["overall"], r.last["overall"]
        lines.append(
            f"| {r.variant} | {r.imbalance} | {r.seed} | {a:.2f} | {b:.2f} | {b - a:+.2f} "
            f"| {'yes' if abs(b - a) <= goal else 'no'} | `{ref.path}` | `{r.path}` |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""
