"""The smoke model's shape: shared by the smoke suite and the Triton warm-up (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmokeShape:
    vocab: int = 512
    hidden: int = 256
    intermediate: int = 768
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    seq_len: int = 128
    batch: int = 8
    rms_eps: float = 1e-5


SMOKE = SmokeShape()


def dtype_for_sm(sm: int) -> str:
    """The dtype the decisions pick for an NVIDIA SM (90 -> bfloat16): what the GPU run will use."""
    from probe.decide import Hardware, choose_dtype  # noqa: PLC0415

    return choose_dtype(Hardware("nvidia", capability=divmod(sm, 10))).value
