"""Warm Triton's cache for the Triton kernels the installed Unsloth (and unsloth_zoo) launch, with no GPU.

How: Unsloth's own Python wrappers (its autograd Functions and launch helpers: they pick block sizes, warps,
weight-size buckets, constexpr flags) are driven with PyTorch *fake* tensors on device "cuda" (FakeTensorMode
needs no GPU), laid out as Unsloth's model code lays them out, for each declared model shape. Every Triton launch
they make is intercepted (`JITFunction.run`): the fake tensors become CPU stand-ins of the same dtype and 16-byte
alignment and the launch becomes `warmup=True`, i.e. a compile into TRITON_CACHE_DIR with no kernel run. The
project's stand-in driver (probe.warm) reports the target SM, and torch.cuda's device queries report a stand-in
card of that SM. So the launch parameters come from the installed Unsloth, not from a copy of its tables: when
the pin moves the warm-up follows, and a wrapper or kernel that disappeared fails loudly by name.

`import unsloth` with no GPU either refuses or (2026.10.9) sets itself up for the CPU, whose device type changes
what the kernel modules pick, and it patches transformers and more at start-up: so its package `__init__` (and
unsloth_zoo's) is not run; the packages are registered as bare modules and only the kernel modules are imported
under the stand-in card (the `TRITON_*` variables the `__init__`s set are applied, see unsloth_triton_env).
Host modules (cuda_utils and, on triton <= 3.6, one launcher per kernel signature) are built against the stub
libcuda as `probe warm` does.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.workload import ModelShape

# Kernels each shape must have compiled (by Triton function name); a pin that renames one fails by name.
CORE_KERNELS = ("_rms_layernorm_forward", "_rms_layernorm_backward", "_rope_embedding_QK", "_nf4_dequant_kernel",
                "_fl_backward_kernel", "_fl_scale_kernel")
ACT_KERNELS = {"swiglu": ("_fg_kernel", "_DWf_DW_dfg_kernel"),
               "geglu": ("_approx_forward_kernel", "_approx_backward_kernel", "_exact_forward_kernel",
                         "_exact_backward_kernel")}
QK_NORM_KERNELS = ("_qk_norm_rope_forward", "_qk_norm_rope_backward")
GEMMA_NORM_FORWARD = "_gemma_rms_layernorm_forward"
# tokens per step: Triton specialises i32 arguments on divisibility by 16, and the kernels take the token count
# times constants (split counts, widths): cover every power of two dividing it below 16 (1001: 2^0 ... 1024: 2^10)
TOKEN_COUNTS = (1024, 1000, 1004, 1002, 1001)
# what a card of each SM reports (SM count of the usual datacenter part; max resident threads per SM);
# Unsloth splits some backward passes by SM count and caps registers on 2048-thread SMs
CARDS = {70: (80, 2048), 75: (40, 1024), 80: (108, 2048), 86: (84, 1536), 87: (16, 1536), 89: (128, 1536),
         90: (132, 2048), 100: (148, 2048), 103: (148, 2048), 110: (148, 2048), 120: (170, 1536), 121: (48, 1536)}
MODULES = {"rms": "unsloth.kernels.rms_layernorm", "rope": "unsloth.kernels.rope_embedding",
           "qk": "unsloth.kernels.qk_norm_rope", "swiglu": "unsloth.kernels.swiglu", "geglu": "unsloth.kernels.geglu",
           "utils": "unsloth.kernels.utils", "fl": "unsloth_zoo.fused_losses.fused_linear"}


class WorkloadWarmError(RuntimeError):
    """Unsloth is missing, or its code no longer has what the warm-up drives (named in the message)."""


@dataclass
class WorkloadWarmReport:
    sm: int
    cache_dir: str
    unsloth: str | None = None
    unsloth_zoo: str | None = None
    kernels: list[dict[str, Any]] = field(default_factory=list)  # name, shape, cache_hit
    modules: list[dict[str, Any]] = field(default_factory=list)
    new_files: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # TRITON_* set as `import unsloth` sets them
    seconds: float = 0.0
    error: str | None = None


# ------------------------------------------------------------------------------------------- stand-in card


class _Props(types.SimpleNamespace):
    pass


@contextlib.contextmanager
def stand_in_card(sm: int) -> Iterator[None]:
    """torch.cuda answers device queries as one card of this SM would (no GPU, no driver needed)."""
    import torch  # noqa: PLC0415

    count, threads = CARDS.get(sm, (132, 2048))
    major, minor = divmod(sm, 10)
    props = _Props(name=f"stand-in sm_{sm}", major=major, minor=minor, multi_processor_count=count,
                   max_threads_per_multi_processor=threads, total_memory=80 << 30, warp_size=32,
                   gcnArchName="", L2_cache_size=50 << 20, regs_per_multiprocessor=65536,
                   shared_memory_per_block_optin=227 << 10, is_integrated=False, uuid="stand-in")

    class _Device(contextlib.nullcontext):  # torch.cuda.device(i): a no-op context on the one stand-in card
        def __init__(self, device: Any = 0, *_a: Any, **_k: Any) -> None:
            super().__init__()
            self.idx = 0
            self.prev_idx = 0

    class _Stream:
        cuda_stream = 0
        device = torch.device("cuda", 0)

        def synchronize(self) -> None:
            return None

        def wait_stream(self, *_a: Any) -> None:
            return None

    stand_ins: dict[str, Any] = {
        "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
        "is_initialized": lambda: True, "_lazy_init": lambda: None, "synchronize": lambda *_a, **_k: None,
        "get_device_capability": lambda *_a, **_k: (major, minor), "get_device_properties": lambda *_a, **_k: props,
        "get_device_name": lambda *_a, **_k: props.name, "is_bf16_supported": lambda *_a, **_k: sm >= 80,
        "is_current_stream_capturing": lambda: False, "mem_get_info": lambda *_a, **_k: (70 << 30, 80 << 30),
        "device": _Device, "current_stream": lambda *_a, **_k: _Stream(), "default_stream": lambda *_a, **_k: _Stream(),
        "set_device": lambda *_a: None,
    }
    patches = [(torch.cuda, name, value) for name, value in stand_ins.items()]
    patches.append((torch._C, "_cuda_getCurrentRawStream", lambda *_a: 0))  # read at import by kernels/utils.py
    from torch._subclasses import fake_tensor  # noqa: PLC0415

    # a fake CUDA tensor would otherwise allocate a real one first when CUDA reports itself available
    patches.append((fake_tensor, "init_gpu_context", lambda *_a: None))
    missing = object()
    saved = [(obj, name, getattr(obj, name, missing)) for obj, name, _v in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


def _stand_in_device_properties(sm: int) -> None:
    """triton's driver.active.utils.get_device_properties (queried at import by unsloth_zoo's vendored kernels)
    answers for the stand-in card; everything else goes to the real cuda_utils module."""
    from triton.runtime.driver import driver  # noqa: PLC0415

    active = driver.active
    real = type(active).utils
    count, _threads = CARDS.get(sm, (132, 2048))
    shared = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376}.get(sm, 232448)

    class Utils:
        def get_device_properties(self, _device: int) -> dict[str, int]:
            return {"max_shared_mem": shared, "multiprocessor_count": count, "max_num_regs": 65536,
                    "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}

        def __getattr__(self, name: str) -> Any:
            return getattr(real.fget(active), name)

    active._utils = None
    type(active).utils = property(lambda self: Utils())


# ------------------------------------------------------------------------------------------- importing Unsloth


def _bare_package(name: str) -> None:
    """Register `name` as a package whose __init__ never runs, so its submodules import on their own."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise WorkloadWarmError(f"{name} is not installed")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = spec
    module.__file__ = spec.origin
    sys.modules[name] = module


def unsloth_triton_env() -> dict[str, str]:
    """The TRITON_* variables `import unsloth` sets unconditionally (module-level assignments in unsloth's and
    unsloth_zoo's __init__, read from their source: the warm-up skips that code). Some are part of Triton's
    cache key (unsloth_zoo sets TRITON_DISABLE_LINE_INFO=1): a warm-up without them never hits in a real run."""
    import ast  # noqa: PLC0415

    env: dict[str, str] = {}
    for package in ("unsloth_zoo", "unsloth"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise WorkloadWarmError(f"{package} is not installed")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: a branch (debug switches) is not what a user's import sets
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            target, value = node.targets[0], node.value
            if (isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ"
                    and isinstance(target.slice, ast.Constant) and str(target.slice.value).startswith("TRITON_")
                    and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                env[str(target.slice.value)] = value.value
    return env


@contextlib.contextmanager
def unsloth_environment() -> Iterator[dict[str, str]]:
    env = unsloth_triton_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_kernel_modules() -> dict[str, types.ModuleType]:
    """Unsloth's kernel modules and unsloth_zoo's fused loss, without the packages' start-up code."""
    # the eager fast-launch path keys on data pointers; a fake tensor has none (it changes no kernel variant)
    os.environ["UNSLOTH_TRITON_FAST_LAUNCH"] = "0"
    os.environ.setdefault("UNSLOTH_IS_PRESENT", "1")
    if "UNSLOTH_COMPILE_LOCATION" not in os.environ:  # unsloth_zoo writes generated modules there at import
        import atexit  # noqa: PLC0415
        import shutil  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        scratch = tempfile.mkdtemp(prefix="probe-unsloth-compiled-")
        atexit.register(shutil.rmtree, scratch, True)
        os.environ["UNSLOTH_COMPILE_LOCATION"] = scratch
    os.environ.setdefault("UNSLOTH_ZOO_IS_PRESENT", "1")
    for name in ("unsloth", "unsloth_zoo", "unsloth.kernels", "unsloth_zoo.fused_losses"):
        _bare_package(name)
    out = {}
    for key, name in MODULES.items():
        try:
            out[key] = importlib.import_module(name)
        except Exception as exc:
            from probe.results import one_line  # noqa: PLC0415

            raise WorkloadWarmError(f"cannot import {name}: {one_line(exc)}") from None
    return out


def _need(module: types.ModuleType, name: str) -> Any:
    value = getattr(module, name, None)
    if value is None:
        raise WorkloadWarmError(f"{module.__name__}.{name} is gone: the warm-up drives it (Unsloth pin moved?)")
    return value


# ------------------------------------------------------------------------------------------- intercepting Triton


@contextlib.contextmanager
def launches_compile_only(compiled: list[Any]) -> Iterator[None]:
    """Every JITFunction launch in the block compiles (warmup) instead of running; fake tensors become CPU
    stand-ins of the same dtype and 16-byte alignment. The compiled kernels are appended to `compiled`."""
    import torch  # noqa: PLC0415
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily  # noqa: PLC0415
    from triton.runtime.jit import JITFunction  # noqa: PLC0415

    original = JITFunction.run

    def stand_in(arg: Any) -> Any:
        if isinstance(arg, FakeTensor) or (isinstance(arg, torch.Tensor) and arg.device.type != "cpu"):
            misalign = (arg.storage_offset() * arg.element_size()) % 16
            base = torch.empty(16 + misalign, dtype=torch.uint8)  # CPU allocations are 64-byte aligned
            return base[misalign:misalign + arg.element_size()].view(arg.dtype)
        return arg

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        with unset_fake_temporarily():
            args = tuple(stand_in(a) for a in args)
            kwargs = {k: stand_in(v) for k, v in kwargs.items()}
            kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(kernel)
        return kernel

    JITFunction.run = run
    try:
        yield
    finally:
        JITFunction.run = original


class _Ctx:
    """What an autograd Function's forward and backward use of their ctx."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        import torch  # noqa: PLC0415

        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        self.saved_tensors: tuple[Any, ...] = ()

    def save_for_backward(self, *tensors: Any) -> None:
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *_t: Any) -> None:
        return None

    def mark_dirty(self, *_t: Any) -> None:
        return None

    def set_materialize_grads(self, _value: bool) -> None:
        return None


@contextlib.contextmanager
def forward_then_backward() -> Iterator[None]:
    """Every autograd Function applied in the block runs its forward and then at once its backward with fresh
    (contiguous) output gradients, outside autograd's engine: the engine would set a real CUDA device for
    fake CUDA tensors. Unsloth's own backward code picks the backward launches. Custom ops with a registered
    autograd (unsloth_zoo's fused loss) go through autograd.Function too."""
    import torch  # noqa: PLC0415

    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = _Ctx(args)
        if getattr(cls, "setup_context", None) is not None and \
                cls.setup_context is not torch.autograd.Function.setup_context:
            out = cls.forward(*args, **kwargs)
            cls.setup_context(ctx, args, out)
        else:
            out = cls.forward(ctx, *args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        grads = [torch.empty(o.shape, dtype=o.dtype, device=o.device) if isinstance(o, torch.Tensor)
                 and o.dtype.is_floating_point else None for o in outs]
        cls.backward(ctx, *grads)
        return out

    # autograd's graph records the CUDA stream of every fake CUDA tensor it sees (a real CUDA call, fatal with no
    # driver): run with grad mode off, while torch.is_grad_enabled() says on for the wrappers that ask
    # (torch._C.is_grad_enabled too: custom ops' autograd asks that one before calling their backward)
    is_grad_enabled, c_is_grad_enabled = torch.is_grad_enabled, torch._C.is_grad_enabled
    torch.autograd.Function.apply = classmethod(apply)
    torch.is_grad_enabled = torch._C.is_grad_enabled = lambda: True
    try:
        with torch.no_grad():
            yield
    finally:
        torch.autograd.Function.apply = original
        torch.is_grad_enabled, torch._C.is_grad_enabled = is_grad_enabled, c_is_grad_enabled


def _fake_index(t: Any, key: Any) -> Any:
    """t[key] through aten view ops: Python indexing of a CUDA tensor takes a device guard first (a real CUDA
    call), the aten ops under FakeTensorMode do not. Basic indexing and one integer-tensor index."""
    import torch  # noqa: PLC0415

    keys = key if isinstance(key, tuple) else (key,)
    specified = sum(1 for k in keys if k is not None and k is not Ellipsis)
    out, dim = t, 0
    for k in keys:
        if k is Ellipsis:
            dim += t.dim() - specified
        elif k is None:
            out, dim = out.unsqueeze(dim), dim + 1
        elif isinstance(k, slice):
            out, dim = torch.ops.aten.slice.Tensor(out, dim, k.start, k.stop, k.step or 1), dim + 1
        elif isinstance(k, int):
            out = torch.ops.aten.select.int(out, dim, k)
        elif isinstance(k, torch.Tensor) and k.dtype != torch.bool:
            out, dim = torch.ops.aten.index.Tensor(out, [None] * dim + [k]), dim + k.dim()
        else:
            raise TypeError(f"stand-in indexing does not handle {type(k).__name__} keys")
    return out


@contextlib.contextmanager
def fake_indexing() -> Iterator[None]:
    import torch  # noqa: PLC0415
    from torch._subclasses.fake_tensor import FakeTensor  # noqa: PLC0415

    getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def get(self: Any, key: Any) -> Any:
        return _fake_index(self, key) if isinstance(self, FakeTensor) else getitem(self, key)

    def put(self: Any, key: Any, value: Any) -> None:
        if not isinstance(self, FakeTensor):
            return setitem(self, key, value)
        view = _fake_index(self, key)
        if isinstance(value, torch.Tensor):
            torch.ops.aten.copy_.default(view, value)
        else:
            view.fill_(value)
        return None

    copy = torch.Tensor.copy_

    def copy_(self: Any, src: Any, non_blocking: bool = False) -> Any:  # its binding takes a device guard too
        if isinstance(self, FakeTensor):
            return torch.ops.aten.copy_.default(self, src, non_blocking)
        return copy(self, src, non_blocking)

    torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_ = get, put, copy_
    try:
        yield
    finally:
        torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_ = getitem, setitem, copy


@contextlib.contextmanager
def custom_ops_run_for_real(module: types.ModuleType) -> Iterator[None]:
    """FakeTensorMode runs a custom op's fake (shape-only) kernel; unsloth_zoo's fused loss is a custom op whose
    real body picks and launches the Triton kernels: run that body instead (its launches compile only)."""
    from torch._library.custom_ops import CustomOpDef  # noqa: PLC0415

    ops = [op for op in vars(module).values() if isinstance(op, CustomOpDef)]
    if not ops:
        raise WorkloadWarmError(f"{module.__name__} registers no custom ops (the fused loss moved?)")
    saved = [(op, op._abstract_fn) for op in ops]
    for op in ops:
        op._abstract_fn = op._init_fn
    try:
        yield
    finally:
        for op, fake in saved:
            op._abstract_fn = fake


# ------------------------------------------------------------------------------------------- the plan


def plan(shape: ModelShape) -> list[tuple[str, int]]:
    """(wrapper, tokens) pairs the warm-up drives for one shape: what Unsloth's model code calls per step."""
    steps = ["rms_norm", "rope_with_indices", "rope_positions", "nf4_dequant", shape.act, "fused_linear_ce"]
    if shape.qk_norm:
        steps.append("qk_norm_rope")
    return [(step, tokens) for tokens in TOKEN_COUNTS for step in steps]


def expected_kernels(shape: ModelShape) -> set[str]:
    names = set(CORE_KERNELS) | set(ACT_KERNELS[shape.act])
    if shape.gemma_norm:  # Gemma's (1 + weight) RMSNorm has its own forward kernel; the backward is shared
        names = (names - {"_rms_layernorm_forward"}) | {GEMMA_NORM_FORWARD}
    if shape.qk_norm:
        names |= set(QK_NORM_KERNELS)
    return names


def _drivers(m: dict[str, types.ModuleType], shape: ModelShape, dtype: Any) -> dict[str, Callable[[int], None]]:
    """Each step of the plan: calls into Unsloth's wrappers with fake CUDA tensors laid out as its model code
    lays them out (Q/K as transposed views of the projections; padding-free batches of one row)."""
    import torch  # noqa: PLC0415

    dev = "cuda"
    H, inter, V = shape.hidden, shape.intermediate, shape.vocab
    nq, nkv, hd = shape.heads, shape.kv_heads, shape.head_dim

    def t(*size: Any, dt: Any = dtype, grad: bool = False) -> Any:
        return torch.empty(*size, dtype=dt, device=dev, requires_grad=grad)

    def norm(width: int) -> Any:
        return types.SimpleNamespace(weight=t(width), variance_epsilon=shape.rms_eps, eps=shape.rms_eps)

    def rms_norm(n: int) -> None:
        x = t(1, n, H, grad=True)
        _need(m["rms"], "fast_rms_layernorm")(norm(H), x, shape.gemma_norm)

    def _qk(n: int) -> tuple[Any, Any]:
        q = t(1, n, nq * hd, grad=True).view(1, n, nq, hd).transpose(1, 2)
        k = t(1, n, nkv * hd, grad=True).view(1, n, nkv, hd).transpose(1, 2)
        return q, k

    def _cos_sin(n: int) -> tuple[Any, Any]:
        return t(max(n, 4096), hd), t(max(n, 4096), hd)

    def rope(n: int, indices: bool) -> None:
        q, k = _qk(n)
        cos, sin = _cos_sin(n)
        pos = torch.arange(n, device=dev).view(1, n) if indices else None
        _need(m["rope"], "fast_rope_embedding")(q, k, cos, sin, pos)

    def qk_norm_rope(n: int) -> None:
        q = t(1, n, nq * hd, grad=True).view(1, n, nq, hd)
        k = t(1, n, nkv * hd, grad=True).view(1, n, nkv, hd)
        cos, sin = _cos_sin(n)
        pos = torch.arange(n, device=dev).view(1, n)
        _need(m["qk"], "fast_qk_norm_rope")(norm(hd), norm(hd), q, k, cos, sin, pos)

    def nf4_dequant(_n: int) -> None:
        from bitsandbytes.functional import QuantState  # noqa: PLC0415

        fast_dequantize = _need(m["utils"], "fast_dequantize")
        for rows, cols in {(nq * hd, H), (nkv * hd, H), (H, nq * hd), (inter, H), (H, inter)}:
            numel = rows * cols
            state2 = QuantState(absmax=t((numel // 64 + 255) // 256, dt=torch.float32), code=t(256, dt=torch.float32),
                                blocksize=256, dtype=torch.float32)
            state = QuantState(absmax=t(numel // 64, dt=torch.uint8), shape=torch.Size((rows, cols)),
                               code=t(16, dt=torch.float32), blocksize=64, quant_type="nf4", dtype=dtype,
                               offset=t((), dt=torch.float32), state2=state2)
            fast_dequantize(t(numel // 2, 1, dt=torch.uint8), state)

    def glu(n: int, forward: Callable[..., Any], backward: Callable[..., Any]) -> None:
        e, g = t(1, n, inter), t(1, n, inter)
        forward(e, g)
        backward(t(n, inter), e.view(n, inter), g.view(n, inter))

    def swiglu(n: int) -> None:
        glu(n, _need(m["swiglu"], "swiglu_fg_kernel"), _need(m["swiglu"], "swiglu_DWf_DW_dfg_kernel"))

    def geglu(n: int) -> None:
        for kind in ("approx", "exact"):
            glu(n, _need(m["geglu"], f"geglu_{kind}_forward_kernel"), _need(m["geglu"], f"geglu_{kind}_backward_kernel"))

    def fused_linear_ce(n: int) -> None:
        hidden = t(1, n, H, grad=True)
        targets = torch.zeros(1, n, dtype=torch.int64, device=dev)
        _need(m["fl"], "fused_linear_cross_entropy")(hidden, t(V, H), None, targets,
                                                              divisor=t((), dt=torch.float32))
        broken: set[Any] = getattr(m["fl"], "_TRITON_BROKEN", set())
        if broken:  # unsloth_zoo fell back to its torch path: say why instead of warming nothing
            raise WorkloadWarmError(f"unsloth_zoo's fused loss gave up on Triton for {sorted(map(str, broken))}")

    return {"rms_norm": rms_norm, "rope_with_indices": lambda n: rope(n, True),
            "rope_positions": lambda n: rope(n, False), "qk_norm_rope": qk_norm_rope, "nf4_dequant": nf4_dequant,
            "swiglu": swiglu, "geglu": geglu, "fused_linear_ce": fused_linear_ce}


@contextlib.contextmanager
def _every_row_kept(fl: types.ModuleType) -> Iterator[None]:
    """The fused loss counts kept rows with nonzero() (data-dependent, no value in a fake tensor): all rows
    count, as in a batch whose labels are all real tokens. Row-count parity is covered by TOKEN_COUNTS."""
    import torch  # noqa: PLC0415

    original = _need(fl, "_keep_index")

    def keep_all(targets: Any, mask: Any, vocab_size: int, ignore_index: Any) -> tuple[Any, int]:
        n = targets.numel()
        return torch.arange(n, device=targets.device), n

    setattr(fl, "_keep_index", keep_all)  # noqa: B010 - a module attribute mypy cannot see
    try:
        yield
    finally:
        setattr(fl, "_keep_index", original)  # noqa: B010


# ------------------------------------------------------------------------------------------- warm / check


def _forget_compiled(modules: dict[str, types.ModuleType]) -> None:
    """Triton keeps compiled kernels in memory per device index: clear them so every kernel is looked up in
    the cache again (each shape, or the replay after a warm-up in the same process). Unsloth's own device
    answers (functools caches, import-time values) stay: hence one SM per process."""
    from triton.runtime.jit import JITFunction  # noqa: PLC0415

    loaded = [m for name, m in list(sys.modules.items()) if name.split(".")[0] in ("unsloth", "unsloth_zoo") and m]
    for module in loaded + list(modules.values()):
        for value in list(vars(module).values()):
            fn = value if isinstance(value, JITFunction) else getattr(value, "fn", None)  # Heuristics wrap one
            if isinstance(fn, JITFunction):
                fn.device_caches.clear()


def _versions() -> tuple[str | None, str | None]:
    from importlib import metadata  # noqa: PLC0415

    def v(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return v("unsloth"), v("unsloth_zoo")


def warm_workload(sm: int, root: Path, shapes: list[ModelShape], *, stub_from: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> WorkloadWarmReport:
    """Compile Unsloth's kernels for every shape (and the host modules) for sm into root."""
    import torch  # noqa: PLC0415
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415

    from probe import warm  # noqa: PLC0415
    from probe.shapes import dtype_for_sm  # noqa: PLC0415

    report = WorkloadWarmReport(sm=sm, cache_dir=str(root))
    report.unsloth, report.unsloth_zoo = _versions()
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = str(root)
    warm._point_triton_at(root)
    before = warm.snapshot(root)
    say = progress or (lambda _line: None)
    try:
        stub_dir = warm.stub_dir_for(stub_from) if stub_from else warm.build_stub(root)
        before = warm.snapshot(root)
        dtype = getattr(torch, dtype_for_sm(sm))
        with stand_in_card(sm), warm.stand_in_driver(sm, stub_dir), unsloth_environment() as env:
            report.env = env
            _stand_in_device_properties(sm)
            modules = import_kernel_modules()  # some modules query the device at import (shared memory)
            compiled: list[Any] = []
            with warm.compile_events() as events:
                for shape in shapes:
                    _forget_compiled(modules)  # each shape looks every kernel up (a hit is still an event)
                    drivers = _drivers(modules, shape, dtype)
                    first = len(events)
                    with FakeTensorMode(allow_non_fake_inputs=True), _every_row_kept(modules["fl"]), \
                            launches_compile_only(compiled), forward_then_backward(), fake_indexing(), \
                            custom_ops_run_for_real(modules["fl"]):
                        for step, tokens in plan(shape):
                            n_before = len(events)
                            drivers[step](tokens)
                            for ev in events[n_before:]:
                                say(f"sm_{sm}  {'cached' if ev['cache_hit'] else 'compiled':8}  {ev['name']}  "
                                    f"({shape.name}, {step}, {tokens} tokens)")
                    got = {ev["name"] for ev in events[first:]}
                    missing = sorted(expected_kernels(shape) - got)
                    if missing:
                        raise WorkloadWarmError(f"{shape.name}: Unsloth launched no {', '.join(missing)} "
                                                "(renamed or dropped in this Unsloth version?)")
                    report.kernels += [{"name": ev["name"], "shape": shape.name, "cache_hit": ev["cache_hit"]}
                                       for ev in events[first:]]
                t0 = time.perf_counter()
                files = warm.snapshot(root)
                from triton.backends.nvidia import driver as nvidia  # noqa: PLC0415

                nvidia.CudaUtils()
                report.modules.append({"name": "cuda_utils", "built": bool(warm.written(files, warm.snapshot(root))),
                                       "seconds": round(time.perf_counter() - t0, 3)})
                if hasattr(nvidia, "CudaLauncher"):
                    seen: set[Any] = set()
                    for ck in compiled:
                        key = ck.hash if hasattr(ck, "hash") else id(ck)
                        if key in seen:
                            continue
                        seen.add(key)
                        files = warm.snapshot(root)
                        nvidia.CudaLauncher(ck.src, ck.metadata)
                        report.modules.append({"name": f"launcher:{ck.name}",
                                               "built": bool(warm.written(files, warm.snapshot(root)))})
    except Exception as exc:  # one line for the caller (PROBE_DEBUG=1 prints the traceback)
        from probe.results import one_line  # noqa: PLC0415

        if os.environ.get("PROBE_DEBUG"):
            import traceback  # noqa: PLC0415

            traceback.print_exc()

        report.error = one_line(exc)
    report.new_files = warm.written(before, warm.snapshot(root))
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def check_workload(sm: int, root: Path, shapes: list[ModelShape],
                   progress: Callable[[str], None] | None = None) -> WorkloadWarmReport:
    """Replay the warm-up against a copy of the cache: every kernel and module must be a hit, nothing written."""
    from probe import warm  # noqa: PLC0415

    if not (warm.stub_dir_for(root) / "libcuda.so.1").exists():
        report = WorkloadWarmReport(sm=sm, cache_dir=str(root))
        report.error = f"{root} holds no {warm.STUB_DIR}/libcuda.so.1: it was not warmed by `python -m probe warm`"
        return report
    with warm.scratch_copy(root, "probe-workload-cache-") as copy:
        report = warm_workload(sm, copy, shapes, stub_from=root, progress=progress)
    report.cache_dir = str(root)
    if report.error is None:
        misses = sorted({f"{k['name']} ({k['shape']})" for k in report.kernels if not k["cache_hit"]})
        rebuilt = [m["name"] for m in report.modules if m["built"]]
        if misses or rebuilt or report.new_files:
            report.error = (f"cache not warm: {len(misses)} kernel misses {misses[:3]}, {len(rebuilt)} modules "
                            f"rebuilt {rebuilt[:3]}, {len(report.new_files)} files written")
    return report
