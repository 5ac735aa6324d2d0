"""groundtruth.json (raspicl.groundtruth): written beside every export, validated on load, a
tampered record refused naming the field; and the component graph held against independent
evidence: the weights themselves (a head or MLP is used exactly where its output weights are
nonzero; an edge's values lie on rows its reader reads and its writer writes) and ablations
judged by the interpreter (zeroing an unused component changes nothing; zeroing a writer of a
variable the output depends on, per the interpreter's counterfactual, changes the
prediction)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from bench_models import ARCHS, PROGRAMS, compiled

from raspicl import random_prompts
from raspicl.counterfactual import override_trace, value_of
from raspicl.errors import LoadError
from raspicl.export import save
from raspicl.groundtruth import (
    GROUNDTRUTH,
    READOUT,
    derive,
    first_difference,
    load_groundtruth,
    validate,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_every_export_carries_a_valid_record(name, arch, tmp_path):
    _, cm = compiled(name, arch)
    out = save(cm, tmp_path / "m")
    gt = load_groundtruth(out)
    assert gt.program["name"] == name and gt.architecture == arch
    assert gt.layout_digest == json.loads((out / "layout.json").read_text())["integrity"][
        "digest"]
    if arch == "gpt2":  # beside the HuggingFace export too, identical
        assert (out / "hf" / GROUNDTRUTH).read_bytes() == (out / GROUNDTRUTH).read_bytes()
        assert load_groundtruth(out / "hf").to_json() == gt.to_json()
    # every register version is a variable; stored ones read off their rows
    labels = {v["label"] for r in cm.layout["registers"].values() for v in r["versions"]}
    assert {v.name for v in gt.variables} == labels
    assert gt.output["variable"] in labels
    assert READOUT in gt.reaches_readout() and "embed" in gt.reaches_readout()
    # saving again over the directory (groundtruth.json and hf/ included) is allowed
    save(cm, out)


def _tamper_cases():
    def rows(r):
        v = next(v for v in r["variables"] if v["stored"] and v["rows"])
        v["rows"][0] = (v["rows"][0] + 1) % r["d_model"]
        return "variables[", ".rows[0]"

    def direction(r):
        v = next(v for v in r["variables"] if v["stored"] and v["rows"])
        v["directions"][0][0] += 0.5
        return "variables[", ".directions[0]"

    def edge(r):
        r["edges"][0]["target"] = "L99.H0"
        return "edges[0].target", ""

    def circuit(r):
        c = next(c for c in r["components"] if c["kind"] == "head" and not c["circuit"])
        c["circuit"] = True
        return "components[", "].circuit"

    def token(r):
        v = r["variables"][-1]
        v["tokens"] = v["tokens"][:-1]
        return f"variables[{len(r['variables']) - 1}].tokens", ""

    def written(r):
        v = next(v for v in r["variables"] if v["stored"] and v["written"] > 0)
        v["written"] -= 1
        return "variables[", ".written"

    def digest(r):
        r["layout_digest"] = "0" * 64
        return "layout_digest", ""

    def missing(r):
        del r["variables"][0]["source"]
        return "variables[0].source", "missing"

    return [rows, direction, edge, circuit, token, written, digest, missing]


@pytest.fixture(scope="module")
def saved_ridge(tmp_path_factory):
    _, cm = compiled("ridge", "gpt2", {"d": 2, "n": 2})
    return save(cm, tmp_path_factory.mktemp("gt") / "ridge")


@pytest.mark.parametrize("tamper", _tamper_cases(), ids=lambda f: f.__name__)
def test_a_tampered_record_is_refused_naming_the_field(tamper, saved_ridge, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(saved_ridge, out)
    for where in (out, out / "hf"):
        record = json.loads((where / GROUNDTRUTH).read_text())
        head, tail = tamper(record)
        (where / GROUNDTRUTH).write_text(json.dumps(record))
        with pytest.raises(LoadError) as err:
            load_groundtruth(where)
        msg = str(err.value)
        assert msg.startswith(f"{GROUNDTRUTH}: ") and head in msg and tail in msg, msg


def test_validate_alone_checks_relations():
    _, cm = compiled("gd_step", "paper")
    record = derive(cm.layout).to_json()
    validate(record)
    i, v = next((i, v) for i, v in enumerate(record["variables"])
                if v["stored"] and v["written"] > 1)
    v["cleared"] = v["written"]
    with pytest.raises(LoadError, match=rf"variables\[{i}\]\.cleared must be after written"):
        validate(record)
    assert first_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "a[1].b"


# ---------------------------------------------------------------------------------- the graph


def _weights_of(cm, comp) -> tuple[np.ndarray, np.ndarray]:
    """(rows the component reads, rows it writes): nonzero rows of W_V[h] / W_O[h]'s columns,
    of W_in / W_out's columns (and b_out)."""
    b = cm.model.blocks[comp.layer]
    if comp.kind == "head":
        read = b.attn.W_V[comp.head].abs().sum(-1)
        write = b.attn.W_O[comp.head].abs().sum(0)
    else:
        read = b.mlp.W_in.abs().sum(-1)
        write = b.mlp.W_out.abs().sum(0) + b.mlp.b_out.abs()
    return (read.numpy() > 0), (write.numpy() > 0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_graph_against_the_weights(name, arch):
    _, cm = compiled(name, arch)
    gt = derive(cm.layout)
    rows_of = {}
    for v in gt.variables:
        rows_of[v.name] = set(v.rows)
        for c in v.carriers:
            rows_of[c.label] = set(c.rows)
    for t in cm.layout["temporaries"]:
        rows_of[t["label"]] = set(t["rows"])
    for comp in gt.components:
        if comp.kind not in ("head", "mlp"):
            continue
        read, write = _weights_of(cm, comp)
        if comp.kind == "head":  # (an MLP's b_out may hold the anchors' restore, gpt2)
            assert write.any() == comp.used, comp.id
        for e in gt.edges:
            if e.kind != "value":
                continue
            rows = set().union(*(rows_of.get(v, set()) for v in e.values))
            if e.target == comp.id:
                assert all(read[r] for r in rows), (comp.id, e)
            if e.source == comp.id:
                assert all(write[r] for r in rows), (comp.id, e)


def _ablated(cm, comp, prompts) -> np.ndarray:
    """Predictions with the component's output zeroed (a head's W_O[h]; an MLP's W_out and
    b_out), weights restored after."""
    b = cm.model.blocks[comp.layer]
    saved = {k: v.clone() for k, v in cm.model.state_dict().items()}
    try:
        with torch.no_grad():
            if comp.kind == "head":
                b.attn.W_O[comp.head] = 0
            else:
                b.mlp.W_out.zero_()
                b.mlp.b_out.zero_()
        return cm.predict(prompts, check="ignore")
    finally:
        cm.model.load_state_dict(saved)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["gd_step", "sherman_morrison", "ridge", "sgd", "nlms"])
def test_graph_against_ablations_and_the_interpreter(name, arch):
    program, cm = compiled(name, arch)
    gt = derive(cm.layout)
    A = random_prompts(16, program.d, program.n, seed=11)
    B = random_prompts(16, program.d, program.n, seed=12)
    base = cm.predict(A, check="ignore")
    scale = max(1.0, float(np.abs(base).max()))
    trace_a = override_trace(program, A.tokens(), {}, cm.layout)
    trace_b = override_trace(program, B.tokens(), {}, cm.layout)
    by_id = {c.id: c for c in gt.components}
    depends = []
    for v in gt.variables:
        if v.op is None:
            continue
        cf = override_trace(program, A.tokens(), {v.name: value_of(cm.layout, trace_b,
                                                                    v.name)}, cm.layout)
        if np.nanmax(np.abs(cf.output() - trace_a.output())) > 1e-6:
            depends.append(v)
    assert depends, "the output depends on some variable"
    checked = set()
    for v in depends:
        for w in v.writer:
            if w in checked or by_id[w].kind not in ("head", "mlp"):
                continue
            checked.add(w)
            out = _ablated(cm, by_id[w], A)
            changed = ~np.isfinite(out).all() or np.abs(out - base).max() > 1e-6 * scale
            assert changed, f"ablating {w}, a writer of {v.name}, changed nothing"
    for c in gt.components:
        if c.kind in ("head", "mlp") and not c.used:
            assert np.array_equal(_ablated(cm, c, A), base), c.id
