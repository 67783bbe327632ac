"""TrainArgs: one recipe, from a YAML file + `key=value` overrides + a preset holding the papers' defaults.

The YAML file is the CLI on disk: every key is a TrainArgs field, every override is `field=value` (YAML
syntax for the value). Parsing, overrides and unknown-key errors are slm.recipe's, shared by every verb.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slm import recipe
from slm.errors import SlmError

from .track import require as require_tracker

# Papers' hyper-parameters. CPT: LLaMA Pro (Wu et al. 2024, §4.1): batch 1024 × 4096, lr 2e-4, cosine, warmup
# 6 %, weight decay 0.1, grad clip 1.0, only the new blocks train. SFT: LLaMA 2 (Touvron et al. 2023, §3.1) /
# LLaMA Pro-Instruct: batch 128, lr 2e-5, cosine, warmup 3 %, loss only on response tokens, all blocks train.
# AdamW β = (0.9, 0.95), eps 1e-5 and the cosine floor at 10 % of the peak are LLaMA 2's.
PRESETS: dict[str, dict] = {
    "cpt": dict(trainable="expanded", global_batch=1024, seq_len=4096, lr=2e-4, warmup_ratio=0.06,
                weight_decay=0.1, grad_clip=1.0),
    "sft": dict(trainable="full", global_batch=128, seq_len=4096, lr=2e-5, warmup_ratio=0.03,
                weight_decay=0.1, grad_clip=1.0),
}
# Whole-number fields and their least value.
WHOLE_MIN = {"seq_len": 1, "global_batch": 1, "micro_batch": 1, "lora_r": 1, "lora_alpha": 1,
             "eval_tokens": 1, "keep_last": 1, "log_every": 1, "steps": 0, "tokens": 0, "eval_every": 0,
             "save_every": 0, "seed": 0}
# Real-valued fields: (low, high, low allowed, high allowed).
REAL_RANGE = {"lr": (0, math.inf, False, False), "eps": (0, math.inf, False, False),
              "min_lr_ratio": (0, 1, True, True), "warmup_ratio": (0, 1, True, True),
              "weight_decay": (0, math.inf, True, False), "grad_clip": (0, math.inf, True, False)}
BOOLS = ("eval", "progress", "report", "resume", "force", "activation_checkpointing", "keep_state")
# Fields naming one of a few things (`compile` also takes true/false).
CHOICES = {"dtype": ("auto", "float32", "bfloat16"), "device": ("auto", "cpu", "cuda"),
           "attn": ("auto", "flex", "flash", "sdpa", "eager"), "loss": ("auto", "chunked", "plain", "liger"),
           "compile": ("auto", True, False), "fsdp": ("auto", True, False)}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainArgs:
    model: str = ""  # HF checkpoint folder to start from (an `slm expand` output for trainable=expanded)
    data: str = ""  # folder written by `slm data prepare`
    out: str = ""  # run folder: checkpoints/, metrics.jsonl, report.html, final/
    preset: str | None = None  # cpt | sft: the papers' defaults, under the recipe's own keys
    # expanded (layers recorded by slm expand) | full | lora | [layer indices]
    trainable: str | list = "expanded"
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA alpha (scale = alpha / r)
    lora_targets: list = field(default_factory=lambda: list(LORA_TARGETS))  # module names that get adapters
    lora_layers: str | list = "all"  # all | expanded | [layer indices]: where LoRA adapters go
    seq_len: int = 4096  # tokens per packed sequence
    global_batch: int = 1024  # sequences per optimizer step, over all ranks and accumulation steps
    # sequences per forward pass per rank (global_batch / (micro_batch × ranks) = accumulation)
    micro_batch: int = 1
    steps: int = 0  # optimizer steps (or set `tokens`)
    tokens: int = 0  # training tokens; steps = ceil(tokens / (global_batch × seq_len)) when steps is 0
    lr: float = 2e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr (LLaMA 2: 10 %)
    warmup_ratio: float = 0.06  # linear warm-up, fraction of steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not on norms/biases)
    betas: list = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas (LLaMA 2)
    eps: float = 1e-5  # AdamW epsilon (LLaMA 2)
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    mixture: dict = field(default_factory=dict)  # per-source weight overrides {name: weight}; default: data's
    eval_every: int = 0  # steps between held-out evaluations (0 = only at the start and the end)
    eval: bool = True  # evaluate held-out sets at the start, every eval_every steps and at the end
    eval_tokens: int = 16384  # tokens per held-out set per evaluation
    eval_sets: list = field(default_factory=list)  # held-out sets to evaluate (default: all sources)
    save_every: int = 0  # steps between checkpoints (0 = only at the end)
    keep_last: int = 2  # complete checkpoints kept (older ones deleted)
    # a finished run keeps its checkpoints (optimizer, schedule, RNG: --resume with more steps goes on from
    # them); false leaves only final/, saving the AdamW state (~3x the trainable weights' bytes)
    keep_state: bool = True
    seed: int = 0  # data order, init of new parameters (LoRA), dropout
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    # auto (CUDA: flash with flash-attn installed, else flex; CPU: sdpa) | flex | flash | sdpa | eager
    attn: str = "auto"
    # auto (liger on CUDA when installed, else chunked) | chunked (LM head + CE by token chunks)
    # | plain | liger
    loss: str = "auto"
    activation_checkpointing: bool = False  # recompute each block in backward (less memory, ~30 % more time)
    fsdp: str | bool = "auto"  # auto (FSDP2 when torchrun starts > 1 rank) | on (FSDP2 also for 1 rank) | off
    log_every: int = 1  # steps between metrics lines
    # none | tensorboard (run/tensorboard) | wandb (offline unless set up): mirrors metrics.jsonl as it grows
    report_to: str = "none"
    progress: bool = True  # rich progress bar
    report: bool = True  # write report.html at the end
    # auto (on for CUDA, off for CPU) | true | false: torch.compile per decoder block
    compile: str | bool = "auto"
    resume: bool = False  # continue from the newest complete checkpoint in out/checkpoints (full state)
    init: str | None = None  # start from these weights only (a checkpoint or HF folder); fresh optimizer/data
    force: bool = False  # replace an existing run folder (without it, an existing `out` needs resume=true)

    def __post_init__(self):
        self._check_choices()
        self._check_numbers()
        require_tracker(self.report_to)
        for name in ("model", "data", "out"):
            if not getattr(self, name) or not isinstance(getattr(self, name), str):
                raise SlmError(f"the recipe needs `{name}`: add `{name}: PATH` to the YAML or `{name}=PATH` "
                               "on the command line")
        if self.resume and self.init:
            raise SlmError("resume and init are exclusive: --resume continues a run, --init starts a new one "
                           "from weights")
        if self.resume and self.force:
            raise SlmError("resume and force are exclusive: --force would delete the run being resumed")
        if not self.steps and not self.tokens:
            raise SlmError("the recipe needs `steps` or `tokens`: e.g. steps=200")

    def _check_choices(self) -> None:
        """Fields that name one of a few things, and the on/off switches."""
        self.fsdp = ({"on": True, "off": False}.get(self.fsdp, self.fsdp) if isinstance(self.fsdp, str)
                     else self.fsdp)
        if self.preset is not None and self.preset not in PRESETS:
            raise SlmError(f"unknown preset {self.preset!r}: use one of {sorted(PRESETS)}")
        t = self.trainable
        if isinstance(t, str) and t not in ("expanded", "full", "lora"):
            raise SlmError(f"trainable={t!r}: use expanded, full, lora or a list of layer indices like "
                           "[0, 5]")
        for name, layers in (("trainable", t), ("lora_layers", self.lora_layers)):
            if isinstance(layers, list) and (not layers or not all(_whole(i) and i >= 0 for i in layers)):
                raise SlmError(f"{name}={layers!r}: a layer list must be non-empty non-negative integers")
            if not isinstance(layers, (str, list)):
                raise SlmError(f"{name}={layers!r}: use a word (expanded, full, lora, all) or a list of "
                               "layer indices")
        if isinstance(self.lora_layers, str) and self.lora_layers not in ("all", "expanded"):
            raise SlmError(f"lora_layers={self.lora_layers!r}: use all, expanded or a list of layer indices")
        for name, allowed in CHOICES.items():
            v = getattr(self, name)
            if not any(v is a or (isinstance(a, str) and v == a) for a in allowed):
                raise SlmError(f"{name}={v!r}: use {', '.join(str(a).lower() for a in allowed)}")
        for name in BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise SlmError(f"{name}={getattr(self, name)!r}: use true or false")

    def _check_numbers(self) -> None:
        """Every number finite and in its range, whole where it counts something: a bad value is refused here,
        before any folder exists, rather than by torch mid-run (eps=-1) or by silent truncation
        (steps=2.9)."""
        for name, low in WHOLE_MIN.items():
            v = getattr(self, name)
            if not _whole(v) or v < low:
                raise SlmError(f"{name} must be a whole number ≥ {low} (got {v!r})")
        for name, interval in REAL_RANGE.items():
            _check_real(name, getattr(self, name), *interval)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise SlmError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.95] (got {self.betas!r})")
        for i, b in enumerate(self.betas):
            _check_real(f"betas[{i}]", b, 0, 1, True, False, "betas=[0.9, 0.95]")
        if self.global_batch % self.micro_batch:
            raise SlmError(f"global_batch {self.global_batch} is not a multiple of micro_batch "
                           f"{self.micro_batch}")
        if not isinstance(self.mixture, dict) or not all(_real(v) and v >= 0 for v in self.mixture.values()):
            raise SlmError("mixture must map source names to finite weights ≥ 0, e.g. {code: 1.5, math: 1.0}")

    def total_steps(self) -> int:
        return self.steps or -(-self.tokens // (self.global_batch * self.seq_len))

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_real(name: str, v, low: float, high: float, low_in: bool, high_in: bool, hint: str = "") -> None:
    """Refuse a `v` that is not a finite number in the interval; the message prints the interval."""
    if _real(v) and (low <= v if low_in else low < v) and (v <= high if high_in else v < high):
        return
    interval = f"{'[' if low_in else '('}{low}, {'∞' if high == math.inf else high}{']' if high_in else ')'}"
    raise SlmError(f"{name} must be a finite number in {interval} (got {v!r}): e.g. "
                   f"{hint or f'{name}={_EXAMPLE.get(name, 0.5)}'}")


_EXAMPLE = {"lr": 2e-4, "eps": 1e-5, "weight_decay": 0.1, "grad_clip": 1.0, "min_lr_ratio": 0.1,
            "warmup_ratio": 0.06}


def _preset(data: dict) -> dict:
    """The defaults of the preset the recipe names, under its own keys (an unknown name is refused by
    TrainArgs)."""
    name = data.get("preset")
    return PRESETS.get(name, {}) if isinstance(name, str) else {}


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, **extra) -> TrainArgs:
    """TrainArgs from a YAML recipe (optional), `key=value` overrides and keyword extras (CLI flags; None
    skipped), over the named preset's defaults: slm.recipe does the parsing for every verb."""
    return recipe.load_recipe(TrainArgs, path, overrides or (), extra=extra, defaults=_preset,
                              models=("model", "init"))
