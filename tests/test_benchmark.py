"""raspicl benchmark: the metrics against brute force and closed forms; the quick suite end to
end, with what it must show (dense probes and DAS find the variables in plain and disguised
models alike, the sparse probe, which trusts the residual basis, is clearly worse on disguised
ones); score() from the HuggingFace export alone, a TransformerLens method agreeing with the
same method on raspicl's own forward pass."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
import torch
from bench_models import compiled

from raspicl.benchmark import MethodOutputs, score, task_for
from raspicl.benchmark.methods import Cache, act_patch, interchange_metrics
from raspicl.benchmark.metrics import (
    auroc,
    faithfulness,
    largest_angle,
    precision_recall,
    principal_cos2,
)
from raspicl.benchmark.score import candidate_edges, score_task
from raspicl.benchmark.subject import RaspiclSubject
from raspicl.benchmark.suite import QUICK, markdown, run_benchmark, write
from raspicl.benchmark.tasks import make_task
from raspicl.cli import main
from raspicl.export import save
from raspicl.groundtruth import derive

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_auroc_is_the_pairwise_probability():
    rng = np.random.default_rng(0)
    for _ in range(20):
        keys = list(range(12))
        scores = {k: float(rng.integers(0, 4)) for k in keys}  # ties on purpose
        pos = set(rng.choice(keys, 5, replace=False).tolist())
        pairs = [(p, n) for p, n in itertools.product(pos, set(keys) - pos)]
        want = np.mean([1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n]
                        else 0.0 for p, n in pairs])
        assert math.isclose(auroc(scores, pos), want, abs_tol=1e-12)
    assert math.isnan(auroc({1: 0.0, 2: 1.0}, {1, 2}))


def test_subspace_metrics_against_known_angles():
    d = 6
    e = np.eye(d)
    for theta in (0.0, 0.3, 1.0, math.pi / 2):
        U = (math.cos(theta) * e[:, 0] + math.sin(theta) * e[:, 3])[:, None]
        D = e[:, [0]]
        assert math.isclose(principal_cos2(U, D), math.cos(theta) ** 2, abs_tol=1e-12)
        assert math.isclose(largest_angle(U, D), math.degrees(theta), abs_tol=1e-6)
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((d, d)))
    D = Q[:, :2]
    assert math.isclose(principal_cos2(D @ np.array([[2.0, 1.0], [0.0, 3.0]]), D), 1.0)
    assert principal_cos2(D[:, :1], D) == pytest.approx(0.5)  # one of two dimensions
    assert largest_angle(D[:, :1], D) == 90.0


def test_precision_recall_and_faithfulness():
    assert precision_recall({1, 2, 3}, {2, 3, 4, 5}) == (2 / 3, 0.5)
    assert precision_recall(set(), {1}) == (1.0, 0.0)
    base, exact = np.zeros(4), np.ones(4)
    assert faithfulness(exact, exact, base) == 1.0
    assert faithfulness(base, exact, base) == 0.0
    assert faithfulness(0.75 * exact, exact, base) == pytest.approx(0.75)
    assert math.isnan(faithfulness(exact, base, base))


def test_candidate_edges_run_forwards():
    _, cm = compiled("gd_step", "paper")
    gt = derive(cm.layout)
    cands = set(candidate_edges(gt))
    truth = gt.edge_set(("value", "anchor", "mask"))
    assert truth <= cands
    assert ("L1.MLP", "L0.H0") not in cands and ("embed", "readout") in cands


def test_interchange_metrics_equal_one_by_one():
    """The batched interchange (one copy of the prompts per edit) equals the edits run one
    at a time, and an edit along a variable's true directions gives its exact
    counterfactual."""
    program, cm = compiled("ridge", "gpt2", {"d": 2, "n": 2}, seed=3)
    gt = derive(cm.layout)
    task = make_task(gt, program, cm.layout, 8, 8, max_variables=2)
    subject = RaspiclSubject(cm)
    cache = Cache(subject, task)
    ra, rb = cache.res("test", "a"), cache.res("test", "b")
    edits = [(vt.var.written, vt.tokens, vt.var.direction_matrix()) for vt in task.variables]
    edits.append((3, (1, 2), None))
    batched = interchange_metrics(subject, task.test, ra, rb, edits)
    for k, e in enumerate(edits):
        one = interchange_metrics(subject, task.test, ra, rb, [e])[0]
        assert np.allclose(batched[k], one, rtol=1e-10, atol=1e-10)
    for k, vt in enumerate(task.variables):
        exact = task.test.exact_all[vt.name]
        assert np.allclose(batched[k], exact, rtol=1e-6, atol=1e-6), vt.name


@pytest.fixture(scope="module")
def quick():
    return run_benchmark(QUICK)


def _row(result, method, arch, disguised):
    return next(r for r in result["leaderboard"] if r["method"] == method
                and r["arch"] == arch and r["disguised"] == disguised)


def test_quick_suite_runs_and_shows_the_disguise(quick, tmp_path):
    assert len(quick["models"]) == 8  # gd_step and ridge x paper, gpt2 x plain, disguised
    for arch in ("paper", "gpt2"):
        for method in ("probe", "das"):  # basis-free methods: the same on both
            for disguised in (False, True):
                row = _row(quick, method, arch, disguised)
                assert row["subspace_cos2"] > 0.9 and row["faithfulness"] > 0.9, row
        plain = _row(quick, "sparse_probe", arch, False)
        dis = _row(quick, "sparse_probe", arch, True)
        assert plain["subspace_cos2"] > 0.95
        assert dis["subspace_cos2"] < plain["subspace_cos2"] - 0.3, (plain, dis)
        assert dis["recall"] < plain["recall"] - 0.3
        edge = _row(quick, "attr_patch", arch, False)["edge_auroc"]
        assert edge > 0.8
    md, js = write(quick, tmp_path)
    text = md.read_text()
    assert text == markdown(quick) and "| sparse_probe | gpt2 | disguised |" in text
    import json

    back = json.loads(js.read_text())  # standard JSON: a metric not produced is null
    assert back["leaderboard"][0]["node_auroc"] is None and len(back["models"]) == 8


def test_cli_quick(tmp_path, capsys, monkeypatch):
    import raspicl.benchmark.suite as suite

    monkeypatch.setattr(suite, "QUICK", suite.Config(("gd_step",), 1, 8, 4, 1, 2))
    assert main(["benchmark", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| probe | paper | plain |" in out and (tmp_path / "leaderboard.json").is_file()


def test_score_from_the_hf_export_with_transformer_lens(tmp_path):
    """A method written for TransformerLens (whole-residual activation patching through
    hooks), run on DIR/hf alone and scored there, equals the same method on raspicl's own
    forward pass."""
    pytest.importorskip("transformer_lens")
    from raspicl.benchmark.subject import TLensSubject

    program, cm = compiled("gd_step", "gpt2", {"d": 2}, seed=2, pad=2)
    out = save(cm, tmp_path / "gd")
    task = task_for(out / "hf", n_fit=8, n_test=8, max_variables=2)
    tl = TLensSubject(out / "hf")
    with torch.no_grad():
        pred, res = tl.run(task.test.a.tokens())
    own, own_res = RaspiclSubject(cm).run(task.test.a.tokens())
    assert np.allclose(pred.numpy(), own.detach().numpy(), rtol=1e-10, atol=1e-10)
    assert len(res) == len(own_res) == task.gt.n_residuals
    # a patch at every residual, after attention ones included (through hook_attn_out: the
    # bridge's hook_resid_mid would feed the MLP only), moves both passes alike
    _, res_b = RaspiclSubject(cm).run(task.test.b.tokens())
    for i in range(task.gt.n_residuals):
        new = res_b[i].detach()
        with torch.no_grad():
            got, _ = tl.run(task.test.a.tokens(), {i: lambda r, n=new: n})
            want, _ = RaspiclSubject(cm).run(task.test.a.tokens(), {i: lambda r, n=new: n})
        assert np.allclose(got.numpy(), want.numpy(), rtol=1e-8, atol=1e-8), i
    via_tl = act_patch(tl, task, Cache(tl, task))
    assert not via_tl.nodes  # node resampling needs components: raspicl's subject only
    s_tl = score(out / "hf", via_tl, task=task)
    s_own = score_task(task, act_patch(RaspiclSubject(cm), task,
                                       Cache(RaspiclSubject(cm), task)))
    for a, b in zip(s_tl.variables, s_own.variables, strict=True):
        assert (a.precision, a.recall) == (b.precision, b.recall)
        assert a.faithfulness == pytest.approx(b.faithfulness, abs=1e-9)
    # an outside method's claim: the true directions score 1, a wrong residual 0
    vt = task.variables[0]
    right = MethodOutputs("oracle", subspaces={vt.name: (vt.var.written,
                                                         vt.var.direction_matrix())})
    assert score(out / "hf", right, task=task).variables[0].subspace_cos2 == \
        pytest.approx(1.0)
    wrong = MethodOutputs("off", subspaces={vt.name: (0, vt.var.direction_matrix())})
    assert score(out / "hf", wrong, task=task).variables[0].subspace_cos2 == 0.0
