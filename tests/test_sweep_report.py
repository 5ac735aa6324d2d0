"""raspicl report: aggregation over seeds against means and intervals computed here by hand,
the MSPD table's diagonal and minima, the controls' rows, and the files it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from raspicl.cli import main
from raspicl.icl.report import build_report, mean_ci, t975

# t(0.975, 2) and t(0.975, 1) from a statistics table (not from raspicl's own)
T2 = 4.302652729911275
T1 = 12.706204736174705
LEARNERS = ["least_squares", "ridge(0.0625)", "ridge(0.25)", "gd(T=1)", "averaging"]


def _params(layers: int, noise: float, seed: int) -> dict:
    return {"d": 3, "n": 6, "layers": layers, "d_model": 32, "heads": 2, "steps": 100,
            "noise": noise, "w_scale": 1.0, "curriculum": None, "fixed_w": False,
            "batch": 64, "lr": 1e-3, "warmup": 10, "weight_decay": 0.01, "grad_clip": 1.0,
            "min_lr_ratio": 0.1, "eval_prompts": 64, "seed": seed, "trainer": "single"}


def _compare(rng, d: int = 3, n: int = 6, noise: float = 0.0, model: str = "trained:model"
             ) -> dict:
    spd = {k: list(rng.uniform(1e-3, 1.0, n + 1)) for k in LEARNERS}
    error = {k: list(rng.uniform(0.0, 1.0, n + 1)) for k in [model, *LEARNERS]}
    mean_spd = {k: float(np.mean(v)) for k, v in spd.items()}
    return {"model": model, "d": d, "n": n, "noise": noise, "w_scale": 1.0, "spd": spd,
            "error": error, "mean_spd": mean_spd,
            "mspd": {k: float(np.mean(v[1:d])) for k, v in spd.items()},
            "best_match": min(mean_spd, key=mean_spd.get)}


def _write(root: Path, name: str, kind: str, params: dict, compare: dict | None,
           probe: dict | None = None, state: str = "done") -> None:
    jdir = root / "jobs" / name
    (jdir / "compare").mkdir(parents=True)
    (jdir / "status.json").write_text(json.dumps(
        {"state": state, "stages": {"train": {"seconds": 3.0}, "compare": {"seconds": 1.5}}}))
    if compare is not None:
        (jdir / "compare" / "compare.json").write_text(json.dumps(compare))
    if probe is not None:
        (jdir / "probe").mkdir()
        (jdir / "probe" / "probe.json").write_text(json.dumps(probe))
    (jdir / "model").mkdir()
    (jdir / "model" / "train_log.jsonl").write_text(
        json.dumps({"step": 50, "loss": 1.0, "steps_per_s": 25.0}) + "\n"
        + json.dumps({"step": 100, "loss": 0.5, "steps_per_s": 50.0}) + "\n")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Cells: L=2 at σ = 0 and σ = 0.5 (three seeds each), L=4 at σ = 0 (three seeds, one
    of them not finished), a compiled control; random metrics, written as the jobs write
    them; and the report built from them."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(7)
    jobs, data = [], {}
    for layers, noise, seeds in ((2, 0.0, (0, 1, 2)), (2, 0.5, (0, 1, 2)), (4, 0.0, (0, 1, 2))):
        for seed in seeds:
            p = _params(layers, noise, seed)
            name = f"L{layers}-noise{noise:g}-seed{seed}"
            cell = f"L{layers}-noise{noise:g}"
            jobs.append({"name": name, "kind": "train", "cell": cell, "params": p})
            unfinished = layers == 4 and seed == 2
            c = _compare(rng, noise=noise)
            probe = {"results": {"model": [{"target": "w_ols", "kind": "linear",
                                            "at_query": list(rng.uniform(0, 1, layers + 1))}]}}
            _write(tmp_path, name, "train", p, None if unfinished else c, probe,
                   "running" if unfinished else "done")
            if not unfinished:
                data.setdefault(cell, []).append((c, probe))
    ctl = {"program": "ridge", "set": {"lam": 0.5}, "d": 3, "n": 6, "noise": 0.0}
    cc = _compare(rng, model="compiled ridge(lam=0.5)")
    jobs.append({"name": "ctl", "kind": "control", "cell": "ctl", "params": ctl})
    _write(tmp_path, "ctl", "control", ctl, cc)
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"format": "raspicl.sweep/1", "name": "hand", "jobs": jobs,
         "analyses": {"compare": {"prompts": 8}, "probe": {"prompts": 8}}}))
    return tmp_path, data, cc, build_report(tmp_path, tmp_path / "report")


def test_the_t_quantiles_are_the_tables():
    assert t975(1) == pytest.approx(T1, abs=1e-4)
    assert t975(2) == pytest.approx(T2, abs=1e-4)
    assert t975(40) == pytest.approx(2.021075390306273, abs=1e-4)  # beyond the table
    assert t975(120) == pytest.approx(1.979930405052777, abs=1e-4)
    assert mean_ci([1.0]) == {"mean": 1.0, "ci": None, "n": 1, "values": [1.0], "missing": 0}
    assert mean_ci([1.0, None, float("nan"), 3.0])["missing"] == 2


def test_report_means_and_intervals_are_those_computed_by_hand(sweep):
    root, data, cc, rep = sweep
    cells = {c["cell"]: c for c in rep.data["cells"]}
    for cell, runs in data.items():
        got = cells[cell]
        n = len(runs)
        assert got["seeds"] == list(range(n)) and n in (2, 3)
        for learner in LEARNERS:
            vals = np.array([c["mean_spd"][learner] for c, _ in runs])
            mean = vals.sum() / n
            half = (T2 if n == 3 else T1) * math.sqrt(((vals - mean) ** 2).sum() / (n - 1)) \
                / math.sqrt(n)
            assert got["mean_spd"][learner]["mean"] == pytest.approx(mean, rel=1e-12)
            assert got["mean_spd"][learner]["ci"] == pytest.approx(half, rel=1e-4)
            mspd = np.mean([c["mspd"][learner] for c, _ in runs])
            assert got["mspd"][learner]["mean"] == pytest.approx(mspd, rel=1e-12)
        means = {k: np.mean([c["mean_spd"][k] for c, _ in runs]) for k in LEARNERS}
        best = min(means, key=means.get)
        assert got["best_match"]["learner"] == best
        assert got["best_match"]["seeds_agreeing"] == sum(c["best_match"] == best
                                                          for c, _ in runs)
        curves = np.array([c["error"]["trained:model"] for c, _ in runs])
        assert np.allclose(got["error_by_k"]["model"]["mean"], curves.mean(axis=0))
        assert got["query_error"]["mean"] == pytest.approx(curves[:, -1].mean())
        r2 = np.array([p["results"]["model"][0]["at_query"] for _, p in runs])
        assert np.allclose(got["probe"][0]["at_query"]["mean"], r2.mean(axis=0))
        # the training time: 50 steps at 25/s + 50 at 50/s = 3 s for every seed
        assert got["seconds"]["train"]["mean"] == pytest.approx(3.0)
    assert cells["L4-noise0"]["missing"] == ["L4-noise0-seed2"]
    assert rep.data["missing"] == ["L4-noise0-seed2"]
    control = cells["ctl"]
    assert control["kind"] == "control" and control["best_match"]["learner"] == cc["best_match"]
    assert control["mean_spd"]["gd(T=1)"]["ci"] is None  # one run, no interval


def test_the_mspd_table_marks_the_diagonal_and_the_minima(sweep):
    root, data, cc, rep = sweep
    (table,) = rep.data["mspd_tables"]  # only L = 2 was trained at two noise levels
    assert [c["noise"] for c in table["columns"]] == [0.0, 0.5]
    assert table["rows"] == ["least_squares", "ridge(0.0625)", "ridge(0.25)"]
    zero, half = table["columns"]
    assert zero["diagonal"] == "least_squares" and half["diagonal"] == "ridge(0.25)"
    for col, cell in ((zero, "L2-noise0"), (half, "L2-noise0.5")):
        means = {r: np.mean([c["mspd"][r] for c, _ in data[cell]]) for r in table["rows"]}
        assert col["minimum"] == min(means, key=means.get)
    (control,) = table["controls"]  # the compiled control has the same d and n
    assert control["values"]["ridge(0.25)"]["mean"] == pytest.approx(cc["mspd"]["ridge(0.25)"])
    md = rep.markdown
    assert "control: compiled ridge(lam=0.5)" in md
    assert "## MSPD over noise levels" in md and "†" in md and "**" in md
    for f in ("phase.png", "mspd_0.png", "error_noise0.png", "error_noise0.5.png",
              "probe_w_ols_linear.png"):
        assert f in rep.figures and (root / "report" / f).stat().st_size > 10_000, f
    assert json.loads((root / "report" / "report.json").read_text())["format"] == \
        "raspicl.report/1"


def test_report_cli_refuses_a_directory_that_is_not_a_sweep(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no sweep.json" in err and err.count("\n") == 1


def test_other_tasks_are_left_out_of_the_linear_tables_and_listed_apart(tmp_path, capsys):
    """Linear cells at two noise levels beside sparse ones (also two) and a logistic one: the
    phase and MSPD tables hold the linear cells alone, the others are a table of their own
    (each against its own learners), labelled by task, with a note."""
    rng = np.random.default_rng(3)
    logistic = ["logreg(1)", "logistic_gd(T=1)", "constant(0.5)"]
    jobs = []
    for task, noises in (("linear", (0.0, 0.5)), ("sparse", (0.0, 0.5)), ("logistic", (0.0,))):
        for noise in noises:
            for seed in (0, 1):
                p = _params(2, noise, seed)
                if task != "linear":
                    p["task"] = task
                if task == "sparse":
                    p["sparsity"] = 2
                name = f"{task}-noise{noise:g}-seed{seed}"
                c = _compare(rng, noise=noise)
                c["task"] = task
                if task == "logistic":
                    for key in ("spd", "mean_spd", "mspd"):
                        c[key] = {k: c[key][old] for k, old in zip(logistic, LEARNERS,
                                                                    strict=False)}
                    c["error"] = {k: c["error"][old] for k, old in
                                  zip(["trained:model", *logistic], c["error"], strict=False)}
                    c["best_match"] = min(c["mean_spd"], key=c["mean_spd"].get)
                jobs.append({"name": name, "kind": "train", "cell": name[:-len("-seed0")],
                             "params": p})
                _write(tmp_path, name, "train", p, c)
    (tmp_path / "sweep.json").write_text(json.dumps(
        {"format": "raspicl.sweep/1", "name": "tasks", "jobs": jobs,
         "analyses": {"compare": {"prompts": 8}, "probe": None}}))
    rep = build_report(tmp_path, tmp_path / "report")
    assert [r["task"] for r in rep.data["phase_table"]] == ["linear", "linear"]
    assert [r["task"] for r in rep.data["task_table"]] == ["logistic", "sparse(k=2)",
                                                           "sparse(k=2)"]
    (table,) = rep.data["mspd_tables"]  # the linear cells' alone, not the sparse ones'
    assert [c["cell"] for c in table["columns"]] == ["linear-noise0", "linear-noise0.5"]
    logi = next(r for r in rep.data["task_table"] if r["task"] == "logistic")
    assert logi["best"] in logistic and logi["label"].startswith("logistic L=2")
    assert "error_logistic_noise0.png" in rep.figures and "error_noise0.5.png" in rep.figures
    assert "## Other tasks: the best-matching learner" in rep.markdown
    assert "note: 3 cell(s) of other tasks than linear" in rep.summary()
    assert main(["report", str(tmp_path)]) == 0
    assert "left out of the phase and MSPD tables" in capsys.readouterr().out
