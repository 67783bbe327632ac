"""TrainArgs: one recipe, from a YAML file + `key=value` overrides + a preset holding the papers' defaults.

The YAML file is the CLI on disk: every key is a TrainArgs field, every override is `field=value` (YAML
syntax for the value). Parsing, overrides and unknown-key errors are slm.recipe's, shared by every verb.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from slm import recipe
from slm.errors import SlmError

# Papers' hyper-parameters (design.md). CPT: LLaMA Pro (Wu et al. 2024, §4.1): batch 1024 × 4096, lr 2e-4,
# cosine, warmup 6 %, weight decay 0.1, grad clip 1.0, only the new blocks train. SFT: LLaMA 2 (Touvron et al.
# 2023, §3.1) / LLaMA Pro-Instruct: batch 128, lr 2e-5, cosine, warmup 3 %, loss only on response tokens,
# all blocks train. AdamW β = (0.9, 0.95), eps 1e-5 and the cosine floor at 10 % of the peak are LLaMA 2's.
PRESETS: dict[str, dict] = {
    "cpt": dict(trainable="expanded", global_batch=1024, seq_len=4096, lr=2e-4, warmup_ratio=0.06,
                weight_decay=0.1, grad_clip=1.0),
    "sft": dict(trainable="full", global_batch=128, seq_len=4096, lr=2e-5, warmup_ratio=0.03,
                weight_decay=0.1, grad_clip=1.0),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainArgs:
    model: str = ""  # HF checkpoint folder to start from (an `slm expand` output for trainable=expanded)
    data: str = ""  # folder written by `slm data prepare`
    out: str = ""  # run folder: checkpoints/, metrics.jsonl, report.html, final/
    preset: str | None = None  # cpt | sft: the papers' defaults, under the recipe's own keys
    trainable: str | list = "expanded"  # expanded (layers recorded by slm expand) | full | lora | [layer indices]
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA alpha (scale = alpha / r)
    lora_targets: list = field(default_factory=lambda: list(LORA_TARGETS))  # module names that get adapters
    lora_layers: str | list = "all"  # all | expanded | [layer indices]: where LoRA adapters go
    seq_len: int = 4096  # tokens per packed sequence
    global_batch: int = 1024  # sequences per optimizer step, over all ranks and accumulation steps
    micro_batch: int = 1  # sequences per forward pass per rank (global_batch / (micro_batch × ranks) = accumulation)
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
    seed: int = 0  # data order, init of new parameters (LoRA), dropout
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    attn: str = "auto"  # auto (flash_attention_2 on CUDA when installed, else sdpa) | sdpa | eager
    activation_checkpointing: bool = False  # recompute each block in backward (less memory, ~30 % more time)
    fsdp: str = "auto"  # auto (FSDP2 when launched by torchrun with > 1 rank) | off
    log_every: int = 1  # steps between metrics lines
    progress: bool = True  # rich progress bar
    report: bool = True  # write report.html at the end
    compile: bool = False  # torch.compile the model (CUDA)
    resume: bool = False  # continue from the newest complete checkpoint in out/checkpoints (full state)
    init: str | None = None  # start from these weights only (a checkpoint or HF folder); fresh optimizer/data
    force: bool = False  # replace an existing run folder (without it, an existing `out` needs resume=true)

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise SlmError(f"unknown preset {self.preset!r}: use one of {sorted(PRESETS)}")
        t = self.trainable
        if isinstance(t, str) and t not in ("expanded", "full", "lora"):
            raise SlmError(f"trainable={t!r}: use expanded, full, lora or a list of layer indices like [0, 5]")
        if isinstance(t, list) and (not t or not all(isinstance(i, int) and i >= 0 for i in t)):
            raise SlmError(f"trainable={t!r}: a layer list must be non-empty non-negative integers")
        if isinstance(self.lora_layers, str) and self.lora_layers not in ("all", "expanded"):
            raise SlmError(f"lora_layers={self.lora_layers!r}: use all, expanded or a list of layer indices")
        for name in ("seq_len", "global_batch", "micro_batch", "lora_r", "lora_alpha", "eval_tokens", "keep_last",
                     "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SlmError(f"{name} must be a positive integer (got {getattr(self, name)!r})")
        for name in ("steps", "tokens", "eval_every", "save_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise SlmError(f"{name} must be an integer ≥ 0 (got {getattr(self, name)!r})")
        if self.global_batch % self.micro_batch:
            raise SlmError(f"global_batch {self.global_batch} is not a multiple of micro_batch {self.micro_batch}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.warmup_ratio < 1:
            raise SlmError("need lr > 0, 0 ≤ min_lr_ratio ≤ 1 and 0 ≤ warmup_ratio < 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise SlmError("weight_decay and grad_clip must be ≥ 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SlmError(f"betas must be two numbers in [0, 1) (got {self.betas})")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise SlmError(f"dtype={self.dtype!r}: use auto, float32 or bfloat16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SlmError(f"device={self.device!r}: use auto, cpu or cuda")
        if self.attn not in ("auto", "sdpa", "eager", "flash_attention_2"):
            raise SlmError(f"attn={self.attn!r}: use auto, sdpa, eager or flash_attention_2")
        if self.fsdp not in ("auto", "off"):
            raise SlmError(f"fsdp={self.fsdp!r}: use auto or off")
        if not isinstance(self.mixture, dict) or not all(isinstance(v, (int, float)) and v >= 0
                                                         for v in self.mixture.values()):
            raise SlmError("mixture must map source names to weights ≥ 0, e.g. {code: 1.5, math: 1.0}")
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise SlmError(f"the recipe needs `{name}`: add `{name}: PATH` to the YAML or `{name}=PATH` on the command line")
        if self.resume and self.init:
            raise SlmError("resume and init are exclusive: --resume continues a run, --init starts a new one from weights")
        if self.resume and self.force:
            raise SlmError("resume and force are exclusive: --force would delete the run being resumed")
        if not self.steps and not self.tokens:
            raise SlmError("the recipe needs `steps` or `tokens`: e.g. steps=200")

    def total_steps(self) -> int:
        return self.steps or -(-self.tokens // (self.global_batch * self.seq_len))

    def to_dict(self) -> dict:
        return asdict(self)


def _preset(data: dict) -> dict:
    """The defaults of the preset the recipe names, under its own keys (an unknown name is refused by TrainArgs)."""
    name = data.get("preset")
    return PRESETS.get(name, {}) if isinstance(name, str) else {}


def load_recipe(path: str | Path | None, overrides: list[str] | None = None, **extra) -> TrainArgs:
    """TrainArgs from a YAML recipe (optional), `key=value` overrides and keyword extras (CLI flags; None
    skipped), over the named preset's defaults: slm.recipe does the parsing for every verb."""
    return recipe.load_recipe(TrainArgs, path, overrides or (), extra=extra, defaults=_preset)
