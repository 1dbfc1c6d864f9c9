"""Backend selection: environment variable, overrides, fallbacks, and signatures equal to the reference's."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator

import pytest
import torch

from kernels import dispatch, reference
from tests.kernels.kernel_cases import DEVICE, ON_GPU, cu_seqlens, needs_triton

FUNCTIONS = [
    "varlen_attention",
    "paged_decode_attention",
    "write_kv",
    "linear_w4a16",
    "linear_w8a16",
    "rms_norm",
]


@pytest.fixture
def fresh_dispatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reload dispatch under a patched environment, and reload it clean afterwards."""
    yield
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    importlib.reload(dispatch)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_signatures_match_reference(name: str) -> None:
    assert inspect.signature(getattr(dispatch, name)) == inspect.signature(getattr(reference, name))


@pytest.mark.parametrize(
    ("value", "expected"), [("reference", "reference"), (" Triton ", "triton"), ("", "auto")]
)
def test_env_var_sets_initial_backend(
    value: str, expected: str, monkeypatch: pytest.MonkeyPatch, fresh_dispatch: None
) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, value)
    importlib.reload(dispatch)
    assert dispatch.get_backend() == expected


def test_bad_env_var_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, fresh_dispatch: None) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="unknown kernels backend 'cuda'"):
        importlib.reload(dispatch)


def test_use_backend_restores_after_error() -> None:
    before = dispatch.get_backend()
    with pytest.raises(RuntimeError), dispatch.use_backend("reference"):
        assert dispatch.get_backend() == "reference"
        raise RuntimeError
    assert dispatch.get_backend() == before
    with pytest.raises(ValueError):
        dispatch.set_backend("fast")


@pytest.mark.skipif(ON_GPU, reason="checks the CPU fallback")
def test_auto_on_cpu_uses_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = reference.rms_norm

    def spy(*args: object) -> object:
        calls.append("reference")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(reference, "rms_norm", spy)
    with dispatch.use_backend("auto"):
        dispatch.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6)
    assert calls == ["reference"]


@needs_triton
def test_triton_backend_runs_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> None:
        raise AssertionError("reference called under the triton backend")

    x, w = torch.randn(2, 8, device=DEVICE), torch.ones(8, device=DEVICE)
    expected = reference.rms_norm(x, w, 1e-6)[0]
    monkeypatch.setattr(reference, "rms_norm", forbidden)
    with dispatch.use_backend("triton"):
        torch.testing.assert_close(dispatch.rms_norm(x, w, 1e-6)[0], expected)


@pytest.mark.skipif(ON_GPU, reason="only CPU tensors need the interpreter")
def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    with dispatch.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6)


@needs_triton
def test_data_checks_can_be_turned_off() -> None:
    """With checks off, a wrong max_seqlen_q is not caught (the caller vouches for its metadata)."""
    q = torch.randn(5, 2, 64, device=DEVICE)
    args = (q, q, q, cu_seqlens([5]), cu_seqlens([5]), 3, 5, 0.125)
    with dispatch.use_backend("triton"):
        with pytest.raises(ValueError, match="max_seqlen_q"):
            dispatch.varlen_attention(*args)
        dispatch.set_data_checks(False)
        try:
            dispatch.varlen_attention(*args)
        finally:
            dispatch.set_data_checks(True)
