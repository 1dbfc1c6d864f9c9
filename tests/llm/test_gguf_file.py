"""`GGUFFile`: the metadata and tensors gguf's own reader finds, and one clear error for a broken file."""

from __future__ import annotations

import numpy as np
import pytest

from llm.locate import default_llm_path
from llm.model.gguf_file import GGUFFile
from llm.model.loader import open_source
from llm.model.presets import UnsupportedModelError


def test_reads_what_gguf_reads():
    from gguf import GGUFReader

    path = default_llm_path()
    ours, theirs = GGUFFile(path), GGUFReader(path)
    assert ours.fields == {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert (mine.qtype, mine.shape) == (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)))
        assert mine.data.dtype == t.data.dtype and np.array_equal(mine.data, t.data)


@pytest.mark.parametrize("keep", [0, 3, 100_000, -1000])
def test_a_truncated_or_foreign_file_is_not_readable(tmp_path, keep):
    data = default_llm_path().read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[:keep] if keep else b"PK\x03\x04 a zip, not a model")
    with pytest.raises(UnsupportedModelError, match="not a readable GGUF file"):
        open_source(broken)
