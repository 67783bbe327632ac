"""What trains: load the model, freeze by the surgery record / a layer list, or wrap with LoRA (peft); FSDP2.

Frozen parameters get requires_grad=False, so autograd never computes their gradients and the optimizer
(built from trainable parameters only) keeps no state for them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from slm.errors import SlmError
from slm.io import load_model, read_config
from slm.spec import spec_from_config

from .args import TrainArgs
from .attention import HF_NAME
from .loss import install_loss_head


def check_model(args: TrainArgs, model_dir: Path) -> dict:
    """Validate the recipe against config.json before any weights are read. Returns the config."""
    cfg = read_config(model_dir)
    n = cfg.get("num_hidden_layers")
    ctx = cfg.get("max_position_embeddings")
    if ctx and args.seq_len > ctx:
        raise SlmError(f"seq_len {args.seq_len} exceeds the model's context {ctx} (max_position_embeddings): "
                       f"use seq_len ≤ {ctx}")
    if "expanded" in (args.trainable, args.lora_layers):
        new = (cfg.get("slm_surgery") or {}).get("new_layers")
        if not new:
            raise SlmError(f"trainable/lora_layers = expanded, but {model_dir}/config.json has no "
                           "`slm_surgery.new_layers` record: run `slm expand` first, or use trainable=full, "
                           "lora or a layer list")
    for layers in (args.trainable, args.lora_layers):
        if isinstance(layers, list) and max(layers) >= n:
            raise SlmError(f"layer list {layers} names layers ≥ the model's {n} layers: use indices "
                           f"0..{n - 1}")
    return cfg


def trainable_layers(args: TrainArgs, cfg: dict) -> list[int]:
    """Decoder layers whose weights change (for LoRA: those with adapters)."""
    n = spec_from_config(cfg).layers
    sel = args.lora_layers if args.trainable == "lora" else args.trainable
    if sel in ("full", "all"):
        return list(range(n))
    if sel == "expanded":
        return sorted(cfg["slm_surgery"]["new_layers"])
    return sorted(sel)


def build_model(args: TrainArgs, model_dir: Path, cfg: dict, device: torch.device, attn: str, loss: str):
    """The HF model on `device` with requires_grad set per the recipe (LoRA-wrapped when trainable=lora),
    attention `attn` (train/attention.py) and, unless loss=plain, the LM head swapped for a LossHead
    (train/loss.py). Returns (model, LossHead or None)."""
    model = load_model(model_dir, "float32", attn_implementation=HF_NAME[attn])
    model.config.use_cache = False
    head = install_loss_head(model, loss)
    layers = trainable_layers(args, cfg)
    if args.trainable == "lora":
        model = _lora(args, model, layers)
    elif args.trainable == "full":
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        for i in layers:
            decoder_layers(model)[i].requires_grad_(True)
    if args.activation_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so frozen blocks below the lowest
        # trainable one run forward only (no input gradient) and are not checkpointed: nothing there is
        # recomputed.
        hf_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in decoder_layers(model)[:min(layers)]:
            layer.gradient_checkpointing = False
    return model.to(device), head


def _lora(args: TrainArgs, model, layers: list[int]):
    try:
        from peft import LoraConfig, get_peft_model  # peft is optional: imported only when used
    except ImportError:
        raise SlmError("trainable=lora needs peft: `pip install peft`") from None
    torch.manual_seed(args.seed)  # LoRA's A matrices are random: same seed, same run
    lc = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=list(args.lora_targets),
                    lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                    layers_to_transform=None if args.lora_layers == "all" else layers)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` attribute (a FutureWarning per run,
        # peft's code, not a setting of ours)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, lc)


def compile_blocks(model, backend: str = "inductor") -> None:
    """Regional compilation: torch.compile each decoder block in place (PyTorch tutorial "Reducing
    torch.compile cold start compilation time with regional compilation"): identical blocks share one graph
    (parameters are graph inputs, not constants), so compile time is one block's, and module names (state
    dicts, checkpoints) are unchanged. Dynamo skips FSDP2's hooks by default."""
    import torch._dynamo  # torch: deferred, a heavy import

    # one graph per kind of block: (input needs grad, weights need grad) in training, × evaluation (no grad,
    # the dense mask): up to 8 — dynamo's default recompile limit, past which blocks silently run eager
    cfg = torch._dynamo.config
    # renamed in torch 2.7
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 16))
    for layer in decoder_layers(model):
        layer.compile(backend=backend, dynamic=False)


def wants_compile(args: TrainArgs, device: torch.device) -> bool:
    """compile=auto: on for CUDA, off for CPU (the compile time is not repaid on CPU)."""
    return device.type == "cuda" if args.compile == "auto" else bool(args.compile)


def hf_model(model):
    """The plain transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> torch.nn.ModuleList:
    return hf_model(model).model.layers


def shard_fsdp2(model, device: torch.device, bf16: bool) -> None:
    """FSDP2: `fully_shard` each decoder layer, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # torch: deferred, a heavy import

    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def param_groups(model, weight_decay: float) -> list[dict]:
    """Trainable parameters only; no weight decay on norms and biases (1-D), as in nanoGPT / LLaMA."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise SlmError("nothing to train: the selected layers/adapters have no parameters")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def merged_state_dict(sd: dict, model) -> dict:
    """A full state dict with HF names: LoRA adapters folded into their base weights (W + B·A·alpha/r),
    written by hand because peft's merge_and_unload changes the live model (and so the bits of a resumed
    run)."""
    if not hasattr(model, "peft_config"):
        return sd
    cfg = model.peft_config["default"]
    scale = cfg.lora_alpha / cfg.r
    out = {}
    for k, v in sd.items():
        if ".lora_" in k:
            continue
        name = k.removeprefix("base_model.model.")
        if ".base_layer." in k:
            prefix = k.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
            if k.endswith(".weight"):
                a, b = sd[f"{prefix}.lora_A.default.weight"], sd[f"{prefix}.lora_B.default.weight"]
                v = v + (b.float() @ a.float()).to(v.dtype) * scale
        out[name] = v
    return out
