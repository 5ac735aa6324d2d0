"""Export and load (raspicl.export, raspicl.schema): a model directory that has been tampered
with, is malformed, or holds weights the gadgets cannot run in is refused with a LoadError
naming the file or the field, before anything is allocated; save replaces a directory
atomically and never writes through a symbolic link.

Everything here runs on gd_step with d = 2 (a 4-block, d_model 14 model), compiled once."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_bytes

import raspicl.export as export
from raspicl import random_prompts
from raspicl.compiled import CompiledModel
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.errors import LoadError, RaspiclError
from raspicl.export import LAYOUT, WEIGHTS, ExportError, layout_digest, load, save
from raspicl.model import ModelConfig, Transformer
from raspicl.registry import find_program
from raspicl.schema import TENSORS, expected_shapes, schema_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gd() -> CompiledModel:
    # unfused: the malformed-layout cases below name rows, blocks and slots of gd_step as written
    return compile_program(find_program("gd_step").build(d=2), CompilerConfig(fusion=False))


@pytest.fixture(scope="module")
def other() -> CompiledModel:
    """Another compile with the same architecture (a different learning rate)."""
    return compile_program(find_program("gd_step").build(d=2, lr=0.2),
                           CompilerConfig(fusion=False))


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(8, 2, 1, seed=3)


@pytest.fixture()
def saved(gd, tmp_path) -> Path:
    return save(gd, tmp_path / "m")


def _read(directory: Path) -> dict:
    return json.loads((directory / LAYOUT).read_text())


def _write(directory: Path, layout: dict, *, resign: bool = False) -> None:
    """Write `layout` as the directory's layout.json; with `resign`, with a digest recomputed
    over it and the weights file, so only the schema can refuse it."""
    if resign:
        weights = (directory / WEIGHTS).read_bytes()
        layout["weights"]["sha256"] = hashlib.sha256(weights).hexdigest()
        layout["integrity"]["digest"] = layout_digest(layout, weights)
    (directory / LAYOUT).write_text(json.dumps(layout, indent=1))


def _edit(directory: Path, change: Callable[[dict], object], *, resign: bool = False) -> None:
    layout = _read(directory)
    change(layout)
    _write(directory, layout, resign=resign)


def _no_leftovers(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert left == [], left


# ------------------------------------------------------------------ round trip


def test_round_trip(gd, saved, prompts):
    back = load(saved)
    assert np.array_equal(back.predict(prompts), gd.predict(prompts))
    for a, b in zip(back.residuals(prompts), gd.residuals(prompts), strict=True):
        assert np.array_equal(a, b)
    layout = back.layout
    assert {k: v for k, v in layout.items() if k not in ("weights", "integrity")} == \
        json.loads(json.dumps(gd.layout))
    assert layout["weights"]["dtype"] == "float64"
    assert layout["integrity"]["algorithm"] == "sha256"
    assert re.fullmatch(r"[0-9a-f]{64}", layout["integrity"]["digest"])


def test_saving_a_loaded_model_gives_the_same_bytes(saved, tmp_path):
    again = save(load(saved), tmp_path / "again")
    for name in (WEIGHTS, LAYOUT):
        assert (again / name).read_bytes() == (saved / name).read_bytes()


def test_float32_round_trip(tmp_path, prompts):
    from raspicl.compiler import CompilerConfig

    p = find_program("gd_step").build(d=2)
    cm32 = compile_program(p, CompilerConfig.for_dtype("float32")).to(torch.float32)
    back = load(save(cm32, tmp_path / "m32"))
    assert back.model.dtype == torch.float32
    assert back.layout["weights"]["dtype"] == "float32"
    assert np.array_equal(back.predict(prompts), cm32.predict(prompts))


def test_digest_by_hand(saved):
    """The recipe of docs/architecture.md §8, run as written, gives the stored digest."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    (recipe,) = [b for b in blocks if "def recompute_digest" in b]
    namespace: dict = {}
    exec(recipe, namespace)
    assert namespace["recompute_digest"](str(saved)) == _read(saved)["integrity"]["digest"]


def test_non_finite_numbers_and_new_keys_round_trip(gd, tmp_path, prompts):
    """A divisor never seen in calibration has abs_min = inf (JSON Infinity); keys the schema
    does not know (a newer compiler's) are kept and covered by the digest."""
    layout = copy.deepcopy(gd.layout)
    layout["domain"]["divisors"].append({"op": 2, "register": "pred0", "abs_min": math.inf,
                                         "version": 1, "tokens": [0, 1, 2]})
    layout["domain"]["tolerance"] = {"note": "a key from the future", "value": 2.0**80}
    layout["some_future_record"] = [[1, 2.5, None, "x", {"deep": [math.inf]}]]
    directory = save(CompiledModel(gd.model, layout), tmp_path / "m")
    assert "Infinity" in (directory / LAYOUT).read_text()
    back = load(directory)
    assert back.layout["domain"]["divisors"][-1]["abs_min"] == math.inf
    assert back.layout["some_future_record"] == layout["some_future_record"]
    back.predict(prompts)  # the guards read abs_min = inf without complaint
    _edit(directory, lambda L: L["some_future_record"][0].__setitem__(1, 2.25))
    with pytest.raises(LoadError, match="layout.json was modified"):
        load(directory)


def test_tensor_table_matches_the_model():
    cfg = ModelConfig(d_model=5, n_layers=3, n_heads=2, d_head=4, d_mlp=7, n_ctx=9, d_token=3,
                      d_out=2, ln_eps=(1.0, 1.0, 1.0))
    sizes = {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp",
                                          "n_ctx", "d_token", "d_out")}
    model = Transformer(cfg)
    assert expected_shapes(sizes) == {n: tuple(t.shape) for n, t in model.state_dict().items()}
    assert len(TENSORS) == 18


# ------------------------------------------------------------------ tampering


def _set_eps(L):
    L["architecture"]["layernorm"]["eps"][1] = 1e-12  # both places agree: only the digest
    L["blocks"][1]["mlp"]["ln_eps"] = 1e-12           # can tell


TAMPERING = {
    "eps": _set_eps,
    "block_order": lambda L: L["architecture"].__setitem__("block_order", [0, 1, 3, 2]),
    "output.positions": lambda L: L["output"].__setitem__("positions", [1]),
    "domain value": lambda L: L["domain"].__setitem__("x_abs_max",
                                                      L["domain"]["x_abs_max"] * 10),
    "register rows": lambda L: L["registers"]["pred"]["versions"][0].__setitem__("rows", [12]),
    "a new key": lambda L: L.__setitem__("note", "harmless?"),
    "an unknown key's value": lambda L: L["domain"].__setitem__("calibration", "edited"),
    "the program's name": lambda L: L["program"].__setitem__("name", "other"),
    "the digest itself": lambda L: L["integrity"].__setitem__("digest", "0" * 64),
}


@pytest.mark.parametrize("what", TAMPERING)
def test_tampered_layout_is_refused(saved, what, prompts):
    _edit(saved, TAMPERING[what])
    with pytest.raises(LoadError, match=r"layout\.json was modified after export"):
        load(saved)


def test_weights_from_another_compile_are_refused(saved, other, tmp_path):
    theirs = save(other, tmp_path / "other")
    (saved / WEIGHTS).write_bytes((theirs / WEIGHTS).read_bytes())
    with pytest.raises(LoadError, match=r"model\.safetensors does not match .*layout\.json.*"
                                        r"different compilations or model\.safetensors was "
                                        r"modified"):
        load(saved)
    # ... also when layout.json's weights.sha256 is edited to match: the digest covers it
    _edit(saved, lambda L: L["weights"].__setitem__(
        "sha256", hashlib.sha256((saved / WEIGHTS).read_bytes()).hexdigest()))
    with pytest.raises(LoadError, match="layout.json was modified"):
        load(saved)


def test_flipped_weight_byte_is_refused(saved):
    data = bytearray((saved / WEIGHTS).read_bytes())
    data[-3] ^= 0x40
    (saved / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(LoadError, match="does not match"):
        load(saved)


def test_reformatted_layout_still_loads(saved):
    """The digest is over the parsed content, not its formatting or key order."""
    layout = _read(saved)
    (saved / LAYOUT).write_text(json.dumps(dict(reversed(list(layout.items())))))
    load(saved)


# ------------------------------------------------------------------ malformed layouts


def _eps(i, v):
    return lambda L: L["architecture"]["layernorm"]["eps"].__setitem__(i, v)


def _arch(key, v):
    return lambda L: L["architecture"].__setitem__(key, v)


MALFORMED = [
    ("monitor missing", lambda L: L.pop("monitor"), r"monitor is missing"),
    ("monitor tolerance negative", lambda L: L["monitor"].__setitem__("tolerance", -1.0),
     r"monitor\.tolerance must be a positive finite number, got -1"),
    ("monitor unknown value", lambda L: L["monitor"]["instructions"][0].__setitem__(
        "dst", "nowhere"), r"monitor\.instructions\[0\]\.dst must name a value"),
    ("monitor term out of range", lambda L: L["monitor"]["instructions"][0]["linear"].append(
        [0, 1.0, 7, 0]), r"monitor\.instructions\[0\]\.linear\[\d+\] must address"),
    ("monitor value rows", lambda L: L["monitor"]["values"]["x"].__setitem__("rows", [10**6]),
     r"monitor\.values\.x\.rows\[0\] must be an integer in range\(d_model"),
    ("weights null", lambda L: L.__setitem__("weights", None),
     r"weights must be an object, got null"),
    ("d_model float", _arch("d_model", 14.0),
     r"architecture\.d_model must be a positive integer, got 14\.0"),
    ("d_model bool", _arch("d_model", True), r"architecture\.d_model .* got true"),
    ("n_heads string", _arch("n_heads", "2"), r"architecture\.n_heads .* got \"2\""),
    ("d_mlp 1e12 float", _arch("d_mlp", 1e12),
     r"architecture\.d_mlp must be a positive integer, got 1000000000000\.0"),
    ("d_head missing", lambda L: L["architecture"].pop("d_head"),
     r"architecture\.d_head is missing"),
    ("eps short", lambda L: L["architecture"]["layernorm"]["eps"].pop(),
     r"architecture\.layernorm\.eps must have n_layers = 4 entries, got 3"),
    ("eps negative", _eps(2, -1),
     r"architecture\.layernorm\.eps\[2\] must be a positive finite number, got -1$"),
    ("eps NaN", _eps(0, math.nan), r"eps\[0\] must be a positive finite number, got NaN"),
    ("eps inf", _eps(3, math.inf), r"eps\[3\] must be a positive finite number, got Infinity"),
    ("eps string", _eps(1, "1e-5"), r"eps\[1\] .* got \"1e-5\""),
    ("block_order out of range", _arch("block_order", [0, 1, 2, 4]),
     r"architecture\.block_order\[3\] must be an integer in range\(n_layers\) = 0\.\.3, "
     r"got 4"),
    ("block_order negative", _arch("block_order", [0, -1]), r"block_order\[1\]"),
    ("block_order empty", _arch("block_order", []), r"block_order must have at least 1"),
    ("block_order null", _arch("block_order", None), r"block_order must be a list"),
    ("architecture name", _arch("name", "gpt3"),
     r'architecture\.name must be one of "paper", "gpt2"'),
    ("output.positions", lambda L: L["output"].__setitem__("positions", [3]),
     r"output\.positions\[0\] must be an integer in range\(n_ctx\) = 0\.\.2, got 3"),
    ("output.rows", lambda L: L["output"].__setitem__("rows", [14]),
     r"output\.rows\[0\] must be an integer in range\(d_model\) = 0\.\.13, got 14"),
    ("output.rows length", lambda L: L["output"].__setitem__("rows", [11, 12]),
     r"output\.rows must have d_out = 1 entries, got 2"),
    ("output.register", lambda L: L["output"].__setitem__("register", "nope"),
     r"output\.register must name a register"),
    ("register rows", lambda L: L["registers"]["x"]["versions"][0].__setitem__("rows", [7, 99]),
     r"registers\.x\.versions\[0\]\.rows\[1\] must be an integer in range\(d_model\)"),
    ("register width", lambda L: L["registers"]["x"]["versions"][0].__setitem__("rows", [7]),
     r"registers\.x\.versions\[0\]\.rows must have 2 entries \(the product of shape \[2\]\)"),
    ("written_after", lambda L: L["registers"]["g"]["versions"][0].__setitem__(
        "written_after", 9), r"written_after must be an integer in range\(residuals\) = 0\.\.8"),
    ("registers null", lambda L: L.__setitem__("registers", None), r"registers must be an"),
    ("versions empty", lambda L: L["registers"]["y"].__setitem__("versions", []),
     r"registers\.y\.versions must have at least 1"),
    ("n_tokens", lambda L: L["prompt"].__setitem__("n_tokens", 5),
     r"prompt\.n_tokens must be an integer equal to n_ctx = 3, got 5"),
    ("d_token", lambda L: L["prompt"].__setitem__("d_token", 4),
     r"prompt\.d_token must be an integer equal to d_token = 3, got 4"),
    ("n_examples", lambda L: L["prompt"].__setitem__("n_examples", 2),
     r"prompt\.n_tokens must be 2 n_examples \+ 1 = 5, got 3"),
    ("d", lambda L: L["prompt"].__setitem__("d", 3), r"prompt\.d_token must be d \+ 1 = 4"),
    ("roles short", lambda L: L["prompt"].__setitem__("roles", ["x", "y"]),
     r"prompt\.roles must have n_tokens = 3 entries, got 2"),
    ("roles name", lambda L: L["prompt"]["roles"].__setitem__(2, "z"),
     r"prompt\.roles\[2\] must be one of \"x\", \"y\", \"query\", got \"z\""),
    ("token_components", lambda L: L["prompt"]["token_components"].__setitem__("x", [1, 3]),
     r"prompt\.token_components\.x\[1\] must be an integer in range\(d_token\)"),
    ("x_abs_max negative", lambda L: L["domain"].__setitem__("x_abs_max", -1.0),
     r"domain\.x_abs_max must be a non-negative finite number, got -1\.0"),
    ("y_abs_max inf", lambda L: L["domain"].__setitem__("y_abs_max", math.inf),
     r"domain\.y_abs_max .* got Infinity"),
    ("divisor abs_min", lambda L: L["domain"]["divisors"].append(
        {"op": 2, "register": "pred0", "abs_min": -1}), r"domain\.divisors\[0\]\.abs_min"),
    ("divisor register", lambda L: L["domain"]["divisors"].append(
        {"op": 2, "register": "nope", "abs_min": 1.0}),
     r"domain\.divisors\[0\]\.register must name a register"),
    ("divisor tokens", lambda L: L["domain"]["divisors"].append(
        {"op": 2, "register": "pred0", "abs_min": 1.0, "tokens": [3]}),
     r"domain\.divisors\[0\]\.tokens\[0\] must be an integer in range\(n_ctx\)"),
    ("fixed_rows", lambda L: L["fixed_rows"].__setitem__("one", 99),
     r"fixed_rows\.one must be an integer in range\(d_model\)"),
    ("row_names", lambda L: L["row_names"].pop(), r"row_names must have d_model = 14"),
    ("compiler list", lambda L: L.__setitem__("compiler", []),
     r"compiler must be an object, got a list of 0"),
    ("attention_margin", lambda L: L["compiler"].__setitem__("attention_margin", "100"),
     r"compiler\.attention_margin must be a positive finite number"),
    ("head index", lambda L: L["blocks"][0]["heads"][0].__setitem__("head", 2),
     r"blocks\[0\]\.heads\[0\]\.head must be an integer in range\(n_heads\) = 0\.\.1"),
    ("head write name", lambda L: L["blocks"][0]["heads"][0]["writes"][0].__setitem__(
        "from", "nope"), r"blocks\[0\]\.heads\[0\]\.writes\[0\]\.from must be row_names\[7\]"),
    ("block ln_eps", lambda L: L["blocks"][2]["mlp"].__setitem__("ln_eps", 1.0),
     r"blocks\[2\]\.mlp\.ln_eps must equal architecture\.layernorm\.eps\[2\]"),
    ("blocks short", lambda L: L["blocks"].pop(), r"blocks must have n_layers = 4"),
    ("op block", lambda L: L["ops"][0].__setitem__("block", 7),
     r"ops\[0\]\.block must be an integer in range\(n_layers\)"),
    ("slot name", lambda L: L["registers"]["y"]["versions"][0].__setitem__(
        "cleared", "block one attn"), r"registers\.y\.versions\[0\]\.cleared must be null or"),
    ("constants", lambda L: L["constants"].__setitem__("w0", [0.5, "a"]),
     r"constants\.w0\[1\] must be a finite number"),
    ("weights file", lambda L: L["weights"].__setitem__("file", "../../etc/passwd"),
     r'weights\.file must be "model\.safetensors"'),
    ("weights dtype", lambda L: L["weights"].__setitem__("dtype", "float16"),
     r"weights\.dtype must be one of \"float64\", \"float32\", got \"float16\""),
    ("integrity missing", lambda L: L.pop("integrity"),
     r"integrity is missing: the layout carries no digest"),
    ("integrity null", lambda L: L.__setitem__("integrity", None), r"integrity must be an"),
    ("digest not hex", lambda L: L["integrity"].__setitem__("digest", "xyz"),
     r"integrity\.digest must be a string of 64 lowercase hex digits"),
    ("format_version bool", lambda L: L.__setitem__("format_version", True),
     r"format_version is true; this raspicl reads format"),
    ("format_version old", lambda L: L.__setitem__("format_version", 0),
     r"format_version is 0; this raspicl reads format"),
    ("format_version 2", lambda L: L.__setitem__("format_version", 2),
     r"format_version is 2; this raspicl reads format 3 only .*: compile the model again"),
    ("slot record stage", lambda L: L["registers"]["g"]["versions"][0]["written_slot"].update(
        stage={"attn": "mlp", "mlp": "attn"}[L["registers"]["g"]["versions"][0]["written_slot"]
                                             ["stage"]]),
     r'registers\.g\.versions\[0\]\.written_slot\.stage must be "(attn|mlp)" for slot \d+'),
    ("slot record past the end", lambda L: L["registers"]["g"]["versions"][0].__setitem__(
        "cleared_slot", {"slot": 40, "run": None, "stage": "attn", "block": None}),
     r"registers\.g\.versions\[0\]\.cleared_slot\.slot must be below 2 runs = \d+, got 40"),
    ("typed label missing", lambda L: L["registers"]["g"]["versions"][0].pop("label"),
     r"registers\.g\.versions\[0\]\.label is missing"),
    ("action kind", lambda L: L["blocks"][0]["heads"][0]["actions"].append(
        {"kind": "paint", "run": 0, "value": "x", "rows": [0]}),
     r"blocks\[0\]\.heads\[0\]\.actions\[\d+\]\.kind must be one of \"move\""),
    ("action value", lambda L: L["blocks"][0]["heads"][0]["actions"].append(
        {"kind": "clear", "run": 0, "value": "nope", "rows": [0]}),
     r"blocks\[0\]\.heads\[0\]\.actions\[\d+\]\.value must name a value the layout "
     r"places, got \"nope\""),
    ("action run", lambda L: L["blocks"][0]["heads"][0]["actions"].append(
        {"kind": "clear", "run": 1, "value": "x", "rows": [0]}),
     r"blocks\[0\]\.heads\[0\]\.actions\[\d+\]\.run must be a run of block 0 \(\[0\]\)"),
    ("temporaries missing", lambda L: L.pop("temporaries"), r"temporaries is missing"),
    ("mlp divisor missing", lambda L: L["blocks"][0]["mlp"].pop("divisor"),
     r"blocks\[0\]\.mlp\.divisor is missing"),
]


@pytest.mark.parametrize("resign", [False, True], ids=["as edited", "digest recomputed"])
@pytest.mark.parametrize("case", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_layout_names_the_field(saved, case, resign, monkeypatch):
    """Refused by the schema, whether or not the digest was recomputed to match, and before
    the model is built."""
    name, change, message = case
    layout = _read(saved)
    change(layout)
    if resign and (name == "digest not hex" or not isinstance(layout.get("weights"), dict)
                   or not isinstance(layout.get("integrity"), dict)):
        pytest.skip("there is no digest to recompute")
    _write(saved, layout, resign=resign)
    monkeypatch.setattr(export, "Transformer", _no_allocation)
    with pytest.raises(LoadError, match=message) as info:
        load(saved)
    assert str(info.value).startswith(f"{saved / LAYOUT}: ")  # the field, in this directory


def _no_allocation(*args, **kwargs):
    raise AssertionError("the loader built the model before refusing the layout")


def test_huge_d_mlp_is_refused_before_allocation(saved, monkeypatch):
    """d_mlp = 10^12, an integer: the model would need 112 TB. It is checked against the
    tensor shapes in the weights file's header, before anything is allocated."""
    monkeypatch.setattr(export, "Transformer", _no_allocation)
    _edit(saved, _arch("d_mlp", 10**12), resign=True)
    with pytest.raises(LoadError, match=r"architecture\.d_mlp is 1000000000000 but "
                                        r"model\.safetensors's tensor blocks\.0\.mlp\.W_in has "
                                        r"shape \[14, 16\], whose axis 1 is d_mlp"):
        load(saved)


def test_huge_n_layers_is_refused_before_allocation(saved, monkeypatch):
    monkeypatch.setattr(export, "Transformer", _no_allocation)
    _edit(saved, _arch("n_layers", 10**12), resign=True)
    with pytest.raises(LoadError, match=r"architecture\.n_layers is 1000000000000 but "
                                        r"model\.safetensors holds blocks 0\.\.3"):
        load(saved)


def test_a_header_claiming_huge_tensors_is_refused(saved, monkeypatch):
    """A weights file whose header declares a 10^12-unit MLP over a few bytes of data, with a
    layout to match: refused from the header's own offsets."""
    monkeypatch.setattr(export, "Transformer", _no_allocation)
    data = (saved / WEIGHTS).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["blocks.0.mlp.W_in"]["shape"] = [14, 10**12]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (saved / WEIGHTS).write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    with pytest.raises(LoadError, match=r"tensor blocks\.0\.mlp\.W_in: shape \[14, "
                                        r"1000000000000\] of F64 needs 112000000000000 bytes"):
        load(saved)


@pytest.mark.parametrize("text,message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ("[1, 2, 3]", "the top level must be an object, got an array"),
    ('"layout"', "the top level must be an object, got a string"),
    ("null", "the top level must be an object, got a scalar"),
    ("{", "is not valid JSON"),
    ('{"a": 1, "a": 2}', "is not valid JSON: duplicate key 'a'"),
    ('{"format_version": 1' + "0" * 5000 + "}", "is not valid JSON"),
    ("{}", "format_version is null"),
], ids=["deep", "array", "string", "null", "truncated", "duplicate", "huge int", "empty"])
def test_unparsable_layout(saved, text, message):
    (saved / LAYOUT).write_text(text)
    with pytest.raises(LoadError, match=re.escape(message)):
        load(saved)


def test_deep_nesting_inside_a_valid_layout(saved):
    """Nesting that json.loads accepts but that is too deep to serialise for the digest."""
    layout = _read(saved)
    text = json.dumps(layout)[:-1] + ', "deep": ' + "[" * 980 + "]" * 980 + "}"
    (saved / LAYOUT).write_text(text)
    with pytest.raises(LoadError):
        load(saved)


def test_not_utf8(saved):
    (saved / LAYOUT).write_bytes(b'{"a": "\xff"}')
    with pytest.raises(LoadError, match="not UTF-8"):
        load(saved)


def test_missing_files(saved, tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load(tmp_path / "nowhere")
    (saved / WEIGHTS).unlink()
    with pytest.raises(LoadError, match=r"model\.safetensors does not exist"):
        load(saved)


def _drop_monitor(layout: dict) -> None:
    del layout["monitor"]


def _drop_d_model(layout: dict) -> None:
    del layout["architecture"]["d_model"]


@pytest.mark.parametrize("breakage", [
    "no layout", "no weights", "layout not JSON", "field missing", "field missing, resigned",
    "architecture incomplete", "weights truncated", "weights of another model",
])
def test_every_load_error_names_the_model_directory(gd, other, tmp_path, breakage):
    """What raspicl.export.load (the library, not only the CLI) says of a broken model names
    the directory it was asked to load, so that a user loading several knows which one."""
    directory = save(gd, tmp_path / "model-under-test")
    if breakage == "no layout":
        (directory / LAYOUT).unlink()
    elif breakage == "no weights":
        (directory / WEIGHTS).unlink()
    elif breakage == "layout not JSON":
        (directory / LAYOUT).write_text("{not json")
    elif breakage == "field missing":
        _edit(directory, _drop_monitor)
    elif breakage == "field missing, resigned":
        _edit(directory, _drop_monitor, resign=True)
    elif breakage == "architecture incomplete":
        _edit(directory, _drop_d_model, resign=True)
    elif breakage == "weights truncated":
        (directory / WEIGHTS).write_bytes((directory / WEIGHTS).read_bytes()[:100])
    else:
        elsewhere = save(other, tmp_path / "elsewhere")
        (directory / WEIGHTS).write_bytes((elsewhere / WEIGHTS).read_bytes())
    with pytest.raises(LoadError) as info:
        load(directory)
    message = str(info.value)
    assert str(directory) in message, message
    assert "elsewhere" not in message
    # a field of the layout is named as DIRECTORY/layout.json: FIELD, not bare layout.json
    if breakage.startswith(("field missing", "architecture incomplete")):
        assert message.startswith(f"{directory / LAYOUT}: "), message


@pytest.mark.parametrize("data,message", [
    (b"", "shorter than the 8-byte header length"),
    ((10**9).to_bytes(8, "little") + b"{}", "exceeds the file"),
    ((4).to_bytes(8, "little") + b"[1] ", "header is not a JSON object"),
    ((8).to_bytes(8, "little") + b"{nope}  ", "header is not JSON"),
], ids=["empty", "header length", "array header", "bad header"])
def test_malformed_weights_file(saved, data, message):
    (saved / WEIGHTS).write_bytes(data)
    with pytest.raises(LoadError, match=re.escape(message)):
        load(saved)


def test_weights_offsets_outside_the_file(saved):
    data = (saved / WEIGHTS).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["unembed.b_U"]["data_offsets"] = [0, 10**9]
    text = json.dumps(header).encode()
    (saved / WEIGHTS).write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])
    with pytest.raises(LoadError, match=r"data_offsets \[0, 1000000000\] do not lie within"):
        load(saved)


def test_extra_tensor_is_refused(saved):
    tensors = export.load_bytes((saved / WEIGHTS).read_bytes())
    tensors["blocks.0.attn.extra"] = torch.zeros(2, dtype=torch.float64)
    (saved / WEIGHTS).write_bytes(save_bytes(tensors))
    _edit(saved, lambda L: None, resign=True)
    with pytest.raises(LoadError, match=r"tensors the paper architecture does not have: "
                                        r"blocks\.0\.attn\.extra"):
        load(saved)


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_refused(saved, dtype, monkeypatch):
    tensors = export.load_bytes((saved / WEIGHTS).read_bytes())
    (saved / WEIGHTS).write_bytes(save_bytes({k: v.to(dtype) for k, v in tensors.items()}))
    _edit(saved, lambda L: None, resign=True)
    monkeypatch.setattr(export, "Transformer", _no_allocation)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(LoadError, match=rf"its tensors are {name}: a compiled model runs in "
                                        rf"float64 or float32"):
        load(saved)


def test_mixed_dtypes_are_refused(saved):
    tensors = export.load_bytes((saved / WEIGHTS).read_bytes())
    tensors["unembed.b_U"] = tensors["unembed.b_U"].float()
    (saved / WEIGHTS).write_bytes(save_bytes(tensors))
    _edit(saved, lambda L: None, resign=True)
    with pytest.raises(LoadError, match=r"mixed dtypes \(float32, float64\)"):
        load(saved)


def test_layout_dtype_must_match_the_file(gd, tmp_path):
    directory = save(gd.to(torch.float32), tmp_path / "m")
    _edit(directory, lambda L: L["weights"].__setitem__("dtype", "float64"), resign=True)
    with pytest.raises(LoadError, match="weights.dtype is float64 but the tensors of"):
        load(directory)


def test_precision_is_saved_and_loaded(gd, tmp_path):
    """A float32 model widened to float64 holds float32 values: the export records it
    (weights.precision) and the loaded model charges float32 (CompiledModel.precision)."""
    widened = gd.to(torch.float32).to(torch.float64)
    directory = save(widened, tmp_path / "m")
    weights = _read(directory)["weights"]
    assert (weights["dtype"], weights["precision"]) == ("float64", "float32")
    assert load(directory).precision == "float32"
    assert _read(save(gd, tmp_path / "g"))["weights"]["precision"] == "float64"
    assert load(tmp_path / "g").precision == "float64"


def test_unrecorded_precision_is_read_off_the_weights(gd, tmp_path):
    """A layout without weights.precision (written before it was recorded): float64 tensors
    that hold float32 values only are charged float32; gd's own weights are not."""
    directory = save(gd.to(torch.float32).to(torch.float64), tmp_path / "m")
    _edit(directory, lambda L: L["weights"].pop("precision"), resign=True)
    assert load(directory).precision == "float32"
    plain = save(gd, tmp_path / "g")
    _edit(plain, lambda L: L["weights"].pop("precision"), resign=True)
    assert load(plain).precision == "float64"


def test_precision_finer_than_the_file_is_refused(gd, tmp_path):
    directory = save(gd.to(torch.float32), tmp_path / "m")
    _edit(directory, lambda L: L["weights"].__setitem__("precision", "float64"), resign=True)
    with pytest.raises(LoadError, match="weights.precision is float64, finer than the float32"):
        load(directory)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_save_refuses_half_precision(gd, tmp_path, dtype):
    with pytest.raises(ExportError, match=r"runs in float64 or float32, not "
                                          + str(dtype).removeprefix("torch.")):
        # CompiledModel.to refuses half precision itself: build one past it
        save(CompiledModel(copy.deepcopy(gd.model).to(dtype), gd.layout), tmp_path / "m")
    assert not (tmp_path / "m").exists()
    _no_leftovers(tmp_path)


def test_save_refuses_mixed_dtypes(gd, tmp_path):
    cm = gd.to(torch.float64)
    cm.model.unembed.b_U.data = cm.model.unembed.b_U.data.float()
    with pytest.raises(ExportError, match="mixed dtypes"):
        save(cm, tmp_path / "m")


def test_save_refuses_a_layout_load_would_refuse(gd, tmp_path):
    layout = copy.deepcopy(gd.layout)
    layout["output"]["positions"] = [7]
    with pytest.raises(ExportError, match=r"could not load back: layout\.json: "
                                          r"output\.positions\[0\]"):
        save(CompiledModel(gd.model, layout), tmp_path / "m")
    assert not (tmp_path / "m").exists()
    _no_leftovers(tmp_path)


# ------------------------------------------------------------------ save semantics


def test_save_replaces_a_previous_model(gd, other, tmp_path, prompts):
    directory = save(gd, tmp_path / "m")
    save(other, directory)
    assert np.array_equal(load(directory).predict(prompts), other.predict(prompts))
    _no_leftovers(tmp_path)


def test_save_replaces_without_renameat2(gd, other, tmp_path, prompts, monkeypatch):
    """The fallback where no atomic exchange exists: old aside, new in, old removed."""
    monkeypatch.setattr(export, "_exchange", lambda a, b: False)
    directory = save(gd, tmp_path / "m")
    save(other, directory)
    assert np.array_equal(load(directory).predict(prompts), other.predict(prompts))
    _no_leftovers(tmp_path)


def test_save_into_an_existing_empty_directory(gd, tmp_path, prompts):
    (tmp_path / "m").mkdir()
    load(save(gd, tmp_path / "m")).predict(prompts)
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("fail_on", [WEIGHTS, LAYOUT])
def test_failed_write_keeps_the_old_model(gd, other, tmp_path, prompts, monkeypatch, fail_on):
    directory = save(gd, tmp_path / "m")
    before = {n: (directory / n).read_bytes() for n in (WEIGHTS, LAYOUT)}
    real = export._write_file

    def failing(path, data):
        if path.name == fail_on:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(export, "_write_file", failing)
    with pytest.raises(ExportError, match="No space left on device"):
        save(other, directory)
    assert {n: (directory / n).read_bytes() for n in (WEIGHTS, LAYOUT)} == before
    assert np.array_equal(load(directory).predict(prompts), gd.predict(prompts))
    _no_leftovers(tmp_path)


def test_interrupted_write_leaves_no_temporary(gd, other, tmp_path, monkeypatch):
    """A KeyboardInterrupt (not an OSError) during the write: the temporary directory goes,
    the old model stays, and the interrupt propagates."""
    directory = save(gd, tmp_path / "m")

    def interrupted(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(other, directory)
    load(directory)
    _no_leftovers(tmp_path)


def test_failed_rename_in_puts_the_old_model_back(gd, other, tmp_path, prompts, monkeypatch):
    directory = save(gd, tmp_path / "m")
    monkeypatch.setattr(export, "_exchange", lambda a, b: False)
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new directory into place
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(ExportError, match="Input/output error"):
        save(other, directory)
    monkeypatch.setattr(export.os, "rename", real)
    assert np.array_equal(load(directory).predict(prompts), gd.predict(prompts))
    _no_leftovers(tmp_path)


def test_new_directory_and_parents_are_created(gd, tmp_path):
    load(save(gd, tmp_path / "a" / "b" / "m"))
    _no_leftovers(tmp_path / "a" / "b")


def test_save_refuses_a_symlinked_directory(gd, tmp_path):
    real = save(gd, tmp_path / "real")
    before = (real / LAYOUT).read_bytes()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ExportError, match="is a symbolic link"):
        save(gd, tmp_path / "link")
    assert (real / LAYOUT).read_bytes() == before
    assert (tmp_path / "link").is_symlink()
    load(tmp_path / "link")  # reading through a link is fine


@pytest.mark.parametrize("name", [LAYOUT, WEIGHTS])
def test_save_refuses_symlinked_files(gd, saved, tmp_path, name):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (saved / name).unlink()
    (saved / name).symlink_to(target)
    with pytest.raises(ExportError, match=rf"{re.escape(name)} is a symbolic link"):
        save(gd, saved)
    assert target.read_bytes() == b"precious"


def test_save_refuses_a_dangling_symlink(gd, tmp_path):
    (tmp_path / "m").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="is a symbolic link"):
        save(gd, tmp_path / "m")
    assert not (tmp_path / "nowhere").exists()


def test_save_refuses_something_that_is_not_a_directory(gd, tmp_path):
    with pytest.raises(ExportError, match=r"/dev/null: it exists and is not a directory"):
        save(gd, "/dev/null")
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ExportError, match="it exists and is not a directory"):
        save(gd, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me"
    with pytest.raises(ExportError):  # a parent that is a file
        save(gd, tmp_path / "file" / "m")
    assert issubclass(ExportError, RaspiclError)


def test_save_refuses_a_directory_with_other_files(gd, saved):
    (saved / "README").write_text("mine")
    with pytest.raises(ExportError, match=r"holds other files \(README\)"):
        save(gd, saved)
    assert (saved / "README").read_text() == "mine"
    load(saved)


def test_save_refuses_the_current_directory(gd, tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path / "m")
    with pytest.raises(ExportError, match="current directory"):
        save(gd, ".")
    with pytest.raises(ExportError, match="current directory"):
        save(gd, tmp_path)


def test_save_refuses_a_directory_named_like_a_model_file(gd, tmp_path):
    (tmp_path / "m" / LAYOUT).mkdir(parents=True)
    with pytest.raises(ExportError, match="exists and is not a file"):
        save(gd, tmp_path / "m")


# ------------------------------------------------------------------ docs


def test_docs_list_every_schema_field():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [path for path, _ in schema_table()
               if f"`{path.removesuffix(' (optional)')}`" not in page]
    assert missing == []
