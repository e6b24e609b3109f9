"""The paper's whole pipeline in one call (``crab run``).

Stages, each timed and recorded in ``run_dir/pipeline.json``:

1. ``mc_train``    Monte Carlo for training (default 1800 s, 4 detectors, 19 Hz);
2. ``mc_heldout``  ``n_references`` (default 4) independent Monte Carlo runs (other seeds) held
                   out for validation (``mc_heldout.h5``, ``mc_heldout_2.h5`` ...);
3. ``mc_selection`` a Monte Carlo run that chooses the kept epoch (seed ``seed + 3000``,
                   ``mc_selection.h5``; none of the test references);
4. ``train``       GAN training on the training MC (``run_dir/model``), snapshots every 10
                   epochs, the one closest to the selection run kept
                   (:func:`crab.validation.selection.select_snapshot`);
5. ``generate``    1 h of GAN TOD (``run_dir/gan.h5``);
6. ``template``    the template baseline fitted on the training MC truth, 1 h (``run_dir/template.h5``);
7. ``validate``    both synthetic sets against every held-out run: each metric as its mean
                   +- scatter over them, beside the held-out runs against each other (the
                   MC-vs-MC floor) (``run_dir/report``).

A stage whose output exists and whose configuration has not changed is not
run again, so an interrupted ``crab run`` resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from crab import __version__
from crab.core.errors import InputError
from crab.core.paths import (
    is_run_record,
    is_temporary,
    remove_contents,
    replaceable_contents,
)
from crab.core.provenance import run_record, to_jsonable, write_json

#: The run record of a run folder (what says CRAB wrote it).
RUN_RECORD = "pipeline.json"

STAGES = ("mc_train", "mc_heldout", "mc_selection", "train", "generate", "template", "validate")
#: Epochs between the snapshots the selection run scores.
SELECT_EVERY = 10


@dataclass
class PipelineConfig:
    """What ``crab run`` does.

    Attributes
    ----------
    seed : int
        Seed of the whole run; held-out run ``k`` (0-based) uses
        ``seed + heldout_seed_offset + k``, generation ``seed + generate_seed_offset``.
    n_detectors : int
        Detectors of the wafer.
    sampling_rate_hz : float
        Sampling rate of every TOD (Hz).
    phi_gv : float
        Solar modulation potential of the Monte Carlo (GV).
    train_duration_s, heldout_duration_s, generate_duration_s : float
        Lengths of the training MC, of each held-out MC run and of the generated TOD (s).
    n_references : int
        Independent held-out Monte Carlo runs validated against (1: the
        single-reference validation, the weaker test).
    selection_duration_s : float or None
        Length of the selection Monte Carlo run (s) that chooses the kept epoch
        (seed ``seed + selection_seed_offset``); None: no selection run, training's
        own choice (the sample-quality statistic on its validation split).
    epochs : int or None
        Training epochs (None: the training default).
    train_overrides : dict
        Other :class:`crab.models.gan.training.TrainConfig` fields to override.
    validation_overrides : dict
        :class:`crab.validation.ValidationConfig` fields to override.
    """

    seed: int = 1
    n_detectors: int = 4
    sampling_rate_hz: float = 19.0
    phi_gv: float = 0.6
    train_duration_s: float = 1800.0
    heldout_duration_s: float = 1800.0
    generate_duration_s: float = 3600.0
    epochs: int | None = None
    heldout_seed_offset: int = 1000
    generate_seed_offset: int = 2000
    n_references: int = 4
    selection_duration_s: float | None = 900.0
    selection_seed_offset: int = 3000
    train_overrides: dict[str, Any] = field(default_factory=dict)
    validation_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_detectors < 1:
            raise InputError(f"n_detectors must be at least 1, got {self.n_detectors}")
        if self.n_references < 1:
            raise InputError(f"n_references must be at least 1, got {self.n_references}")
        if self.selection_duration_s is not None and not self.selection_duration_s > 0:
            raise InputError(f"selection_duration_s must be positive or None, got {self.selection_duration_s}")
        if self.heldout_seed_offset + self.n_references > self.generate_seed_offset:
            raise InputError(f"{self.n_references} held-out runs from seed offset {self.heldout_seed_offset} would reach the generation's seed offset {self.generate_seed_offset}")
        for name in ("train_duration_s", "heldout_duration_s", "generate_duration_s", "sampling_rate_hz"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class StageResult:
    """One stage: name, status (``done``/``skipped``), wall time (s), outputs, notes."""

    name: str
    status: str
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)
    notes: str = ""


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns."""

    run_dir: Path
    stages: list[StageResult]
    validation: Any = None
    seconds: float = 0.0

    def table(self) -> str:
        """The final terminal table: stages with wall time, then key metrics with pass/fail."""
        lines = [f"CRAB pipeline in {self.run_dir}  (crab {__version__})", "", f"{'stage':<12} {'status':<8} {'wall time':>10}  output"]
        for s in self.stages:
            out = ", ".join(s.outputs.values())
            lines.append(f"{s.name:<12} {s.status:<8} {s.seconds:>9.1f}s  {out}{('  (' + s.notes + ')') if s.notes else ''}")
        lines.append(f"{'total':<12} {'':<8} {self.seconds:>9.1f}s")
        v = self.validation
        if v is not None:
            lines += ["", f"{'set':<10} {'classifier AUC':>16} {'floor AUC':>16} {'dAUC':>16} {'glitch rate /det/h':>19} {'rate z':>7} {'targets':>8} {'metrics':>10}"]

            def pm(x: float | None, e: float | None, sign: str = "") -> str:
                if x is None:
                    return "n/a"
                return f"{x:{sign}.3f}" + ("" if e is None else f" +- {e:.3f}")

            for name, k in v.key_metrics().items():
                rate = k.get("glitch_rate_per_det_hour")
                rate_s = "n/a" if rate is None else f"{rate:.0f} vs {k.get('glitch_rate_ref_per_det_hour', float('nan')):.0f}"
                z = k.get("glitch_rate_z")
                z_s = "n/a" if z is None else f"{z:+.2f}"
                s = v.sets[name]
                n_metrics = sum(m.passed is not None for m in s.metrics.values())
                lines.append(
                    f"{name:<10} {pm(k['classifier_auc'], k['classifier_auc_sd']):>16} {pm(k['classifier_auc_floor'], k['classifier_auc_floor_sd']):>16} "
                    f"{pm(k['classifier_dauc'], k['classifier_dauc_error'], '+'):>16} {rate_s:>19} {z_s:>7} {'met' if k.get('targets_met') else 'NOT met':>8} "
                    f"{n_metrics - s.n_failed:>3}/{n_metrics:<3} ok"
                )
                if s.failed():
                    lines.append(f"{'':<10} failed: {', '.join(s.failed())}")
            c = v.config
            if v.n_references > 1:
                lines += ["", f"K = {v.n_references} held-out references: every figure is the mean +- sd over them; floor AUC: the references against each other (MC vs MC)."]
            else:
                lines += ["", "floor AUC: the two halves of the one held-out reference (the weaker test: run with several references)."]
            lines.append(f"Targets: AUC <= {c.auc_target:g} (or within {c.n_sigma_target:g} sigma of the floor), glitch rate and amplitude distribution within {c.n_sigma_target:g} sigma of the floor.")
            ctx = v.training_context_text()
            if ctx:
                lines.append(ctx)
            if v.out_dir is not None:
                lines.append(f"report: {Path(v.out_dir) / 'report.md'}")
        return "\n".join(lines)


def _stage_signature(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """The parts of the configuration a stage depends on (a change re-runs it and what follows)."""
    d = to_jsonable(cfg)
    mc = {k: d[k] for k in ("n_detectors", "sampling_rate_hz", "phi_gv")}
    sig = {
        "mc_train": {**mc, "seed": cfg.seed, "duration_s": cfg.train_duration_s},
        "mc_heldout": {**mc, "seeds": heldout_seeds(cfg), "duration_s": cfg.heldout_duration_s},
        "mc_selection": {**mc, "seed": cfg.seed + cfg.selection_seed_offset, "duration_s": cfg.selection_duration_s},
        "train": {"epochs": cfg.epochs, "overrides": d["train_overrides"], "seed": cfg.seed, "selection": cfg.selection_duration_s is not None},
        "generate": {"seed": cfg.seed + cfg.generate_seed_offset, "duration_s": cfg.generate_duration_s},
        "template": {"seed": cfg.seed + cfg.generate_seed_offset, "duration_s": cfg.generate_duration_s},
        "validate": {"overrides": d["validation_overrides"]},
    }
    return {"crab_version": __version__, **sig[stage]}


def heldout_seeds(cfg: PipelineConfig) -> list[int]:
    """The seeds of the held-out Monte Carlo runs: ``seed + heldout_seed_offset + k``, k = 0 .. n_references - 1."""
    return [cfg.seed + cfg.heldout_seed_offset + k for k in range(cfg.n_references)]


def heldout_names(cfg: PipelineConfig) -> list[str]:
    """The names of the held-out runs' outputs (``mc_heldout``, ``mc_heldout_2`` ...; files ``NAME.h5`` in the run folder)."""
    return ["mc_heldout"] + [f"mc_heldout_{k + 1}" for k in range(1, cfg.n_references)]


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_dir_files() -> tuple[str, ...]:
    """What a run folder holds, all written by ``crab run``: patterns for :func:`crab.core.paths.replaceable_contents`
    (the validation report's ``report/`` with its plots; the model directory's files, ``MODEL_DIR_FILES``)."""
    from crab.models.gan.training import MODEL_DIR_FILES

    return (
        RUN_RECORD, "mc_train.h5", "mc_heldout.h5", "mc_heldout_*.h5", "mc_selection.h5", "gan.h5", "template.json", "template.h5",
        "report/metrics.json", "report/report.md", "report/*.png", ".report.old-*/*", *(f"model/{p}" for p in MODEL_DIR_FILES),
    )


def check_run_dir(run_dir: str | Path, *, fresh: bool) -> list[Path]:
    """Check the run folder before any stage; return what ``fresh`` removes (:func:`crab.core.paths.remove_contents`).

    With ``fresh``, only what a ``crab run`` wrote there (:func:`run_dir_files`, with its run
    record :data:`RUN_RECORD`) is removed, and a folder holding anything else is refused.
    Without, a folder whose files a run would overwrite but that has no run record is refused.
    """
    run_dir = Path(run_dir)
    if fresh:
        return replaceable_contents(run_dir, run_dir_files(), marker=RUN_RECORD, what="run folder", option="--fresh")
    if run_dir.is_dir() and not is_run_record(run_dir / RUN_RECORD):
        names = run_dir_files()
        clash = sorted(e.name for e in run_dir.iterdir() if not is_temporary(e.name) and any(fnmatch.fnmatchcase(e.name, p.split("/")[0]) for p in names))
        if clash:
            raise InputError(f"{run_dir} holds {', '.join(clash[:3])} but no {RUN_RECORD}: not a crab run folder to resume; refusing to overwrite them: choose another --out")
    elif run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir} exists and is not a folder")
    return []


def run_pipeline(
    cfg: PipelineConfig | None = None,
    run_dir: str | Path = "crab_run",
    *,
    progress: bool = True,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Run (or resume) the whole pipeline in ``run_dir``.

    Parameters
    ----------
    cfg : PipelineConfig
        What to run (defaults: the paper's setup).
    run_dir : path-like
        Output folder; created if needed.
    progress : bool
        Progress bars for each stage.
    fresh : bool
        Remove what an earlier run wrote in ``run_dir`` first instead of resuming (see
        :func:`run_dir_files`); a folder holding anything else is refused.
    log : callable
        Receives one line per stage as it starts and ends.
    """
    from crab.generation import TodGenerator, generate_to_file, load_generation_model
    from crab.io.montecarlo_file import simulate_to_file
    from crab.models.gan.training import TrainConfig, train
    from crab.models.template import fit_template_file, save_template
    from crab.physics.montecarlo_config import MonteCarloConfig
    from crab.validation import ValidationConfig, validate

    cfg = cfg or PipelineConfig()
    run_dir = Path(run_dir)
    mc_cfg = MonteCarloConfig(n_detectors=cfg.n_detectors, sampling_rate_hz=cfg.sampling_rate_hz, phi_gv=cfg.phi_gv)
    tcfg_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(cfg.train_overrides) - tcfg_fields
    if unknown:
        raise InputError(f"unknown training options {sorted(unknown)}; known: {sorted(tcfg_fields)}")
    tkw = dict(cfg.train_overrides)
    if cfg.epochs is not None:
        tkw["epochs"] = cfg.epochs
    train_cfg = TrainConfig(seed=cfg.seed, **tkw)
    if cfg.selection_duration_s is not None and "snapshot_every" not in tkw:
        train_cfg = dataclasses.replace(train_cfg, snapshot_every=min(SELECT_EVERY, train_cfg.epochs))
    val_cfg = ValidationConfig.from_dict(cfg.validation_overrides) if cfg.validation_overrides else ValidationConfig()
    remove_contents(check_run_dir(run_dir, fresh=fresh))
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "pipeline.json"
    state = _load_state(state_path)
    done: dict[str, Any] = state.get("stages", {}) if isinstance(state.get("stages"), dict) else {}
    record = run_record(cfg, cfg.seed, stages=done)
    t_all = time.perf_counter()
    results: list[StageResult] = []

    paths = {
        "mc_train": run_dir / "mc_train.h5",
        **{name: run_dir / f"{name}.h5" for name in heldout_names(cfg)},
        "mc_selection": run_dir / "mc_selection.h5",
        "model": run_dir / "model",
        "gan": run_dir / "gan.h5",
        "template_model": run_dir / "template.json",
        "template": run_dir / "template.h5",
        "report": run_dir / "report",
    }
    gen_seed = cfg.seed + cfg.generate_seed_offset
    holder: dict[str, Any] = {}

    def stage_mc_train() -> str:
        simulate_to_file(mc_cfg, cfg.train_duration_s, cfg.seed, paths["mc_train"], progress=progress, overwrite=True, description="crab run: training Monte Carlo")
        return ""

    def stage_mc_heldout() -> str:
        seeds = heldout_seeds(cfg)
        for k, (name, seed) in enumerate(zip(heldout_names(cfg), seeds), start=1):
            simulate_to_file(mc_cfg, cfg.heldout_duration_s, seed, paths[name], progress=progress, overwrite=True, description=f"crab run: held-out Monte Carlo {k} of {len(seeds)}")
        return f"{len(seeds)} independent run{'s' if len(seeds) > 1 else ''}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"

    def stage_mc_selection() -> str:
        if cfg.selection_duration_s is None:
            return "no selection run: training's own choice of epoch"
        seed = cfg.seed + cfg.selection_seed_offset
        simulate_to_file(mc_cfg, cfg.selection_duration_s, seed, paths["mc_selection"], progress=progress, overwrite=True, description="crab run: selection Monte Carlo")
        return f"seed {seed}"

    def stage_train() -> str:
        res = train([paths["mc_train"]], paths["model"], train_cfg, overwrite=True, progress=progress)
        notes = f"{res.epochs_done} epochs, best epoch {res.best_epoch} (sample quality)"
        if cfg.selection_duration_s is not None:
            from crab.validation.selection import select_snapshot

            chosen = select_snapshot(paths["model"], paths["mc_selection"])
            notes += f"; kept epoch {chosen['chosen_epoch']}: classifier AUC {chosen['chosen_auc']:.3f} against the selection run"
        return notes

    def stage_generate() -> str:
        model = load_generation_model(paths["model"], sampling_rate_hz=cfg.sampling_rate_hz)
        st = generate_to_file(TodGenerator(model, gen_seed), paths["gan"], cfg.generate_duration_s, cfg.n_detectors, overwrite=True, progress=progress)
        return st.summary() if hasattr(st, "summary") else ""

    def stage_template() -> str:
        tm = fit_template_file(paths["mc_train"])
        save_template(tm, paths["template_model"])
        model = load_generation_model(paths["template_model"], sampling_rate_hz=cfg.sampling_rate_hz)
        st = generate_to_file(TodGenerator(model, gen_seed), paths["template"], cfg.generate_duration_s, cfg.n_detectors, overwrite=True, progress=progress)
        return st.summary() if hasattr(st, "summary") else ""

    def stage_validate() -> str:
        refs = [paths[name] for name in heldout_names(cfg)]
        v = validate(refs, {"gan": paths["gan"], "template": paths["template"]}, paths["report"], training=paths["mc_train"], config=val_cfg, overwrite=True)
        holder["validation"] = v
        against = f"against {len(refs)} references"
        return f"{against}: all metrics pass" if v.passed else f"{against}: {sum(s.n_failed for s in v.sets.values())} metric(s) fail"

    stages: dict[str, tuple[Callable[[], str], list[str]]] = {
        "mc_train": (stage_mc_train, ["mc_train"]),
        "mc_heldout": (stage_mc_heldout, heldout_names(cfg)),
        "mc_selection": (stage_mc_selection, ["mc_selection"] if cfg.selection_duration_s is not None else []),
        "train": (stage_train, ["model"]),
        "generate": (stage_generate, ["gan"]),
        "template": (stage_template, ["template_model", "template"]),
        "validate": (stage_validate, ["report"]),
    }
    depends = {"mc_train": [], "mc_heldout": [], "mc_selection": [], "train": ["mc_train", "mc_selection"], "generate": ["train"], "template": ["mc_train"], "validate": ["mc_heldout", "generate", "template"]}
    rerun: set[str] = set()
    for name in STAGES:
        fn, outs = stages[name]
        sig = _stage_signature(cfg, name)
        prev = done.get(name)
        complete = prev is not None and prev.get("signature") == sig and all(paths[o].exists() for o in outs)
        if complete and not any(d in rerun for d in depends[name]) and name != "validate":
            results.append(StageResult(name, "skipped", 0.0, {o: str(paths[o]) for o in outs}, "already done"))
            log(f"[crab run] {name}: already done, skipped")
            continue
        rerun.add(name)
        log(f"[crab run] {name}: running")
        t0 = time.perf_counter()
        notes = fn()
        dt = time.perf_counter() - t0
        done[name] = {"signature": sig, "seconds": dt, "notes": notes, "outputs": {o: str(paths[o]) for o in outs}}
        record["stages"] = done
        write_json(state_path, record)
        results.append(StageResult(name, "done", dt, {o: str(paths[o]) for o in outs}, notes))
        log(f"[crab run] {name}: done in {dt:.1f} s{(' - ' + notes) if notes else ''}")
    total = time.perf_counter() - t_all
    record["total_seconds"] = total
    write_json(state_path, record)
    return PipelineResult(run_dir=run_dir, stages=results, validation=holder.get("validation"), seconds=total)
