"""``influence-signals debug``: a user's table or image folder in, suspects.csv and report.html out."""
from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from influence_signals import datasets
from influence_signals.crossfit import suspicion_table
from influence_signals.debug import main

ROOT = Path(__file__).resolve().parents[1]

CLASSES = np.array(["ant", "bee", "cat"])
N_ROWS, N_FEATURES, N_FLIPPED = 300, 8, 30
SEEDS, FOLDS = 2, 3
HEAD = ["id", "observed_label", "glitch_type", "suggested_label", "suspicion", "confidence", "label_score", "novelty",
        "n_scores"]


def write_table(path: Path, n_rows: int = N_ROWS, n_flipped: int = N_FLIPPED, seed: int = 0) -> pd.DataFrame:
    """A 3-class table with a shuffled string id column ``key``; ``n_flipped`` labels flipped. Returns the truth."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_rows, n_features=N_FEATURES, n_informative=6, n_redundant=1, n_classes=3,
                               n_clusters_per_class=1, class_sep=1.5, random_state=seed)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(n_rows, n_flipped, replace=False)
    observed = y.copy()
    observed[flipped] = (y[flipped] + rng.integers(1, 3, n_flipped)) % 3
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
    frame.insert(0, "key", [f"row-{v:04d}" for v in rng.permutation(n_rows)])
    frame["target"] = CLASSES[observed]
    frame.to_csv(path, index=False)
    return pd.DataFrame({"true": CLASSES[y], "flipped": np.isin(np.arange(n_rows), flipped)}, index=frame["key"])


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("debug_table")
    truth = write_table(folder / "mine.csv")
    code = main(["debug", str(folder / "mine.csv"), "--label", "target", "--id", "key", "--seeds", str(SEEDS),
                 "--folds", str(FOLDS), "--cores", "2", "--out", str(folder / "report"), "--keep-runs"])
    assert code == 0
    return folder / "report", truth


def suspects_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "suspects.csv", dtype={"id": str})


def test_every_row_is_scored_once_per_seed_and_fold_with_its_id_and_no_id_feature(table_run):
    out, truth = table_run
    suspects = suspects_of(out)
    assert sorted(suspects["id"]) == sorted(truth.index) and suspects["id"].is_unique
    assert (suspects["n_scores"] == SEEDS * (FOLDS - 1)).all()
    from influence_signals import paths
    from influence_signals.artifacts import load_npz
    from influence_signals.factors import FactorStore

    for seed in range(SEEDS):
        runs = [out / paths.crossfit("mine", "mlp", seed, k) for k in range(FOLDS)]
        ids = pd.concat([pd.read_csv(run / "scores.csv", dtype={"id": str})["id"] for run in runs])
        assert (ids.value_counts() == FOLDS - 1).all() and set(ids) == set(truth.index)  # in training in K - 1 folds
        held_out = np.concatenate([load_npz(run / "split.npz")["val_ids"] for run in runs])
        assert sorted(held_out) == sorted(truth.index)  # held out exactly once per seed
    assert not list((out / "results").rglob("*.pt"))  # no checkpoints left: the factors hold what is read
    store = FactorStore(out / paths.crossfit("mine", "mlp", 0, 0) / "factors")
    assert store.meta.dim == 192  # the network's features: the id column was no input (N_FEATURES columns are)


def test_pairwise_signals_come_from_the_first_seed_and_the_others_from_every_run(table_run):
    from influence_signals import paths
    from influence_signals.signals import SIGNALS, without_pairwise_pass

    out, _ = table_run
    scores = pd.concat([pd.read_csv(out / paths.crossfit("mine", "mlp", seed, k) / "scores.csv", dtype={"id": str})
                        .assign(seed=seed) for seed in range(SEEDS) for k in range(FOLDS)], ignore_index=True)
    pairwise = [name for name in ("aai", "sign_aware", "cnci", "pcid", "cfrank") if name in scores]
    assert pairwise and without_pairwise_pass(pairwise) == [] and without_pairwise_pass(["si", "loss"]) == ["si", "loss"]
    assert scores.loc[scores["seed"] == 0, pairwise].notna().all().all()
    assert scores.loc[scores["seed"] > 0, pairwise].isna().all().all()  # not computed there: no column in those files
    everywhere = [name for name in ("si", "loss", "aum") if name in SIGNALS.names()]
    assert scores[everywhere].notna().all().all()
    suspects = suspects_of(out).set_index("id")
    first_seed = scores[scores["seed"] == 0].groupby("id")[pairwise + everywhere].mean()
    every_run = scores.groupby("id")[everywhere].mean()
    np.testing.assert_allclose(suspects.loc[first_seed.index, pairwise], first_seed[pairwise], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(suspects.loc[every_run.index, everywhere], every_run, rtol=1e-5, atol=1e-8)


def test_pred_probs_csv_holds_the_held_out_probabilities_of_every_row(table_run):
    out, truth = table_run
    probs = pd.read_csv(out / "pred_probs.csv", dtype={"id": str})
    assert list(probs.columns) == ["id", "observed_label", *CLASSES] and sorted(probs["id"]) == sorted(truth.index)
    np.testing.assert_allclose(probs[list(CLASSES)].sum(axis=1), 1.0, rtol=1e-6)
    accuracy = (probs[list(CLASSES)].to_numpy().argmax(1) == np.searchsorted(CLASSES, truth.loc[probs["id"], "true"])).mean()
    assert accuracy >= 0.8  # held-out: models that never saw the row, trained on noisy labels


def test_the_checkpoint_is_the_one_with_the_lowest_held_out_loss_computed_by_brute_force(table_run):
    import yaml
    from scipy.special import log_softmax

    from influence_signals import config as cfg
    from influence_signals import crossfit, paths
    from influence_signals.factors import FactorStore

    out, _ = table_run
    config = cfg.validate(yaml.safe_load((out / "config.yaml").read_text()))
    data = datasets.load("mine", config["datasets"]["mine"])
    runs = [out / paths.crossfit("mine", "mlp", seed, fold) for seed in range(SEEDS) for fold in range(FOLDS)]
    evidence = crossfit.collect(runs, FOLDS, data)
    losses, count = 0.0, 0
    for seed in range(SEEDS):
        for fold in range(FOLDS):
            store = FactorStore(runs[seed * FOLDS + fold] / "factors")
            logits = store.all("val_logits")  # (T, m, C)
            losses = losses + (-log_softmax(logits.astype(np.float64), -1)[:, np.arange(len(store.y_val)), store.y_val]).sum(1)
            count += len(store.y_val)
    np.testing.assert_allclose(evidence.held_out_loss, losses / count, rtol=1e-6)
    assert evidence.epoch == int(np.argmin(losses))
    np.testing.assert_allclose(evidence.pred_probs.sum(1), 1.0)


def test_pred_probs_are_the_mean_of_the_network_and_the_companions_refitted_on_the_first_seeds_folds(table_run):
    """The network's held-out probabilities at the chosen checkpoint (mean over seeds), and scikit-learn's own
    gradient boosting and k-nearest-neighbour classifier refitted on each of the first seed's folds."""
    import yaml
    from scipy.special import softmax
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neighbors import KNeighborsClassifier

    from influence_signals import config as cfg
    from influence_signals import crossfit, paths
    from influence_signals.artifacts import load_npz
    from influence_signals.companions import KNN_NEIGHBOURS
    from influence_signals.factors import FactorStore

    out, _ = table_run
    config = cfg.validate(yaml.safe_load((out / "config.yaml").read_text()))
    data = datasets.load("mine", config["datasets"]["mine"])
    runs = [out / paths.crossfit("mine", "mlp", seed, fold) for seed in range(SEEDS) for fold in range(FOLDS)]
    evidence = crossfit.collect(runs, FOLDS, data)
    assert evidence.learners == ("network", "gradient_boosting", "knn")
    position = pd.Series(np.arange(len(data.ids)), index=data.ids.astype(str))
    network, trees, neighbours = (np.zeros_like(evidence.pred_probs) for _ in range(3))
    loaded = datasets.load_split("mine", config["datasets"]["mine"])
    for seed in range(SEEDS):
        for fold in range(FOLDS):
            run = runs[seed * FOLDS + fold]
            rows = position[load_npz(run / "split.npz")["val_ids"].astype(str)].to_numpy()
            network[rows] += softmax(FactorStore(run / "factors").read("val_logits", evidence.epoch), -1) / SEEDS
            if seed:
                assert load_npz(run / "companions.npz") == {}  # one partition only
                continue
            train, held_out, _ = datasets.prepare(loaded, 1.0, 0.2, seed, fold, FOLDS, config["prepare"]["clip"])
            assert np.array_equal(position[held_out.ids.astype(str)].to_numpy(), rows)
            trees[rows] = HistGradientBoostingClassifier(random_state=seed).fit(train.x, train.y).predict_proba(held_out.x)
            votes = KNeighborsClassifier(KNN_NEIGHBOURS).fit(train.x, train.y).predict_proba(held_out.x) * KNN_NEIGHBOURS
            neighbours[rows] = (votes + 0.5) / (KNN_NEIGHBOURS + 0.5 * len(CLASSES))
    np.testing.assert_allclose(evidence.pred_probs, (network + trees + neighbours) / 3, rtol=1e-5, atol=1e-6)
    probs = pd.read_csv(out / "pred_probs.csv", dtype={"id": str}).set_index("id").loc[data.ids.astype(str), list(CLASSES)]
    np.testing.assert_allclose(probs.to_numpy(), evidence.pred_probs, rtol=1e-6, atol=1e-9)


def test_companions_named_in_the_command_reach_the_config_and_none_named_leaves_the_network_alone(tmp_path):
    import yaml

    write_table(tmp_path / "mine.csv", n_rows=60, n_flipped=0)
    for extra, expected in (([], ["gradient_boosting", "random_forest", "knn"]), (["--companions"], []), (["--companions", "knn"], ["knn"])):
        out = tmp_path / f"report{len(extra)}"
        assert main(["debug", str(tmp_path / "mine.csv"), "--label", "target", "--out", str(out), "--dry-run", *extra]) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["debug"]["companions"] == expected


def test_suspects_csv_columns_order_and_labels(table_run):
    out, _ = table_run
    suspects = suspects_of(out)
    assert list(suspects.columns[: len(HEAD)]) == HEAD
    assert {"si", "aum", "loss", "cnci", "knn_distance", "grad_norm"} <= set(suspects.columns[len(HEAD):])
    assert not {"detector", "clean_reference", "novelty_p", "confident_learning"} & set(suspects.columns)
    assert suspects["suspicion"].is_monotonic_decreasing
    assert set(suspects["observed_label"]) == set(CLASSES)
    assert set(suspects.loc[suspects["glitch_type"] != "anomaly", "suggested_label"]) <= set(CLASSES)
    assert set(suspects["glitch_type"]) <= {"mislabel", "anomaly", "none"}
    flagged = suspects[suspects["glitch_type"] == "mislabel"]
    assert len(flagged) and (flagged["suggested_label"] != flagged["observed_label"]).all()
    assert suspects["suspicion"].between(0, 1).all() and suspects["confidence"].between(0, 1).all()
    unflagged = suspects[suspects["glitch_type"] == "none"]
    assert (unflagged["suggested_label"] == unflagged["observed_label"]).all()  # no repair suggested


def test_top_k_holds_the_flipped_rows_and_suggests_their_true_labels(table_run):
    out, truth = table_run
    suspects = suspects_of(out)
    precision = truth.loc[suspects["id"].head(N_FLIPPED), "flipped"].mean()
    assert precision >= 0.5, precision  # chance is 0.1
    flagged = suspects[(suspects["glitch_type"] == "mislabel") & truth.loc[suspects["id"], "flipped"].to_numpy()]
    assert len(flagged) >= N_FLIPPED // 3
    assert (flagged["suggested_label"].to_numpy() == truth.loc[flagged["id"], "true"].to_numpy()).mean() >= 0.8


class ReportParser(HTMLParser):
    """The title, the text of elements with an id, the count of each class of table row, image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.by_id, self.rows, self.images = "", {}, {}, []
        self._stack: list[str | None] = []
        self._in_title, self._in_svg = False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_svg = self._in_svg or tag == "svg"
        if tag == "title" and not self._in_svg:  # the page's title, not a tooltip of the histogram
            self._in_title = True
        if tag == "tr" and attrs.get("class"):
            self.rows[attrs["class"]] = self.rows.get(attrs["class"], 0) + 1
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag not in ("img", "br", "meta", "line", "rect"):
            self._stack.append(attrs.get("id"))
            if attrs.get("id"):
                self.by_id.setdefault(attrs["id"], "")

    def handle_endtag(self, tag):
        self._in_title = self._in_title and tag != "title"
        self._in_svg = self._in_svg and tag != "svg"
        if tag not in ("img", "br", "meta", "line", "rect") and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        for element in self._stack:
            if element:
                self.by_id[element] += data


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text())
    return parser


def test_report_renders_summary_top_rows_and_explanations(table_run):
    out, _ = table_run
    suspects = suspects_of(out)
    report = parse_report(out / "report.html")
    assert report.title == "Data debugging report: mine"
    assert report.by_id["n-rows"].strip() == str(N_ROWS) and report.by_id["n-classes"].strip() == "3"
    kinds = suspects["glitch_type"].value_counts()
    assert report.by_id["n-mislabel"].strip() == str(kinds.get("mislabel", 0))
    assert report.by_id["n-anomaly"].strip() == str(kinds.get("anomaly", 0))
    assert "30 rows" in report.by_id["cut"]
    n_flagged = int((kinds.get("mislabel", 0) + kinds.get("anomaly", 0)))
    assert report.rows["suspect"] == min(N_ROWS, n_flagged + 20) and report.rows["explained"] == 10  # every flagged row
    assert f"{kinds.get('mislabel', 0)} rows" in re.sub(r"\s+", " ", report.by_id["issue-mislabel"])
    assert "confident learning estimates" in report.by_id["issue-mislabel"]
    assert "weak-labels" not in report.by_id  # the features predict these labels
    assert report.rows.get("pair", 0) <= 10
    top = report.by_id["top-rows"]
    assert suspects["id"].iloc[0] in top and "f0=" in top and "key=" not in top  # feature values, not the id
    flipped = suspects[suspects["glitch_type"] == "mislabel"].iloc[0]
    assert f"{flipped['observed_label']} \u2192 {flipped['suggested_label']}" in re.sub(r"\s+", " ", top)
    page = (out / "report.html").read_text()
    assert page.count('class="bar mislabel"') >= 1 and page.count('class="bar none"') >= 2  # flagged vs unflagged
    assert re.search(r"row-\d{4} \((ant|bee|cat), -[\d.e+-]+\)", report.by_id["harms"])  # harmed validation rows


def test_predictability_by_hand_and_a_page_on_unpredictable_labels_says_the_evidence_is_weak(tmp_path, capsys):
    from influence_signals.detector import WEAK_MARGIN, predictability

    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])  # the largest classes: 4 of 10
    top = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 0])  # the top class agrees on rows 0-2, 4, 6, 7: 6 of 10
    agreement, majority, weak = predictability(labels, np.eye(3)[top])
    assert (agreement, majority) == (0.6, 0.4) and not weak and WEAK_MARGIN < 0.2
    assert predictability(labels, np.eye(3)[[0] * 10])[2]  # always the largest class: weak
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(150, 4)), columns=list("abcd"))
    frame["y"] = rng.choice(list("pqr"), 150)  # labels the features do not carry
    frame.to_csv(tmp_path / "noise.csv", index=False)
    out = tmp_path / "report"
    assert main(["debug", str(tmp_path / "noise.csv"), "--label", "y", "--seeds", "1", "--folds", "3",
                 "--out", str(out)]) == 0
    warning = re.sub(r"\s+", " ", parse_report(out / "report.html").by_id["weak-labels"])
    assert "The label evidence is weak" in warning and "largest class" in warning
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(printed) == 1 and "the label evidence is weak" in printed[0]  # the terminal says it too


def test_a_rows_standing_out_values_are_robust_z_against_the_median_and_mad_or_how_rare_they_are():
    """The page lists the values furthest from their column's bulk: a number by its robust z, a rare category
    or blank by its share of rows; free text is not judged."""
    from influence_signals.html_report import deviations, standing_out

    n = 60
    x = np.append(np.arange(1.0, n), 1000.0)
    frame = pd.DataFrame({"x": x, "colour": ["red"] * (n - 1) + ["blue"], "note": [f"text {i}" for i in range(n)],
                          "size": [None] + [1.0, 1.1] * (n // 2 - 1) + [1.05]}, index=[f"r{i}" for i in range(n)])
    z, share = deviations(frame)
    median = np.median(x)
    assert z.loc["r59", "x"] == pytest.approx((1000 - median) / (1.4826 * np.median(np.abs(x - median))))
    assert z["note"].isna().all()  # 60 distinct texts: not a category
    assert share.loc["r59", "colour"] == pytest.approx(1 / n) and share.loc["r0", "size"] == pytest.approx(1 / n)
    listed = standing_out(frame.loc["r59"], z.loc["r59"], share.loc["r59"], 3)
    assert [d["column"] for d in listed] == ["x", "colour"] and listed[0]["value"] == "1000"
    assert [d["value"] for d in standing_out(frame.loc["r0"], z.loc["r0"], share.loc["r0"], 3)] == ["(blank)"]


def test_the_page_lists_the_ten_most_confused_class_pairs_and_counts_the_rest():
    from influence_signals.html_report import confused_pairs

    pairs = [(f"c{i}", f"d{i}") for i in range(12) for _ in range(12 - i)]  # pair i flagged 12 - i times
    suspects = pd.DataFrame({"observed_label": [o for o, _ in pairs] + ["c0"], "suggested_label": [s for _, s in pairs] + ["c0"],
                             "glitch_type": ["mislabel"] * len(pairs) + ["none"]})
    shown = confused_pairs(suspects)
    assert [(p["observed"], p["count"]) for p in shown["pairs"]] == [(f"c{i}", 12 - i) for i in range(10)]
    assert shown["pairs_more"] == 2 and shown["pairs_more_rows"] == 2 + 1


def test_image_folder_report_shows_thumbnails(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("dark", "light")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(rng.normal(0.3 + 0.4 * label, 0.1, (8, 8, 3)), 0, 1)
            Image.fromarray((pixels * 255).astype(np.uint8)).save(tmp_path / "images" / name / f"im{i}.png")
    out = tmp_path / "report"
    assert main(["debug", str(tmp_path / "images"), "--model", "resnet20", "--epochs", "1", "--folds", "2", "--seeds", "1",
                 "--cores", "2", "--out", str(out)]) == 0
    suspects = suspects_of(out)
    assert len(suspects) == 16 and (suspects["n_scores"] == 1).all()
    assert set(suspects["id"]) == {f"{c}/im{i}.png" for c in ("dark", "light") for i in range(8)}
    report = parse_report(out / "report.html")
    assert report.by_id["n-rows"].strip() == "16" and report.rows["suspect"] == 16
    assert len(report.images) == 16 and all(src.startswith("data:image/png;base64,") for src in report.images)
    assert '<img class="thumb" src="data:image/png;base64,' in (out / "report.html").read_text()


@pytest.mark.pipeline
def test_through_snakemake_only_this_datas_jobs_run(tmp_path, capfd):
    write_table(tmp_path / "small.csv", n_rows=120, n_flipped=12)
    args = ["debug", str(tmp_path / "small.csv"), "--label", "target", "--id", "key", "--folds", "2", "--seeds", "1",
            "--epochs", "2", "--cores", "2", "--out", str(tmp_path / "report")]
    assert main([*args, "--dry-run"]) == 0
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", capfd.readouterr().out, flags=re.MULTILINE))
    planned.pop("total")
    assert {rule: int(n) for rule, n in planned.items()} == {"crossfit": 2, "debug_report": 1, "all": 1}  # a job per fold
    assert not (tmp_path / "report" / "suspects.csv").exists()
    assert main(args) == 0
    printed = capfd.readouterr().out
    assert "4 of 4 jobs done" in printed and "rule crossfit" not in printed  # progress, not Snakemake's job blocks
    assert "rule crossfit" in (tmp_path / "report" / "snakemake.log").read_text()
    suspects = suspects_of(tmp_path / "report")
    assert len(suspects) == 120 and (suspects["n_scores"] == 1).all()
    assert not [p for p in (tmp_path / "report/results/crossfit").rglob("*") if p.is_file()]  # removed after the report
    assert not (tmp_path / "report/results/summary.csv").exists()
    assert main(args) == 0 and "0 of" not in capfd.readouterr().out  # nothing to redo: the same outputs, runs gone
    assert parse_report(tmp_path / "report" / "report.html").by_id["n-rows"].strip() == "120"


@pytest.mark.parametrize("file,change,named", [
    ("t.csv", ["--label", "nope"], "label column 'nope'"),
    ("t.csv", ["--label", "target", "--id", "missing_id"], "id column 'missing_id'"),
    ("t.csv", ["--label", "target", "--drop", "ghost"], "drop column 'ghost'"),
    ("gone.csv", ["--label", "target"], "no such file"),
    ("t.csv", ["--label", "target", "--id", "key", "--model", "xgboost"], "--model xgboost: not a model; for a table use one of mlp, resnet, ft_transformer"),
    ("t.csv", ["--label", "target", "--id", "key", "--model", "resnet20"], "a model for image data; for a table use"),
    ("t.csv", ["--label", "target", "--profile", "no/such/profile"], "--profile no/such/profile: not a Snakemake profile"),
])
def test_bad_input_exits_2_before_any_work(tmp_path, capsys, file, change, named):
    write_table(tmp_path / "t.csv", n_rows=60, n_flipped=0)
    assert main(["debug", str(tmp_path / file), *change, "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err
    assert not (tmp_path / "report").exists()


def test_suspicion_table_is_the_detectors_verdict_on_the_whole_data_with_mean_scores():
    """Two runs of twelve rows: the verdict comes from the held-out probabilities, the training loss (both at
    the chosen checkpoint) and the rows' own novelty (no clean reference); the per-signal columns are means
    over the runs."""
    from influence_signals import detector
    from influence_signals.crossfit import Evidence

    ids = np.array([f"r{i}" for i in range(12)])
    data = datasets.DataSet("t", np.array([[0.0], [0.1], [0.2], [9.0]] * 3, dtype=np.float32), np.array([0, 0, 1, 1] * 3),
                            ("a", "b"), "tabular", ids)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]] * 3)
    per_row = pd.DataFrame({"id": list(ids) * 2, "seed": 0, "fold": [0] * 12 + [1] * 12, "row": list(range(12)) * 2,
                            "observed_label": list(data.y) * 2, "loss": np.arange(24.0), "aum": np.ones(24)})
    training_loss = np.linspace(0.1, 2.0, 12)
    table = suspicion_table(Evidence(per_row, probs, training_loss, 3, np.ones(5)), data).set_index("id")
    novelty = detector.robust_novelty([data.x])
    expected = detector.verdict(data.y, probs, novelty, training_loss=training_loss).set_index(ids)
    assert list(table.index) == list(expected["suspicion"].sort_values(ascending=False, kind="mergesort").index)
    for column in ("glitch_type", "suggested_label", "suspicion", "confidence", "label_score"):
        np.testing.assert_array_equal(table.loc[ids, column].to_numpy(), expected[column].to_numpy())
    assert table.loc["r1", "loss"] == (1 + 13) / 2 and (table["n_scores"] == 2).all()


def test_the_output_folder_is_never_one_with_files_the_command_did_not_write(tmp_path, capsys):
    write_table(tmp_path / "t.csv", n_rows=60, n_flipped=0)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.yaml").write_text("mine: true\n")
    (tmp_path / "afile").write_text("x")
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    cases = {"theirs": "did not write", "afile": "is a file"}
    if os.getuid() != 0:  # root writes anywhere
        cases[f"readonly/{'sub'}"] = "cannot write there"
    for out, message in cases.items():
        args = ["debug", str(tmp_path / "t.csv"), "--label", "target", "--id", "key", "--out", str(tmp_path / out)]
        assert main([*args, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert (tmp_path / "theirs" / "config.yaml").read_text() == "mine: true\n"  # untouched, even by --dry-run
    ours = tmp_path / "ours"
    args = ["debug", str(tmp_path / "t.csv"), "--label", "target", "--id", "key", "--out", str(ours), "--dry-run"]
    assert main(args) == 0 and main(args) == 0  # its own folder, again


def test_formula_like_ids_are_written_so_that_a_spreadsheet_shows_them_as_text():
    from influence_signals.crossfit import spreadsheet_safe

    table = pd.DataFrame({"id": ["=HYPERLINK(\"http://x\")", "plain", "+1+A1", "@sum", "-2"], "score": [1.0, -2.0, 3.0, 4.0, 5.0]})
    safe = spreadsheet_safe(table)
    assert list(safe["id"]) == ["'=HYPERLINK(\"http://x\")", "plain", "'+1+A1", "'@sum", "-2"]
    assert list(safe["score"]) == [1.0, -2.0, 3.0, 4.0, 5.0]  # numbers stay numbers


def test_a_real_world_table_with_text_booleans_blanks_and_dates_is_scored_row_by_row(tmp_path, capsys):
    """Categories become 0 / 1 columns, yes / no columns 0 / 1, blanks the median plus a marker column; dates
    and free text are named and left out; every row is scored with its id, the page shows the original values."""
    rng = np.random.default_rng(4)
    n = 150
    label = rng.integers(0, 3, n)
    frame = pd.DataFrame({
        "key": [f"p-{i:03d}" for i in rng.permutation(n)],
        "size": np.where(rng.random(n) < 0.1, np.nan, label + rng.normal(0, 0.3, n)),
        "colour": np.where(rng.random(n) < 0.05, None, np.array(["red", "green", "blue"])[label]),
        "member": np.where(label == 1, "yes", "no"),
        "flag": label == 2,
        "joined": [f"2024-0{1 + i % 9}-1{i % 10}" for i in range(n)],
        "comment": [f"free text number {i} about this row" for i in range(n)],
        "kind": np.array(["ant", "bee", "cat"])[label],
    })
    frame.to_csv(tmp_path / "real.csv", index=False)
    out = tmp_path / "report"
    assert main(["debug", str(tmp_path / "real.csv"), "--label", "kind", "--id", "key", "--seeds", "1", "--folds", "3",
                 "--epochs", "3", "--cores", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "joined: dates, not used" in printed and "comment: 150 distinct texts" in printed
    assert "colour: 3 categories" in printed and "size: " in printed and "blanks set to the median" in printed
    suspects = suspects_of(out)
    assert sorted(suspects["id"]) == sorted(frame["key"]) and suspects["suspicion"].notna().all()
    page = (out / "report.html").read_text()
    assert "colour=" in page and ("=red" in page or "=green" in page or "=blue" in page)  # as written, not encoded


def test_the_debug_command_plans_its_jobs_for_the_executor_a_profile_names(tmp_path, capsys):
    """``--profile profiles/slurm`` hands the per-seed jobs to the SLURM executor (planned here: ``--dry-run``)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    table = tmp_path / "t.csv"
    frame = pd.DataFrame({"a": np.arange(60.0), "b": np.arange(60.0) % 7, "target": ["p", "q", "r"] * 20})
    frame.to_csv(table, index=False)
    assert main(["debug", str(table), "--label", "target", "--seeds", "2", "--dry-run", "--out", str(tmp_path / "o"),
                       "--profile", str(ROOT / "profiles" / "slurm")]) == 0
    printed = capsys.readouterr().out
    assert "crossfit" in printed and "debug_report" in printed
    assert "slurm" in printed.lower()
