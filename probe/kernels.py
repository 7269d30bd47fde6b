"""The project's Triton kernels (fused RMSNorm, SwiGLU, cross-entropy; forward and backward) and their autograd
wrappers, plus pure-PyTorch references used on the CPU and in the correctness tests.

Cache keys include this file's text and each kernel's starting line: the warm cache is only valid for the
byte-identical file, so the image must ship the same probe/ it warmed with. Integer shape arguments are
`do_not_specialize` and pointers are kept 16-byte aligned, so the compiled variant depends only on dtypes and
the constexpr block sizes chosen by the `*_config` helpers below, which warm.py replays.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["stride", "n_cols"])
def _rmsnorm_fwd(X, W, Y, RSTD, stride, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["stride", "n_rows", "n_cols", "rows_per_program"])
def _rmsnorm_bwd(DY, X, W, RSTD, DX, DW_PARTIAL, stride, n_rows, n_cols, rows_per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    start = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = start + i
        if row < n_rows:
            offset = row.to(tl.int64) * stride
            x = tl.load(X + offset + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + offset + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            xhat = x * rstd
            dxhat = dy * w
            dx = rstd * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=0) / n_cols))
            tl.store(DX + offset + cols, dx.to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
    tl.store(DW_PARTIAL + pid.to(tl.int64) * BLOCK + cols, dw, mask=mask)


@triton.jit(do_not_specialize=["n"])
def _swiglu_fwd(G, U, H, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    h = g * tl.sigmoid(g) * u
    tl.store(H + offs, h.to(H.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n"])
def _swiglu_bwd(G, U, DH, DG, DU, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    tl.store(DU + offs, (dh * silu).to(DU.dtype.element_ty), mask=mask)
    tl.store(DG + offs, (dh * u * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["stride", "n_cols"])
def _cross_entropy_fwd(LOGITS, LABELS, LOSS, LSE, stride, n_cols, IGNORE_INDEX: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    # online log-sum-exp, one running max/sum per lane; padded lanes hold -1e30 and add exp(-huge) = 0 at the end
    m = tl.full([BLOCK], -1e30, tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < n_cols, other=-1e30).to(tl.float32)
        m_new = tl.maximum(m, x)
        s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
        m = m_new
    m_all = tl.max(m, axis=0)
    lse = m_all + tl.log(tl.sum(s * tl.exp(m - m_all), axis=0))
    label = tl.load(LABELS + row)
    valid = label != IGNORE_INDEX
    target = tl.load(base + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(valid, lse - target, 0.0))


@triton.jit(do_not_specialize=["stride", "n_cols"])
def _cross_entropy_bwd(LOGITS, LABELS, LSE, SCALE, DLOGITS, stride, n_cols, IGNORE_INDEX: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    scale = tl.where(label != IGNORE_INDEX, tl.load(SCALE), 0.0)
    lse = tl.load(LSE + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(LOGITS + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
        tl.store(DLOGITS + row * stride + cols, (grad * scale).to(DLOGITS.dtype.element_ty), mask=mask)


IGNORE_INDEX = -100


# Launch configurations: the only inputs to the compiled variant besides dtypes. warm.py calls these too.
def rmsnorm_config(n_cols: int) -> dict[str, int]:
    block = triton.next_power_of_2(n_cols)
    return {"BLOCK": block, "num_warps": 4 if block <= 2048 else 8}


def swiglu_config() -> dict[str, int]:
    return {"BLOCK": 1024, "num_warps": 4}


def cross_entropy_config(n_cols: int) -> dict[str, int]:
    return {"BLOCK": min(4096, triton.next_power_of_2(n_cols)), "num_warps": 8, "IGNORE_INDEX": IGNORE_INDEX}


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned, so the pointer specialisation always matches the warmed one."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = _aligned(x.reshape(-1, shape[-1]))
        rows, cols = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        _rmsnorm_fwd[(rows,)](x2, weight, y, rstd, x2.stride(0), cols, eps, **rmsnorm_config(cols))
        ctx.save_for_backward(x2, weight, rstd)
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        rows, cols = x2.shape
        dy2 = _aligned(dy.reshape(rows, cols).to(x2.dtype))
        dx = torch.empty_like(x2)
        programs = min(rows, 4 * torch.cuda.get_device_properties(x2.device).multi_processor_count)
        per_program = triton.cdiv(rows, programs)
        config = rmsnorm_config(cols)
        partial = torch.empty(programs, config["BLOCK"], device=x2.device, dtype=torch.float32)
        _rmsnorm_bwd[(programs,)](dy2, x2, weight, rstd, dx, partial, x2.stride(0), rows, cols, per_program,
                                  **config)
        dw = partial[:, :cols].sum(0).to(weight.dtype)
        return dx.reshape(dy.shape), dw, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        g, u = _aligned(gate), _aligned(up)
        h = torch.empty_like(g)
        n = g.numel()
        config = swiglu_config()
        _swiglu_fwd[(triton.cdiv(n, config["BLOCK"]),)](g, u, h, n, **config)
        ctx.save_for_backward(g, u)
        return h

    @staticmethod
    def backward(ctx, dh):
        g, u = ctx.saved_tensors
        dh = _aligned(dh.to(g.dtype))
        dg, du = torch.empty_like(g), torch.empty_like(u)
        n = g.numel()
        config = swiglu_config()
        _swiglu_bwd[(triton.cdiv(n, config["BLOCK"]),)](g, u, dh, dg, du, n, **config)
        return dg, du


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels):
        x = _aligned(logits)
        labels = _aligned(labels.to(torch.int64))
        rows, cols = x.shape
        loss = torch.empty(rows, device=x.device, dtype=torch.float32)
        lse = torch.empty(rows, device=x.device, dtype=torch.float32)
        _cross_entropy_fwd[(rows,)](x, labels, loss, lse, x.stride(0), cols, **cross_entropy_config(cols))
        n_valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
        ctx.save_for_backward(x, labels, lse, n_valid)
        return loss.sum() / n_valid

    @staticmethod
    def backward(ctx, dloss):
        x, labels, lse, n_valid = ctx.saved_tensors
        rows, cols = x.shape
        scale = (dloss.float() / n_valid).reshape(1).contiguous()
        dx = torch.empty_like(x)
        _cross_entropy_bwd[(rows,)](x, labels, lse, scale, dx, x.stride(0), cols, **cross_entropy_config(cols))
        return dx, None


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNorm.apply(x, weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(gate, up)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token loss over labels != -100; logits [rows, vocab]."""
    return _CrossEntropy.apply(logits, labels)


# PyTorch references: the CPU path of the smoke suite and the yardstick of the GPU correctness tests.
def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype)


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def project_kernels() -> dict[str, object]:
    return {"rmsnorm_fwd": _rmsnorm_fwd, "rmsnorm_bwd": _rmsnorm_bwd, "swiglu_fwd": _swiglu_fwd,
            "swiglu_bwd": _swiglu_bwd, "cross_entropy_fwd": _cross_entropy_fwd,
            "cross_entropy_bwd": _cross_entropy_bwd}
