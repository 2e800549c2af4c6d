"""Training: AdamW with linear warmup and cosine decay, metrics, checkpoints, resume, DDP.

``train(model_config, task, train_config, out)`` trains ``GPT(model_config)`` on ``task`` and
writes into ``out/``:

- ``metrics.jsonl``: one JSON object per line; training lines ``{"step", "loss", "accuracy",
  "lr", "tokens_per_s", "elapsed_s"}`` every ``log_every`` steps and evaluation lines
  ``{"step", "test_loss", "test_accuracy"}`` every ``eval_every`` steps and at the end;
- ``checkpoint/``: the latest checkpoint (:mod:`models.checkpoint`), every ``ckpt_every``
  steps and at the end.

Determinism: on CPU a run is a function of its seed. The model is initialised after
``torch.manual_seed(seed)``; batches come from a dedicated generator seeded with ``seed``; the
test set from a generator seeded with :data:`EVAL_SEED`, so evaluating draws nothing from the
training streams. A checkpoint stores the optimizer, the scheduler, both RNG states and the step,
so ``resume=True`` continues a killed run and ends with the weights an uninterrupted run ends
with (tested bit for bit by killing a training subprocess).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, nccl on CUDA). Every process draws
the same global batch of ``batch_size`` and trains on its shard ``[rank::world]``, so the
averaged gradient is that of the whole batch and the run follows the single-process one up to
floating-point reassociation; rank 0 alone logs, evaluates and saves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flowgraph.models.checkpoint import (
    find_checkpoint,
    load_model_state,
    read_checkpoint,
    save_checkpoint,
)
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.tasks import EVAL_SEED, IGNORE, SortTask, heldout_batches, make_task

__all__ = ["EVAL_SEED", "TrainConfig", "evaluate", "load_model", "lr_at", "train", "train_demo"]

NO_DECAY = ("m_packed_hl", "s_hkk")  # decaying a metric pulls it to 0, not to the identity


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64  # the global batch; each of W DDP processes trains on batch_size / W
    lr: float = 3e-3
    min_lr: float = 3e-4  # the cosine decays to this at the last step
    warmup: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    eval_size: int = 1024  # held-out sequences per evaluation
    ckpt_every: int = 250

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_size", "ckpt_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int ≥ 1, got {name}={value!r}")
        for name in ("warmup", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int ≥ 0, got {name}={value!r}")
        if self.seed >= 2**64:
            raise ValueError(f"seed must be below 2**64 (a torch seed), got seed={self.seed}")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be in 0..steps={self.steps}, got {self.warmup}")
        for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {name}={value!r}")
        if not 0 < self.min_lr <= self.lr < math.inf:
            raise ValueError(f"need 0 < min_lr ≤ lr < inf, got min_lr={self.min_lr}, lr={self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be finite and ≥ 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {name}={getattr(self, name)}")
        if not self.grad_clip > 0:  # inf: no clipping
            raise ValueError(f"grad_clip must be > 0 (inf: no clipping), got {self.grad_clip}")


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate of update ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.endswith(NO_DECAY):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def _loss_and_hits(logits_btv: torch.Tensor, y_bt: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    loss = F.cross_entropy(logits_btv.flatten(0, 1), y_bt.flatten(), ignore_index=IGNORE)
    counted = y_bt != IGNORE
    hits = int((logits_btv.argmax(-1) == y_bt)[counted].sum())
    return loss, hits, int(counted.sum())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, task: Any, *, size: int = 1024, batch_size: int = 256
) -> tuple[float, float]:
    """(mean loss, token accuracy) over ``size`` held-out examples of ``task`` (teacher
    forcing; the same examples every call)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss = total_hits = total_count = 0.0
    for x_bt, y_bt in heldout_batches(task, size, batch_size):
        x_bt, y_bt = x_bt.to(device), y_bt.to(device)
        loss, hits, count = _loss_and_hits(model(x_bt), y_bt)
        total_loss += float(loss) * count
        total_hits += hits
        total_count += count
    model.train(was_training)
    return total_loss / total_count, total_hits / total_count


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world) — and the process group set up when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world


def _run_config(model_config: GPTConfig, task: Any, config: TrainConfig) -> dict[str, Any]:
    return {
        "model": model_config.to_dict(),
        "task": {"name": task.name, **task.options()},
        "train": dataclasses.asdict(config),
    }


def _mismatch(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    out = []
    for part in ("model", "task", "train"):
        for key in sorted(set(saved[part]) | set(given[part])):
            if saved[part].get(key) != given[part].get(key):
                out.append(
                    f"{part}.{key}: saved {saved[part].get(key)!r}, given {given[part].get(key)!r}"
                )
    return out


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the lines a killed run wrote after its last checkpoint (they are written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by the kill
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def train(
    model_config: GPTConfig,
    task: Any,
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train and return ``{"step", "test_loss", "test_accuracy", "tokens_per_s", "resumed_from",
    "out"}``. With ``resume=True`` an existing ``out/checkpoint`` is continued (its settings must
    equal the given ones); without one the run starts from step 0.
    """
    out = Path(out)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch.cuda.is_available() is False; use cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got device={device!r}")
    rank, world = _distributed(device)
    if config.batch_size % world:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of the {world} processes"
        )
    if model_config.vocab_size != task.vocab_size or model_config.n_ctx != task.n_ctx:
        raise ValueError(
            f"model has vocab_size={model_config.vocab_size}, n_ctx={model_config.n_ctx}; "
            f"task {task.name!r} needs vocab_size={task.vocab_size}, n_ctx={task.n_ctx}"
        )
    run_config = _run_config(model_config, task, config)
    ckpt_dir = out / "checkpoint"
    metrics_path = out / "metrics.jsonl"

    torch.manual_seed(config.seed)
    model = GPT(model_config).to(device)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, config) / config.lr
    )
    data_gen = torch.Generator().manual_seed(config.seed)
    start = 0
    if resume and find_checkpoint(ckpt_dir) is not None:
        ckpt = read_checkpoint(ckpt_dir, map_location=device)
        saved = {k: ckpt.config[k] for k in ("model", "task", "train")}
        diff = _mismatch(saved, json.loads(json.dumps(run_config)))
        if diff:
            raise ValueError(
                f"--resume: {ckpt_dir} was written with other settings: " + "; ".join(diff)
            )
        if ckpt.trainer_state is None:
            raise ValueError(f"--resume: {ckpt_dir} holds no trainer state (trainer.pt)")
        load_model_state(model, ckpt.model_state)
        state = ckpt.trainer_state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.startswith("cuda") and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start = int(state["step"])
    if rank == 0:  # the log describes this run only: lines past its checkpoint are dropped
        _trim_metrics(metrics_path, start)

    net: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    def save(step: int) -> None:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "data_rng": data_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
        }
        if device.startswith("cuda"):
            trainer_state["cuda_rng"] = torch.cuda.get_rng_state()
        save_checkpoint(
            ckpt_dir,
            config={**run_config, "step": step},
            model_state=model.state_dict(),
            trainer_state=trainer_state,
        )

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc=out.name, unit="step", leave=True)
    log = open(metrics_path, "a", encoding="utf-8") if rank == 0 else None
    tokens_per_s = 0.0
    try:
        model.train()
        window_t, window_tokens = time.perf_counter(), 0
        began = time.perf_counter()
        for step in range(start, config.steps):
            x_bt, y_bt = task.batch("train", config.batch_size, data_gen)
            x_bt, y_bt = x_bt[rank::world].to(device), y_bt[rank::world].to(device)
            loss, hits, count = _loss_and_hits(net(x_bt), y_bt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            window_tokens += x_bt.numel() * world
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                if world > 1:
                    import torch.distributed as dist

                    stats = torch.tensor([loss.item() * count, hits, count], dtype=torch.float64)
                    dist.all_reduce(stats)
                    loss_value, accuracy = float(stats[0] / stats[2]), float(stats[1] / stats[2])
                else:
                    loss_value, accuracy = loss.item(), hits / max(count, 1)
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                line = {
                    "step": done,
                    "loss": loss_value,
                    "accuracy": accuracy,
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_s,
                    "elapsed_s": now - began,
                }
                if log is not None:
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{loss_value:.4f}", acc=f"{accuracy:.3f}", tok_s=f"{tokens_per_s:.0f}"
                    )
            if rank == 0 and (done % config.eval_every == 0 or done == config.steps):
                test_loss, test_accuracy = evaluate(model, task, size=config.eval_size)
                assert log is not None
                log.write(
                    json.dumps(
                        {"step": done, "test_loss": test_loss, "test_accuracy": test_accuracy}
                    )
                    + "\n"
                )
                log.flush()
            if rank == 0 and (done % config.ckpt_every == 0 or done == config.steps):
                save(done)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    test_loss, test_accuracy = evaluate(model, task, size=config.eval_size)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every process is done before rank 0 reports and the group goes
        dist.destroy_process_group()
    return {
        "out": str(out),
        "step": config.steps,
        "resumed_from": start,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "tokens_per_s": tokens_per_s,
        "model": model,
    }


def load_model(path: str | Path, *, map_location: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The trained GPT of a run folder (``runs/NAME``) or checkpoint directory, in eval mode,
    and the checkpoint's config (``{"model", "task", "train", "step"}``)."""
    path = Path(path)
    if find_checkpoint(path / "checkpoint") is not None:
        path = path / "checkpoint"
    ckpt = read_checkpoint(path, map_location=map_location)
    model = GPT(GPTConfig.from_dict(ckpt.config["model"])).to(map_location)
    load_model_state(model, ckpt.model_state)
    return model.eval(), ckpt.config


def run_from_args(
    *,
    task: str,
    task_options: dict[str, Any],
    model_options: dict[str, Any],
    train_config: TrainConfig,
    out: str | Path,
    resume: bool,
    device: str,
    progress: bool,
) -> dict[str, Any]:
    """Build the task and the model config (vocab_size and n_ctx from the task) and train."""
    built = make_task(task, **task_options)
    model_config = GPTConfig(vocab_size=built.vocab_size, n_ctx=built.n_ctx, **model_options)
    return train(
        model_config, built, train_config, out, resume=resume, device=device, progress=progress
    )


# --- the demo models --------------------------------------------------------------------------
DEMO_MODEL = dict(n_layer=2, n_head=4, d_model=64)
DEMO_TRAIN = dict(steps=300, batch_size=64, warmup=30, eval_every=100, ckpt_every=100)
DEMO_RUNS = {  # run name: attention and pattern of the sorter
    "sort-sdpa": dict(attention="sdpa"),
    "sort-metric": dict(attention="metric"),
    "sort-sdpa-fixed": dict(attention="sdpa", pattern="fixed", pattern_mode="interleave"),
}


def train_demo(
    root: str | Path = "runs", *, steps: int | None = None, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Train the three demo sorters into ``root/NAME`` (continuing or reusing what is there)
    and return each run's summary (:func:`train`) with ``"sorted_exactly"``: the fraction of
    held-out sequences the model sorts exactly when it generates the sort itself."""
    results = {}
    for name, attention in DEMO_RUNS.items():
        train_options = dict(DEMO_TRAIN)
        if steps is not None:
            train_options.update(steps=steps, warmup=min(steps, train_options["warmup"]))
        result = run_from_args(
            task="sort",
            task_options={},
            model_options={**DEMO_MODEL, **attention},
            train_config=TrainConfig(**train_options),
            out=Path(root) / name,
            resume=True,
            device="cpu",
            progress=progress,
        )
        result["sorted_exactly"] = SortTask().sorted_exactly(result["model"])
        results[name] = result
    return results
