"""Smoke-training suite: a tiny random Llama trained QLoRA-style on a learnable synthetic task.

nf4 base weights (bitsandbytes), peft LoRA adapters, bitsandbytes AdamW8bit, gradient checkpointing, the dtype the
decisions chose, and the project's Triton kernels (RMSNorm, SwiGLU, cross-entropy) in every step. Nothing is
downloaded. Without a GPU it runs on the CPU in fp32 with PyTorch reference ops and says what it skipped.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from probe.results import Check, failed, one_line, passed, skipped
from probe.shapes import SMOKE

LOSS_DROP = 0.30  # the last steps' mean loss must be at least 30% below the first step's
PERIOD = 64  # the task: token t+1 = (token t + 1) mod 64, from a random start: learnable from one token back
LR = 3e-3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class KernelSwitch:
    """Whether the patched modules call the Triton kernels or the PyTorch references."""

    triton = False


def _patch(model, switch: KernelSwitch) -> int:
    """Route every RMSNorm and MLP of the model through the project kernels; returns how many were patched."""
    from probe import kernels as ref  # noqa: PLC0415  (imports triton; only called when triton is usable)

    count = 0
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            def norm(hidden, m=module):
                fn = ref.rmsnorm if switch.triton else ref.rmsnorm_reference
                return fn(hidden, m.weight, m.variance_epsilon)
            module.forward = norm
            count += 1
        elif kind.endswith("MLP") and hasattr(module, "gate_proj"):
            def mlp(x, m=module):
                fn = ref.swiglu if switch.triton else ref.swiglu_reference
                return m.down_proj(fn(m.gate_proj(x), m.up_proj(x)))
            module.forward = mlp
            count += 1
    return count


def _triton_startup() -> float | None:
    """Pay triton's fixed per-process costs (its own hash, the backend's ptxas version) and say how long they took."""
    t0 = time.perf_counter()
    try:
        from triton.compiler.compiler import make_backend  # noqa: PLC0415
        from triton.runtime.cache import triton_key  # noqa: PLC0415
        from triton.runtime.driver import driver  # noqa: PLC0415

        triton_key()
        make_backend(driver.active.get_current_target()).hash()
    except Exception:  # moved in another triton: the first step pays it instead
        return None
    return round(time.perf_counter() - t0, 3)


def _batch(torch, gen, device):
    start = torch.randint(0, PERIOD, (SMOKE.batch, 1), generator=gen)
    ids = (start + torch.arange(SMOKE.seq_len)) % PERIOD
    return ids.to(device)


def _quantize(model, dtype, device) -> None:
    """Swap the decoder's projections for bitsandbytes nf4 layers (quantized when moved to the device)."""
    import bitsandbytes as bnb  # noqa: PLC0415

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                old = getattr(parent, name, None)
                if old is None:
                    continue
                new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=False, compute_dtype=dtype,
                                        quant_type="nf4")
                new.weight = bnb.nn.Params4bit(old.weight.data.to("cpu", dtype), requires_grad=False,
                                               quant_type="nf4")
                setattr(parent, name, new.to(device))


GPU_STEPS, CPU_STEPS = 30, 15  # the CPU default keeps a 2-core gate run near 30 s


def run(steps: int | None = None) -> tuple[list[Check], dict[str, Any]]:
    checks: list[Check] = []
    info: dict[str, Any] = {"shape": SMOKE.__dict__}
    try:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    except Exception as exc:
        return [failed("smoke.imports", f"torch/transformers/peft not importable: {one_line(exc)}")], info
    from probe import decide, detect  # noqa: PLC0415

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    steps = steps or (GPU_STEPS if gpu else CPU_STEPS)
    info["steps"] = steps
    det = detect.detect()
    dtype_name = decide.choose_dtype(decide.hardware_from(det)).value
    dtype = getattr(torch, dtype_name)
    info.update(device=torch.cuda.get_device_name() if gpu else "cpu", dtype=dtype_name,
                torch=torch.__version__, transformers=transformers.__version__)
    torch.manual_seed(0)
    if gpu and dtype_name in ("bfloat16", "float32"):
        torch.backends.cuda.matmul.allow_tf32 = True

    # -- model: random weights from a config, nothing downloaded
    config = transformers.LlamaConfig(
        vocab_size=SMOKE.vocab, hidden_size=SMOKE.hidden, intermediate_size=SMOKE.intermediate,
        num_hidden_layers=SMOKE.layers, num_attention_heads=SMOKE.heads, num_key_value_heads=SMOKE.kv_heads,
        max_position_embeddings=SMOKE.seq_len, rms_norm_eps=SMOKE.rms_eps, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.requires_grad_(False)
    try:
        _quantize(model, dtype, device)
        model.to(device)
        with torch.no_grad():
            model(_batch(torch, torch.Generator().manual_seed(1), device)[:1, :8])
        checks.append(passed("smoke.nf4_base", f"{len(model.model.layers) * 7} projections in bitsandbytes nf4 "
                                               f"(compute {dtype_name}) on {device}"))
    except Exception as exc:
        if gpu:
            return checks + [failed("smoke.nf4_base", f"4-bit base weights failed: {one_line(exc)}")], info
        checks.append(skipped("smoke.nf4_base", f"bitsandbytes nf4 unavailable on the CPU ({one_line(exc)}); "
                                                "base weights stay fp32"))
        model = transformers.LlamaForCausalLM(config).to(dtype).to(device)
        model.requires_grad_(False)

    # -- LoRA adapters, gradient checkpointing, project kernels
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                                             target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in trainable)
    switch = KernelSwitch()
    triton_ok = gpu and det.packages.get("triton") is not None
    patched = _patch(model, switch) if triton_ok else 0
    if triton_ok:
        checks.append(passed("smoke.kernels_in_step", f"{patched} modules use Triton RMSNorm/SwiGLU, loss uses "
                                                      "Triton cross-entropy"))
    else:
        checks.append(skipped("smoke.kernels_in_step", "no GPU: PyTorch reference ops instead of Triton kernels"))

    # -- optimizer: AdamW8bit (min_8bit_size lowered so the small LoRA matrices get 8-bit state)
    try:
        import bitsandbytes as bnb  # noqa: PLC0415

        opt = bnb.optim.AdamW8bit(trainable, lr=LR, min_8bit_size=1024)
        probe_param = torch.nn.Parameter(torch.zeros(2048, device=device))
        probe_param.grad = torch.ones_like(probe_param)
        bnb.optim.AdamW8bit([probe_param], lr=LR, min_8bit_size=1024).step()
        optimizer = "bitsandbytes AdamW8bit"
    except Exception as exc:
        if gpu:
            return checks + [failed("smoke.optimizer", f"AdamW8bit failed: {one_line(exc)}")], info
        opt = torch.optim.AdamW(trainable, lr=LR)
        optimizer = "torch AdamW"
        checks.append(skipped("smoke.optimizer", f"AdamW8bit unavailable on the CPU ({one_line(exc)}); "
                                                 "torch AdamW instead"))
    info["optimizer"] = optimizer

    def loss_of(ids):
        logits = model(input_ids=ids, use_cache=False).logits
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        labels = ids[:, 1:].reshape(-1)
        if switch.triton:
            from probe.kernels import cross_entropy  # noqa: PLC0415

            return cross_entropy(flat, labels)
        return torch.nn.functional.cross_entropy(flat.float(), labels)

    gen = torch.Generator().manual_seed(0)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    # CUDA context, cuBLAS and bitsandbytes initialise in an untimed PyTorch-only pass, so the first timed
    # step measures what the Triton cache decides: compiles (cold) or loads (warm)
    # (the optimizer steps with lr 0 here: its state and kernels initialise, the weights stay as they are).
    # Triton's own per-process start-up (hashing its installation, asking ptxas its version) is paid here too:
    # it is the same with a cold or a warm cache, and is reported as triton_startup_s.
    t0 = time.perf_counter()
    loss_of(_batch(torch, gen, device)).backward()
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    for group in opt.param_groups:
        group["lr"] = LR
    opt.zero_grad(set_to_none=True)
    sync()
    info["prepass_s"] = round(time.perf_counter() - t0, 3)
    if triton_ok:
        info["triton_startup_s"] = _triton_startup()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    switch.triton = triton_ok

    from probe import warm  # noqa: PLC0415  (stdlib-level module; triton is imported only inside its functions)

    root = warm.cache_dir()
    losses, times = [], []
    first_events: list[dict[str, Any]] = []
    first_new_files: list[str] = []
    for step in range(steps):
        ids = _batch(torch, gen, device)
        before = warm.snapshot(root) if step == 0 and triton_ok else None
        t0 = time.perf_counter()
        if step == 0 and triton_ok:
            with warm.compile_events() as events:
                loss = loss_of(ids)
                loss.backward()
                opt.step()
                sync()
            first_events = list(events)
        else:
            loss = loss_of(ids)
            loss.backward()
            opt.step()
            sync()
        times.append(time.perf_counter() - t0)
        if before is not None:
            first_new_files = warm.written(before, warm.snapshot(root))
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))

    steady = statistics.median(times[3:]) if len(times) > 4 else statistics.median(times)
    tokens = SMOKE.batch * SMOKE.seq_len
    compiles = sum(1 for e in first_events if not e["cache_hit"])
    info.update(
        losses=[round(v, 4) for v in losses],
        first_step_s=round(times[0], 4),
        steady_step_s=round(steady, 5),
        tokens_per_s=round(tokens / steady, 1),
        peak_memory_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpu else None,
        first_step_triton_compiles=compiles if triton_ok else None,
        first_step_triton_cache_hits=sum(1 for e in first_events if e["cache_hit"]) if triton_ok else None,
        first_step_new_cache_files=len(first_new_files) if triton_ok else None,
        triton_cache_dir=str(root),
    )
    tail = statistics.mean(losses[-3:])
    finite = all(math.isfinite(v) for v in losses)
    numbers = {"first_loss": round(losses[0], 4), "last3_mean": round(tail, 4), "required_drop": LOSS_DROP,
               "drop": round(1 - tail / losses[0], 4) if losses[0] else None}
    if not finite:
        checks.append(failed("smoke.training", f"NaN/inf loss in {steps} steps", **numbers))
    elif tail <= (1 - LOSS_DROP) * losses[0]:
        checks.append(passed("smoke.training", f"loss {losses[0]:.3f} -> {tail:.3f} in {steps} steps "
                                               f"(>= {LOSS_DROP:.0%} drop required), all finite; "
                                               f"{optimizer}, {dtype_name}, {info['device']}", **numbers))
    else:
        checks.append(failed("smoke.training", f"loss did not fall enough: {losses[0]:.3f} -> {tail:.3f} "
                                               f"(needs {LOSS_DROP:.0%})", **numbers))
    if triton_ok:
        checks.append(passed("smoke.first_step", f"first step {times[0]:.3f} s with {compiles} Triton compile(s), "
                                                 f"{len(first_new_files)} new cache file(s); steady {steady * 1e3:.1f} "
                                                 f"ms/step, {tokens / steady:,.0f} tokens/s",
                             first_step_s=info["first_step_s"], compiles=compiles,
                             new_cache_files=len(first_new_files)))
        checks.extend(kernel_tests(torch, dtype))
    else:
        checks.append(skipped("smoke.kernel_tests", "no GPU: the Triton kernels are tested on the GPU only"))
    return checks, info


def kernel_tests(torch, dt) -> list[Check]:
    """Each Triton kernel, forward and backward, in the training dtype the decisions chose (bf16 on
    8.0+, fp16 on 7.x, which has no bf16) against PyTorch in fp32 on the GPU."""
    from probe import kernels as k  # noqa: PLC0415

    out = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    dt_name = str(dt).removeprefix("torch.")

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=gen).to(dt)

    def compare(name, fn, ref, inputs, bound):
        try:
            xs = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
            rs = [t.detach().float().requires_grad_(t.is_floating_point()) if t.is_floating_point() else t
                  for t in inputs]
            y, yr = fn(*xs), ref(*rs)
            grad = torch.randn(y.shape, device="cuda", generator=gen).to(y.dtype) if y.dim() else torch.ones((),
                                                                                                    device="cuda")
            y.backward(grad)
            yr.backward(grad.float())
            errs = {"fwd": (y.float() - yr.float()).abs().max().item() / (yr.float().abs().max().item() + 1e-6)}
            for i, (a, b) in enumerate(zip(xs, rs)):
                if a.grad is not None:
                    errs[f"grad{i}"] = (a.grad.float() - b.grad).abs().max().item() / (b.grad.abs().max().item()
                                                                                       + 1e-6)
        except Exception as exc:
            out.append(failed(name, f"raised {one_line(exc)}"))
            return
        worst = max(errs.values())
        numbers = {key: round(v, 5) for key, v in errs.items()} | {"bound": bound}
        status = passed if worst <= bound else failed
        out.append(status(name, f"{dt_name} fwd+bwd vs PyTorch fp32: worst error {worst:.4f} relative to max (<= {bound})", **numbers))

    compare("kernel.rmsnorm", lambda x, w: k.rmsnorm(x, w, 1e-5),
            lambda x, w: k.rmsnorm_reference(x, w, 1e-5), [rand(512, SMOKE.hidden), rand(SMOKE.hidden)], 0.05)
    compare("kernel.swiglu", k.swiglu, k.swiglu_reference, [rand(512, SMOKE.intermediate),
                                                             rand(512, SMOKE.intermediate)], 0.05)
    labels = torch.randint(0, 5000, (256,), device="cuda", generator=gen)
    labels[::7] = k.IGNORE_INDEX
    compare("kernel.cross_entropy", k.cross_entropy, k.cross_entropy_reference,
            [rand(256, 5000) * 4, labels], 0.02)
    return out
