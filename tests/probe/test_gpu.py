"""GPU tests: the Triton kernels against PyTorch, and a cache warmed with the GPU hidden serving the first launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("rows,cols", [(1, 256), (300, 256), (64, 4096), (7, 1000)])
def test_rmsnorm_matches_pytorch(torch, rows, cols):
    from probe import kernels as k

    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.rand(cols, device="cuda", dtype=torch.bfloat16) + 0.5).requires_grad_()
    xr, wr = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y, yr = k.rmsnorm(x, w, 1e-5), k.rmsnorm_reference(xr, wr, 1e-5)
    torch.testing.assert_close(y.float(), yr, atol=3e-2, rtol=2e-2)
    g = torch.randn_like(yr)
    y.backward(g.to(y.dtype))
    yr.backward(g)
    torch.testing.assert_close(x.grad.float(), xr.grad, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(w.grad.float(), wr.grad, atol=0.5, rtol=2e-2)


def test_swiglu_matches_pytorch(torch):
    from probe import kernels as k

    g = torch.randn(333, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    u = torch.randn(333, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gr, ur = g.detach().float().requires_grad_(), u.detach().float().requires_grad_()
    h, hr = k.swiglu(g, u), k.swiglu_reference(gr, ur)
    torch.testing.assert_close(h.float(), hr, atol=5e-2, rtol=2e-2)
    d = torch.randn_like(hr)
    h.backward(d.to(h.dtype))
    hr.backward(d)
    torch.testing.assert_close(g.grad.float(), gr.grad, atol=1e-1, rtol=3e-2)
    torch.testing.assert_close(u.grad.float(), ur.grad, atol=1e-1, rtol=3e-2)


@pytest.mark.parametrize("vocab", [512, 5000, 32000])
def test_cross_entropy_matches_pytorch(torch, vocab):
    from probe import kernels as k

    logits = (torch.randn(200, vocab, device="cuda") * 3).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (200,), device="cuda")
    labels[::5] = k.IGNORE_INDEX
    ref_logits = logits.detach().float().requires_grad_()
    loss, ref = k.cross_entropy(logits, labels), k.cross_entropy_reference(ref_logits, labels)
    torch.testing.assert_close(loss, ref, atol=1e-3, rtol=1e-3)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, atol=1e-3, rtol=2e-2)
    assert logits.grad[::5].abs().max().item() == 0  # ignored rows get no gradient


def _run(code: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cache_warmed_without_gpu_serves_first_launch(torch, tmp_path):
    cache = str(tmp_path / "cache")
    major, minor = torch.cuda.get_device_capability()
    sm = major * 10 + minor
    warmed = _run(f"import json; from pathlib import Path; from probe import warm; "
                  f"r = warm.warm({sm}, Path({cache!r})); print(json.dumps({{'error': r.error}}))",
                  {"CUDA_VISIBLE_DEVICES": "", "TRITON_CACHE_DIR": cache})
    assert warmed["error"] is None
    launched = _run(f"import json; from pathlib import Path; from probe import warm; from probe.shapes import "
                    f"dtype_for_sm; ev, new = warm.gpu_launch_all(dtype_for_sm({sm}), Path({cache!r})); "
                    f"print(json.dumps({{'events': ev, 'new': new}}))", {"TRITON_CACHE_DIR": cache})
    assert launched["new"] == []
    assert launched["events"] and all(e["cache_hit"] for e in launched["events"])
