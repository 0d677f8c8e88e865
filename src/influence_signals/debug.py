"""``influence-signals debug``: the command line over ``api.find_issues``.

It checks the data and every setting before any work (a one-line ``error:`` and exit status 2 otherwise),
runs the package's workflow on the data in its output folder (one ``crossfit`` job per seed and fold, then
``debug_report``), prints a line as each tenth of the jobs is done, with the time left (Snakemake's own output goes to
``snakemake.log``; ``--verbose`` prints it) and ends with what it found.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence

from .api import WorkflowFailed, find_issues
from .companions import COMPANIONS
from .config import ConfigError
from .datasets import DataError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="influence-signals", description="Find suspicious rows in your own data.")
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("debug", help="rank the rows of a table or an image folder by how suspicious they are",
                            description="Cross-fitted training runs over folds and seeds; writes suspects.csv and report.html.")
    p.add_argument("data", metavar="DATA", help="a CSV / ARFF table, or an image folder root/<class>/*.png|jpg")
    p.add_argument("--label", help="the label column (tables)")
    p.add_argument("--id", help="an id column: kept in the outputs, never a feature (default: the row number)")
    p.add_argument("--drop", nargs="+", action="extend", default=[], metavar="COL", help="columns that are not features")
    p.add_argument("--model", help="mlp (tables, the default), resnet, ft_transformer; resnet20 (images, the default)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds (default 3)")
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds (default 5)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the model's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the model's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's)")
    p.add_argument("--pretrained", help="image models: a weights file to fine-tune from (default: train from scratch)")
    p.add_argument("--size", type=int, help="images: resize to SIZE x SIZE")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="images: 1 (grey) or 3 (RGB, the default)")
    p.add_argument("--top", type=float, default=0.1, help="the share of rows at the top of the ranking the report's "
                                                          "summary counts as the cut (default 0.1)")
    p.add_argument("--name", help="the data set's name in the config (default: from the file name)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="cores for Snakemake, which runs that many jobs side by side (default: all)")
    p.add_argument("--out", default="report", help="output folder (default: report/)")
    p.add_argument("--verbose", action="store_true", help="print Snakemake's own output (default: it goes to "
                                                          "OUT/snakemake.log; only progress is printed)")
    p.add_argument("--dry-run", action="store_true", help="write the config and show the jobs; run nothing")
    p.add_argument("--profile", help="a Snakemake profile whose executor runs the jobs (e.g. profiles/slurm)")
    p.add_argument("--companions", nargs="*", metavar="NAME", choices=COMPANIONS.names(),
                   help=f"tables: learners fitted beside the network on each fold, their held-out probabilities averaged "
                        f"with its ({', '.join(COMPANIONS.names())}: the default, all; none named: the network alone)")
    p.add_argument("--keep-runs", action="store_true", help="keep the runs' folders under OUT/results/crossfit (their "
                                                             "TracIn factors: GBs); by default removed after the report")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        issues = find_issues(args.data, label=args.label, id=args.id, drop=args.drop, model=args.model, seeds=args.seeds,
                             folds=args.folds, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             pretrained=args.pretrained, size=args.size, channels=args.channels, top=args.top,
                             name=args.name, device=args.device, cores=args.cores, out=args.out, dry_run=args.dry_run,
                             verbose=args.verbose, progress=progress, profile=args.profile, keep_runs=args.keep_runs,
                             companions=args.companions)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WorkflowFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if issues is not None:
        kinds = Counter(issues.table["glitch_type"])
        progress(f"wrote {issues.folder / 'suspects.csv'} and {issues.report()}: {kinds.get('mislabel', 0)} suspected "
                 f"mislabels, {kinds.get('anomaly', 0)} suspected anomalies among {len(issues.table)} rows")
    return 0


def progress(message: str) -> None:
    print(message, flush=True)


if __name__ == "__main__":
    sys.exit(main())
