"""raspicl.tensorfile: every loader's safetensors read fails with a LoadError that names the
file, never with a bare OSError or a library error, and reads back exactly what was written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from raspicl.errors import LoadError
from raspicl.icl.trained import ICLTransformer, ModelConfig
from raspicl.interop.gpt2form import from_trained
from raspicl.interop.hf import IO, WEIGHTS, export_hf, load_readout, read_hf
from raspicl.tensorfile import read_tensors, require


def test_round_trip_with_metadata(tmp_path):
    t = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "b": torch.ones(2)}
    save_file(t, str(tmp_path / "f.safetensors"), metadata={"step": "7"})
    back, meta = read_tensors(tmp_path / "f.safetensors")
    assert meta == {"step": "7"}
    assert set(back) == {"a", "b"} and all(torch.equal(back[k], t[k]) for k in t)


def test_missing_and_garbage_files_name_the_file(tmp_path):
    with pytest.raises(LoadError, match=r"nope\.safetensors: no such file \(a checkpoint\)"):
        read_tensors(tmp_path / "nope.safetensors", "a checkpoint")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01 not a header")
    with pytest.raises(LoadError, match=r"bad\.safetensors: not a readable safetensors file"):
        read_tensors(bad)


def test_require_names_what_is_missing(tmp_path):
    with pytest.raises(LoadError, match=r"missing tensor\(s\) \['c'\]"):
        require(tmp_path / "f", {"a": 1, "b": 2}, ("a", "c"))


@pytest.fixture()
def hf_export(tmp_path):
    torch.manual_seed(0)
    m = ICLTransformer(ModelConfig(d=2, n_positions=3, layers=1, d_model=8, heads=2)).double()
    return export_hf(from_trained(m.eval()), tmp_path / "m")


@pytest.mark.parametrize("name", [WEIGHTS, IO])
def test_read_hf_with_a_file_gone_is_a_load_error(hf_export, name):
    (hf_export / name).unlink()
    with pytest.raises(LoadError, match="no such file"):
        read_hf(hf_export)
    if name == IO:
        with pytest.raises(LoadError, match="no such file"):
            load_readout(hf_export)


def test_read_hf_with_a_tensor_gone_names_it(hf_export):
    io, _ = read_tensors(hf_export / IO)
    del io["unembed.b_U"]
    save_file(io, str(hf_export / IO))
    with pytest.raises(LoadError, match="unembed.b_U"):
        read_hf(hf_export)
