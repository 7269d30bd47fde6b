"""The decision tree: training settings from what was detected, each with its reason. Pure: no imports of torch.

Facts used (see shared/DESIGN.md): bf16 needs compute capability 8.0+; TF32 exists from 8.0; FlashAttention-2
needs 8.0+, FlashAttention-3 is Hopper (9.0) only; FP8 tensor cores need 8.9+ (AMD: gfx942 and newer).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

# AMD chips whose matrix cores do bf16 (CDNA2+, RDNA3+) and FP8 (CDNA3+).
AMD_BF16 = re.compile(r"gfx(90a|94\d|95\d|11\d\d|12\d\d)")
AMD_FP8 = re.compile(r"gfx(94\d|95\d|12\d\d)")

SEQ_LEN = 2048  # the memory plan is for this sequence length per sample
GLOBAL_BATCH = 16  # sequences per optimizer step the plan aims for
LORA_FRACTION = 0.005  # LoRA r=16 on every projection of a Llama-like model is about 0.5% of its parameters
OVERHEAD_MIB = 1536  # CUDA context, cuBLAS workspaces, allocator fragmentation


@dataclass(frozen=True)
class Hardware:
    """The part of a detection the decisions read (tests build it directly)."""

    vendor: str  # "nvidia" | "amd" | "none"
    name: str = ""
    capability: tuple[int, int] | None = None
    gfx: str | None = None
    vram_total_mib: int = 0
    vram_free_mib: int = 0
    flash_attn: str | None = None  # installed versions, None when absent
    flash_attn_3: str | None = None
    xformers: str | None = None


@dataclass(frozen=True)
class Choice:
    value: Any
    reason: str


@dataclass(frozen=True)
class MemoryPlan:
    params: int
    load_in_4bit: bool
    gradient_checkpointing: str  # "off" | "non-reentrant"
    optimizer: str  # "adamw_8bit" | "adamw_fused"
    per_device_batch: int
    grad_accumulation: int
    seq_len: int
    need_mib: int
    free_mib: int
    fits: bool
    breakdown_mib: dict[str, int]
    reason: str


@dataclass(frozen=True)
class Decisions:
    dtype: Choice
    tf32: Choice
    attention: Choice
    fp8: Choice
    memory: MemoryPlan | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _bf16(hw: Hardware) -> bool:
    if hw.vendor == "nvidia":
        return hw.capability is not None and hw.capability >= (8, 0)
    return hw.vendor == "amd" and bool(hw.gfx and AMD_BF16.match(hw.gfx))


def choose_dtype(hw: Hardware) -> Choice:
    if hw.vendor == "none":
        return Choice("float32", "no GPU: CPU training runs in fp32")
    if _bf16(hw):
        where = f"sm {hw.capability[0]}.{hw.capability[1]}" if hw.capability else hw.gfx
        return Choice("bfloat16", f"{where} has bf16 tensor cores (NVIDIA 8.0+ / AMD CDNA2+)")
    if hw.vendor == "nvidia" and hw.capability and hw.capability >= (7, 0):
        return Choice("float16", f"sm {hw.capability[0]}.{hw.capability[1]} lacks bf16; fp16 with loss scaling")
    return Choice("float32", "GPU too old for half-precision tensor cores")


def choose_tf32(hw: Hardware) -> Choice:
    if hw.vendor == "nvidia" and hw.capability and hw.capability >= (8, 0):
        return Choice(True, "TF32 matmuls exist from sm 8.0 (Ampere) on")
    if hw.vendor == "amd":
        return Choice(False, "TF32 is an NVIDIA mode; ROCm's XF32 is not enabled by default")
    return Choice(False, "no TF32 before sm 8.0" if hw.vendor == "nvidia" else "no GPU")


def choose_attention(hw: Hardware) -> Choice:
    cc = hw.capability
    if hw.vendor == "nvidia" and cc and cc[0] == 9 and hw.flash_attn_3:
        return Choice("flash_attention_3", f"Hopper with flash-attn-3 {hw.flash_attn_3} installed")
    if hw.vendor == "nvidia" and cc and cc >= (8, 0) and hw.flash_attn:
        return Choice("flash_attention_2", f"sm {cc[0]}.{cc[1]} >= 8.0 with flash-attn {hw.flash_attn} installed")
    if hw.vendor == "amd" and hw.flash_attn and hw.gfx and AMD_FP8.match(hw.gfx):
        return Choice("flash_attention_2", f"{hw.gfx} with the ROCm build of flash-attn {hw.flash_attn}")
    if hw.vendor == "nvidia" and cc and cc >= (7, 0) and hw.xformers:
        return Choice("xformers", f"xformers {hw.xformers} installed and supports sm {cc[0]}.{cc[1]}; "
                                  "no FlashAttention for this GPU")
    why = "no GPU" if hw.vendor == "none" else "no FlashAttention/xformers usable for this GPU"
    return Choice("sdpa", f"PyTorch scaled_dot_product_attention ({why})")


def choose_fp8(hw: Hardware) -> Choice:
    if hw.vendor == "nvidia" and hw.capability and hw.capability >= (8, 9):
        return Choice(True, f"sm {hw.capability[0]}.{hw.capability[1]} >= 8.9 has FP8 tensor cores")
    if hw.vendor == "amd" and hw.gfx and AMD_FP8.match(hw.gfx):
        return Choice(True, f"{hw.gfx} has FP8 matrix cores")
    return Choice(False, "FP8 needs sm 8.9+ (Ada/Hopper/Blackwell) or AMD CDNA3+" if hw.vendor != "none"
                  else "no GPU")


MAX_MODEL_PARAMS = 1e15  # a thousand times the largest models trained today; beyond it the plan means nothing


def parse_model_size(text: str) -> int:
    """'8b', '0.5B', '125m', '7e9' or a plain count -> number of parameters."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*", text.lower())
    if not found:
        raise ValueError(f"not a model size: {text!r} (use e.g. 8b, 500m or 8000000000)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[found.group(2)]
    value = float(found.group(1)) * scale
    if not math.isfinite(value) or value > MAX_MODEL_PARAMS:  # 1e309 is inf: int() would overflow
        raise ValueError(f"model size {text!r} is beyond {MAX_MODEL_PARAMS:.0e} parameters")
    params = int(value)
    if params <= 0:
        raise ValueError(f"model size must be positive: {text!r}")
    return params


def _shape(params: int) -> tuple[int, int]:
    """Hidden size and layer count of a Llama-like model of that size (P ~ 12 L h^2, h ~ 128 L)."""
    layers = max(2, round((params / (12 * 128**2)) ** (1 / 3)))
    hidden = int(math.sqrt(params / (12 * layers)))
    return hidden, layers


class _Option(NamedTuple):
    """One candidate configuration of the memory plan with its estimated MiB."""

    load_in_4bit: bool
    optimizer: str
    ckpt: str
    batch: int
    weights: float
    trainable: float
    activations: float
    need: float


def plan_memory(params: int, hw: Hardware, vocab: int = 128_256) -> MemoryPlan:
    """Cheapest settings that fit free VRAM, preferring speed (no 4-bit, no checkpointing, fused AdamW)."""
    mib = 2**20
    hidden, layers = _shape(params)
    lora = int(params * LORA_FRACTION)
    free = hw.vram_free_mib
    # per token: bf16 activations of every layer (~34 h bytes without checkpointing, ~2 h with it)
    # plus the logits and their gradient (bf16)
    act_full = (34 * hidden * layers + 4 * vocab) / mib
    act_ckpt = (2 * hidden * layers + 34 * hidden + 4 * vocab) / mib

    def sized(load_in_4bit: bool, optimizer: str, ckpt: str, batch: int) -> _Option:
        weights = params * (0.5 * 1.07 if load_in_4bit else 2) / mib  # nf4 + absmax/double-quant overhead
        # LoRA weights and grads in fp32, Adam moments in fp32 (8 B) or 8-bit (2 B)
        trainable = lora * (4 + 4 + (8 if optimizer == "adamw_fused" else 2)) / mib
        activations = (act_full if ckpt == "off" else act_ckpt) * SEQ_LEN * batch
        need = weights + trainable + OVERHEAD_MIB + activations
        return _Option(load_in_4bit, optimizer, ckpt, batch, weights, trainable, activations, need)

    # cheapest compromise first; the last one (4-bit, 8-bit AdamW, checkpointing, batch 1) is the smallest
    options = [sized(*o) for o in itertools.product((False, True), ("adamw_fused", "adamw_8bit"),
                                                     ("off", "non-reentrant"), (16, 8, 4, 2, 1))]
    best = next((o for o in options if o.need <= 0.9 * free), None)
    fits = best is not None
    best = best or options[-1]  # report the smallest configuration and how far it is from fitting
    load_in_4bit, optimizer, ckpt, batch, weights, trainable, activations, need = best
    reason = (f"{params / 1e9:.2f}B params, seq {SEQ_LEN}: needs ~{need / 1024:.1f} GiB of "
              f"{free / 1024:.1f} GiB free" + ("" if fits else " (does not fit even 4-bit, batch 1)"))
    if hw.vendor == "none":
        reason = f"no GPU: plan shown for reference, {params / 1e9:.2f}B params need ~{need / 1024:.1f} GiB of VRAM"
    return MemoryPlan(
        params=params,
        load_in_4bit=load_in_4bit,
        gradient_checkpointing=ckpt,
        optimizer=optimizer,
        per_device_batch=batch,
        grad_accumulation=max(1, math.ceil(GLOBAL_BATCH / batch)),
        seq_len=SEQ_LEN,
        need_mib=round(need),
        free_mib=free,
        fits=fits,
        breakdown_mib={"weights": round(weights), "lora_and_optimizer": round(trainable),
                       "activations": round(activations), "overhead": OVERHEAD_MIB},
        reason=reason,
    )


def decide(hw: Hardware, model_params: int | None = None) -> Decisions:
    return Decisions(
        dtype=choose_dtype(hw),
        tf32=choose_tf32(hw),
        attention=choose_attention(hw),
        fp8=choose_fp8(hw),
        memory=plan_memory(model_params, hw) if model_params else None,
    )


def hardware_from(detection: Any) -> Hardware:
    """The first GPU of a Detection (training decisions assume identical GPUs) plus installed kernels."""
    pkgs = detection.packages
    common = {"flash_attn": pkgs.get("flash-attn"), "flash_attn_3": pkgs.get("flash-attn-3"),
              "xformers": pkgs.get("xformers")}
    usable = detection.torch is not None and detection.torch.cuda_available
    if not detection.gpus or not usable:
        return Hardware(vendor="none", **common)
    gpu = detection.gpus[0]
    return Hardware(vendor=gpu.vendor, name=gpu.name, capability=gpu.cc, gfx=gpu.gfx,
                    vram_total_mib=gpu.vram_total_mib, vram_free_mib=gpu.vram_free_mib, **common)
