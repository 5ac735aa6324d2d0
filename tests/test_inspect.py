"""raspicl.inspect on gd_step and sherman_morrison (d = 2), saved and loaded back.

The text is checked against the Program object, an independent record of what the model
should contain: every register name, every op's source line, the head that reads x one token
back into x_prev, and the block that divides (by the div op's own divisor register).
"""

from __future__ import annotations

import copy
import re

import pytest

from raspicl import inspect as rinspect
from raspicl.compiled import CompiledModel
from raspicl.compiler import compile_program
from raspicl.export import load, save
from raspicl.layout_records import fused_values
from raspicl.registry import find_program

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


_CACHE: dict[str, tuple] = {}


def _compile(name: str, tmp_path_factory) -> tuple:
    """(Program, freshly compiled model, the same model saved and loaded back), once a name."""
    if name not in _CACHE:
        program = find_program(name).build(d=2)
        cm = compile_program(program)
        directory = tmp_path_factory.mktemp(name)
        save(cm, directory)
        _CACHE[name] = (program, cm, load(directory))
    return _CACHE[name]


@pytest.fixture(params=["gd_step", "sherman_morrison"])
def compiled(request, tmp_path_factory):
    return _compile(request.param, tmp_path_factory)


def _blocks(text: str) -> dict[int, str]:
    """The block report's sections: block index -> its text."""
    parts = re.split(r"^Block (\d+)$", text.split("\nResidual stream of ")[0], flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def test_text_is_the_same_for_a_loaded_model(compiled):
    _, cm, loaded = compiled
    assert rinspect.inspect_text(loaded) == rinspect.inspect_text(cm)
    assert rinspect.inspect_text(loaded) == (rinspect.block_report(loaded) + "\n\n"
                                            + rinspect.layout_table(loaded) + "\n")


def test_summary_line(compiled):
    program, _, loaded = compiled
    first = rinspect.block_report(loaded).splitlines()[0]
    a = loaded.layout["architecture"]
    assert first.startswith(program.name)
    for part in (f"{a['n_layers']} blocks", f"{a['n_heads']} heads", f"d_head {a['d_head']}",
                 f"d_model {a['d_model']}", f"d_mlp {a['d_mlp']}",
                 f"{loaded.model.n_params():,} parameters"):
        assert part in first


def test_text_names_every_register_and_source_line(compiled):
    program, _, loaded = compiled
    text = rinspect.inspect_text(loaded)
    for name in program.registers:
        assert re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text), name
    blocks = _blocks(text)
    for op in program.ops:
        source = str(op.source)
        assert re.fullmatch(rf"programs/{program.name}\.py:\d+", source)
        # the op's line is named in the section of a block, on the line tracing that op
        hits = [b for b, sec in blocks.items()
                if re.search(rf"op {op.index} {op.kind} -> .*\[{re.escape(source)}\]", sec)]
        assert len(hits) == 1, (op.index, source)


def test_layout_table_lists_fixed_rows_and_versions(compiled):
    _, _, loaded = compiled
    table = rinspect.layout_table(loaded)
    for name, row in loaded.layout["fixed_rows"].items():
        assert re.search(rf"^\s+{row}\s+{name}\s+\S", table, flags=re.M), name
    for reg in loaded.layout["registers"].values():
        for v in reg["versions"]:
            assert v["written"] in table
    assert "live to end" in table


def test_head_reading_x_one_back_for_x_prev(compiled):
    program, _, loaded = compiled
    mov = next(op for op in program.ops if op.dst.name == "x_prev")
    assert mov.reads[0].register.name == "x" and mov.reads[0].at.describe() == "offset 1 back"
    sections = _blocks(rinspect.block_report(loaded))
    found = []
    for b, sec in sections.items():
        for head in re.split(r"^  (?=head \d+:)", sec, flags=re.M)[1:]:
            # x_prev's own rows, or (fused, compiler/fusion.py) the temporary of its reader
            if re.search(r"^    (x_prev(@1)?|tmp:x_prev@\w+) <- x \(offset 1 back\)$", head,
                         flags=re.M):
                assert head.startswith(tuple(f"head {h}: attends to offset 1 back"
                                             for h in range(10)))
                assert str(mov.source) in head
                found.append(b)
    assert len(found) == 1


def test_division_block_and_register(compiled):
    program, _, loaded = compiled
    sections = _blocks(rinspect.block_report(loaded))
    divs = [op for op in program.ops if op.kind == "div"]
    dividing = {b for b, sec in sections.items() if "MLP: divide by |" in sec}
    if not divs:
        assert not dividing
        assert all("MLP: neutral" in sec for sec in sections.values())
        return
    (div,) = divs
    divisor = div.divisor.register.name
    assert divisor == "denom"
    (b,) = dividing
    sec = sections[b]
    assert re.search(rf"MLP: divide by \|{divisor}(@\d+)?\|; LayerNorm eps", sec)
    assert str(div.source) in sec  # the div op is traced to this block
    # the block's attention writes the anchors from the divisor (fused: from what it reads)
    fused = {f.label: f for f in fused_values(loaded.layout)}
    sources = [divisor] if divisor not in fused else \
        [r.register.name for r in program.ops[fused[divisor].op].reads]
    assert any(re.search(rf"anchor_pos <- \S+·{s}(@\d+)? \(here\)", sec) for s in sources)


def test_no_weight_mismatch_warnings(compiled):
    _, _, loaded = compiled
    assert "WARNING" not in rinspect.block_report(loaded)


def test_plot_blocks_writes_one_png_per_block_and_embed(tmp_path, tmp_path_factory):
    # plotting is the slow part, so one program: sherman_morrison has two heads in a block,
    # the division anchors and a dividing MLP
    _, _, loaded = _compile("sherman_morrison", tmp_path_factory)
    paths = rinspect.plot_blocks(loaded, tmp_path / "plots")
    n = loaded.layout["architecture"]["n_layers"]
    expected = [f"block{b:02d}.png" for b in range(n)] + ["embed.png"]
    assert [p.name for p in paths] == expected
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(expected)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC, p
        assert len(data) > 10_000, p


def test_weights_that_disagree_with_the_layout_are_flagged(compiled):
    _, cm, _ = compiled
    tampered = cm.to()  # a deep copy
    tampered.model.blocks[0].attn.W_O.data[0] *= 2.0
    report = rinspect.block_report(tampered)
    assert re.search(r"^Block 0$(?:(?!^Block 1$).)*WARNING: W_V·W_O differs", report,
                     flags=re.M | re.S)


def test_looped_model_is_described_run_by_run():
    # sgd compiled with shared loop blocks: one stored block runs several times, and each run
    # reads and writes other versions of the same registers
    program = find_program("sgd").build(d=1, n=3)
    cm = compile_program(program, loops="share")
    order = cm.layout["architecture"]["block_order"]
    assert len(order) > len(set(order))  # the model is looped
    report = rinspect.block_report(cm)
    assert "WARNING" not in report
    assert re.search(r"^Block \d+ \(runs \d+(, \d+)+: ", report, flags=re.M)
    for op in program.ops:  # every op of every iteration is traced, with its run
        assert re.search(rf"op {op.index} {op.kind} -> .*\[{re.escape(str(op.source))}\]",
                         report), op.index
    for o in cm.layout["ops"]:  # each looped op sits under its own run
        if order.count(o["block"]) > 1:
            assert re.search(rf"run {o['run']}: op {o['index']} ", report), o["index"]


def _scramble_prose(layout: dict) -> dict:
    """A copy of the layout whose prose glosses (sublayer names, temporaries' names, row names,
    the heads' writes by name, their purposes) are replaced by junk; the typed records stay."""
    L = copy.deepcopy(layout)
    junk = "#GLOSS#"
    for reg in L["registers"].values():
        for v in reg["versions"]:
            for key in ("written", "cleared", "overwritten"):
                if key in v:
                    v[key] = junk
    for t in L["temporaries"]:
        t["name"] = t["written"] = t["cleared"] = junk
    L["row_names"] = [junk] * len(L["row_names"])
    for blk in L["blocks"]:
        for head in blk["heads"]:
            head["purpose"] = [junk]
            head["reads"] = [junk] * len(head["reads"])
            for w in head["writes"]:
                w["from"] = w["to"] = junk
    return L


@pytest.mark.parametrize("loops", ["unroll", "share"])
def test_report_reads_records_not_prose(loops):
    """inspect works from the typed records alone: with every prose gloss it does not print
    replaced by junk, the report is the same (apart from the heads' purpose lines, which
    print that prose)."""
    cm = compile_program(find_program("sgd").build(d=1, n=2), loops=loops)
    scrambled = CompiledModel(cm.model, _scramble_prose(cm.layout))

    def text(m) -> list[str]:
        return [line for line in rinspect.inspect_text(m).splitlines()
                if not line.lstrip().startswith("purpose: ")]

    got = text(scrambled)
    assert "#GLOSS#" not in "\n".join(got)
    assert got == text(cm)
