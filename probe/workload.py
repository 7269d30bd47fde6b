"""Unsloth as the gate's workload: the declared model shapes, a local random model of one, and an Unsloth QLoRA
run on it that counts Triton compiles (`python -m probe workload`).

Standard library only at import; torch, transformers and unsloth are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SHAPES_FILE = Path(__file__).with_name("workload_shapes.json")
ACTS = ("swiglu", "geglu")
# what the image side must install next to unsloth; reported (name -> installed version) by the CPU checks
PACKAGES = ("unsloth", "unsloth_zoo", "torch", "triton", "transformers", "peft", "trl", "accelerate", "datasets",
            "bitsandbytes", "torchao", "cut_cross_entropy", "tyro", "xformers")
# model family by name prefix: decides the transformers class of the local model (and Gemma's norm, Qwen3's q/k norm)
FAMILIES = (("qwen3", "qwen3"), ("qwen2", "qwen2"), ("gemma-3", "gemma3_text"), ("gemma3", "gemma3_text"),
            ("gemma-2", "gemma2"), ("gemma2", "gemma2"), ("gemma", "gemma"), ("mistral", "mistral"))


class ShapesError(ValueError):
    """The shapes file is unusable: one line naming the file and the entry."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    act: str  # swiglu | geglu

    @property
    def family(self) -> str:
        low = self.name.lower()
        for prefix, family in FAMILIES:
            if low.startswith(prefix):
                return family
        return "gemma" if self.act == "geglu" else "llama"

    @property
    def gemma_norm(self) -> bool:
        """Gemma's RMSNorm scales by (1 + w): Unsloth's kernels take GEMMA=True."""
        return self.family.startswith("gemma")

    @property
    def qk_norm(self) -> bool:
        """Qwen3 and Gemma 3 normalise q and k per head (an RMSNorm of width head_dim)."""
        return self.family in ("qwen3", "gemma3_text")


_INT_FIELDS = ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")
_LIMITS = {"hidden": 1 << 16, "intermediate": 1 << 18, "heads": 1024, "kv_heads": 1024, "head_dim": 1024,
           "vocab": 1 << 21}


def load_shapes(path: Path | None = None) -> list[ModelShape]:
    """Read and check the shapes file; hostile input raises ShapesError with one line."""
    path = Path(path or SHAPES_FILE)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ShapesError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ShapesError(f"{path}: not JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list) or not doc["shapes"]:
        raise ShapesError(f"{path}: expected an object with a non-empty list 'shapes'")
    extra = set(doc) - {"generated_from", "shapes"}
    if extra:
        raise ShapesError(f"{path}: unknown top-level key {sorted(extra)[0]!r}")
    names = [f.name for f in fields(ModelShape)]
    shapes: list[ModelShape] = []
    for i, entry in enumerate(doc["shapes"]):
        where = f"{path}: shapes[{i}]"
        if not isinstance(entry, dict):
            raise ShapesError(f"{where}: not an object")
        where = f"{path}: shapes[{i}] ({str(entry.get('name'))[:40]!r})"
        missing = [n for n in names if n not in entry]
        unknown = sorted(set(entry) - set(names))
        if missing or unknown:
            raise ShapesError(f"{where}: " + (f"missing {missing[0]!r}" if missing else f"unknown key {unknown[0]!r}"))
        name = entry["name"]
        if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
            raise ShapesError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
        for key in _INT_FIELDS:
            value = entry[key]
            if type(value) is not int or not 1 <= value <= _LIMITS[key]:
                raise ShapesError(f"{where}: {key} must be an integer from 1 to {_LIMITS[key]}, got {value!r}")
        eps = entry["rms_eps"]
        if type(eps) not in (int, float) or not math.isfinite(eps) or not 0 < eps < 0.1:
            raise ShapesError(f"{where}: rms_eps must be a number in (0, 0.1), got {eps!r}")
        if entry["act"] not in ACTS:
            raise ShapesError(f"{where}: act must be one of {', '.join(ACTS)}, got {entry['act']!r}")
        if entry["heads"] % entry["kv_heads"]:
            raise ShapesError(f"{where}: heads ({entry['heads']}) must be a multiple of kv_heads ({entry['kv_heads']})")
        if entry["head_dim"] % 2:
            raise ShapesError(f"{where}: head_dim must be even (RoPE rotates halves)")
        if any(s.name == name for s in shapes):
            raise ShapesError(f"{where}: duplicate name")
        shapes.append(ModelShape(**{k: entry[k] for k in names} | {"rms_eps": float(eps)}))
    return shapes


def pick(shapes: list[ModelShape], wanted: list[str]) -> list[ModelShape]:
    by_name = {s.name: s for s in shapes}
    for name in wanted:
        if name not in by_name:
            raise ShapesError(f"--shape: no shape {name!r} (declared: {', '.join(by_name)})")
    return [by_name[n] for n in wanted] if wanted else shapes


def versions() -> dict[str, str | None]:
    from importlib import metadata  # noqa: PLC0415

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------ local model


def make_local_model(shape: ModelShape, out: Path, layers: int = 2) -> Path:
    """A random-weight model of the shape (real widths and vocab, `layers` layers) and a word-level tokenizer
    (`w4`..`w<vocab-1>`), saved in out; no hub access."""
    import torch  # noqa: PLC0415
    from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: PLC0415

    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, shape.vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=4096, padding_side="right")
    fast.save_pretrained(tmp)
    kwargs: dict[str, Any] = {
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate, "num_hidden_layers": layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim,
        "vocab_size": shape.vocab, "rms_norm_eps": shape.rms_eps, "max_position_embeddings": 4096,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": shape.gemma_norm}
    if shape.act == "geglu":
        kwargs["hidden_activation"] = "gelu_pytorch_tanh"
    else:
        kwargs["hidden_act"] = "silu"
    if shape.family in ("gemma2", "gemma3_text"):
        kwargs["query_pre_attn_scalar"] = shape.head_dim
    config = AutoConfig.for_model(shape.family if shape.family != "mistral" else "mistral", **kwargs)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------------ the QLoRA run


def qlora_run(shape: ModelShape, model_dir: Path, steps: int = 10, seq: int = 1024, batch: int = 2) -> dict[str, Any]:
    """Unsloth QLoRA as its users run it (4-bit, LoRA r=16 on all 7 projections, gradient checkpointing
    "unsloth", trl SFTTrainer + adamw_8bit), `steps` steps over texts of varying length; every Triton compile
    (cache miss) and cache hit counted per phase. Call in a fresh process: Unsloth must be imported first."""
    import random  # noqa: PLC0415

    from probe.warm import snapshot, written  # noqa: PLC0415

    result: dict[str, Any] = {"shape": shape.name, "steps": steps, "phases": [], "compiled": []}
    with _compile_events() as events:
        clock = {"t": time.perf_counter(), "n": 0}

        def mark(phase: str, **extra: Any) -> None:
            import torch  # noqa: PLC0415

            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            now = time.perf_counter()
            new = events[int(clock["n"]):]
            misses = [e for e in new if not e["cache_hit"]]
            result["phases"].append({"phase": phase, "seconds": round(now - clock["t"], 3), "compiles": len(misses),
                                     "cache_hits": len(new) - len(misses), **extra})
            result["compiled"] += [{"phase": phase, **e} for e in misses]
            clock.update(t=now, n=len(events))

        t0 = time.perf_counter()
        import torch  # noqa: PLC0415
        from unsloth import FastLanguageModel  # noqa: PLC0415  (first, as Unsloth asks)

        result["import_unsloth_s"] = round(time.perf_counter() - t0, 3)
        mark("import_unsloth")
        result["gpu"] = torch.cuda.get_device_name(0)
        make_local_model(shape, model_dir)
        mark("make_model")
        model, tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=seq,
                                                             load_in_4bit=True, dtype=None)
        mark("load")
        model = FastLanguageModel.get_peft_model(
            model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing="unsloth", random_state=3407, max_seq_length=seq)
        mark("get_peft_model")

        from datasets import Dataset  # noqa: PLC0415
        from transformers import TrainerCallback  # noqa: PLC0415
        from trl import SFTConfig, SFTTrainer  # noqa: PLC0415

        rng = random.Random(1234)  # the same texts in every run: a second run repeats the first exactly
        texts = [" ".join(f"w{rng.randrange(4, shape.vocab)}" for _ in range(rng.randrange(seq // 4, seq - 8)))
                 for _ in range(batch * steps)]

        class StepMarks(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                mark(f"step{state.global_step}")

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    result.setdefault("losses", []).append(round(float(logs["loss"]), 4))

        bf16 = torch.cuda.is_bf16_supported()
        cfg = SFTConfig(output_dir=str(model_dir.parent / "sft-out"), per_device_train_batch_size=batch,
                        gradient_accumulation_steps=1, max_steps=steps, learning_rate=2e-4, warmup_steps=0,
                        logging_steps=1, optim="adamw_8bit", weight_decay=0.0, lr_scheduler_type="linear",
                        seed=3407, report_to="none", save_strategy="no", dataset_text_field="text", max_length=seq,
                        packing=False, dataset_num_proc=1, bf16=bf16, fp16=not bf16)
        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_dict({"text": texts}),
                             args=cfg, callbacks=[StepMarks()])
        mark("trainer_init")
        cache = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
        before = snapshot(cache)
        trainer.train()
        result["triton_cache_files_written"] = len(written(before, snapshot(cache)))
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    steps_ = [p for p in result["phases"] if p["phase"].startswith("step")]
    result["first_step_s"] = steps_[0]["seconds"] if steps_ else None
    result["later_step_s"] = round(sorted(p["seconds"] for p in steps_[1:])[len(steps_[1:]) // 2], 3) if len(steps_) > 1 else None
    result["step_compiles"] = sum(p["compiles"] for p in steps_)
    result["total_compiles"] = sum(p["compiles"] for p in result["phases"])
    result["compiled_names"] = sorted({e["name"] for e in result["compiled"]})
    return result


@contextlib.contextmanager
def _compile_events() -> Iterator[list[dict[str, Any]]]:
    """Every Triton compile or cache lookup (knobs.compilation.listener), with the specialisation of a miss."""
    from triton import knobs  # noqa: PLC0415

    events: list[dict[str, Any]] = []

    def listener(*, src, metadata, metadata_group, times, cache_hit, **_):
        event = {"name": metadata.get("name"), "cache_hit": bool(cache_hit)}
        if not cache_hit:
            event["num_warps"] = metadata.get("num_warps")
            for attr in ("constants", "attrs"):
                event[attr] = repr(getattr(src, attr, None))[:1500]
        events.append(event)

    previous = knobs.compilation.listener
    knobs.compilation.listener = listener
    try:
        yield events
    finally:
        knobs.compilation.listener = previous


def run_one(argv: list[str]) -> int:
    """`python -m probe.workload SHAPE_NAME MODEL_DIR STEPS [SHAPES_FILE]`: one run in this fresh process,
    its result as one JSON line on stdout (prefixed), for the parent to collect."""
    name, model_dir, steps = argv[0], Path(argv[1]), int(argv[2])
    shape = pick(load_shapes(Path(argv[3]) if len(argv) > 3 else None), [name])[0]
    try:
        result = qlora_run(shape, model_dir, steps)
    except Exception as exc:  # one line back to the parent
        from probe.results import one_line  # noqa: PLC0415

        result = {"shape": name, "error": one_line(exc)}
    print("WORKLOAD-RESULT " + json.dumps(result, default=str), flush=True)
    return 0 if "error" not in result else 1


def asdict_shape(shape: ModelShape) -> dict[str, Any]:
    return asdict(shape) | {"family": shape.family}


if __name__ == "__main__":
    sys.exit(run_one(sys.argv[1:]))
