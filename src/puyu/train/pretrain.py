"""The training loop shared by every stage: pretraining, the long-context stage and SFT.

Read top to bottom, `train(recipe)` does:
  setup        processes and device, seeds, tokenizer, token shards -> rows, model (preset, HF directory
               or training checkpoint; the long-context stage sets a new `rope_theta`), DDP/FSDP, AdamW
  resume       with `resume=True`, the newest valid checkpoint restores model, optimizer, step, data
               position and RNG states, so the run continues exactly as if never stopped
  loop         per step: learning rate from the schedule; the global batch split into this process's
               rows and then into `grad_accum` micro-batches; loss summed over target tokens and divided
               by the global target count; backward; clip; AdamW step; metrics, progress bar,
               validation and checkpoints at their intervals
  finish       a last checkpoint, the loss-curve PNG, and the final weights as a Hugging Face InternLM2
               directory (`<out_dir>/hf`) that `puyu chat` and `puyu generate` load.

Only target tokens (loss mask 1) reach the output head: the hidden states are gathered at those
positions first, which saves the [tokens, vocab] projection wherever the mask is 0 (prompts, padding).
Precision (`train.precision`): master weights, gradients and optimizer state are always fp32; "bf16"
runs forward and backward under bf16 autocast. "auto" picks bf16 on CUDA, and on CPU only where the
processor multiplies bf16 natively and measurably faster than fp32 (`cpu_bf16_is_fast`: on this
project's AVX512-BF16 machine a bf16 matmul runs about 4x faster than fp32 and a whole nano training
step about 2x); elsewhere fp32, since emulated bf16 on CPU is many times slower.
"""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from puyu.errors import ConfigError, PuyuError
from puyu.model.config import ModelConfig, get_preset
from puyu.model.transformer import InternLM2ForCausalLM
from puyu.train import distributed as D
from puyu.train.dataset import Batch, make_rows
from puyu.train.metrics import MetricsLog, plot_losses
from puyu.train.optim import build_optimizer, clip_grad_norm, lr_at, set_lr
from puyu.train.recipe import Recipe, to_dict
from puyu.train.shards import load_shards
from puyu.train.state import find_latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state


class TrainingError(PuyuError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class LossModel(nn.Module):
    """Wraps the causal LM so that the loss is computed inside `forward` (DDP and FSDP hook there).

    forward(batch tensors) -> (summed cross-entropy over target tokens, number of target tokens)."""

    def __init__(self, lm: InternLM2ForCausalLM, doc_mask: bool):
        super().__init__()
        self.lm = lm
        self.doc_mask = doc_mask

    def forward(self, input_ids, targets, loss_mask, doc_ids, position_ids):
        if self.doc_mask:
            h = self.lm(input_ids, position_ids=position_ids, doc_ids=doc_ids, return_hidden=True)  # [B, T, C]
        else:
            h = self.lm(input_ids, return_hidden=True)  # [B, T, C]
        h = h[loss_mask]  # [N, C] target positions only
        logits = self.lm.output(h).float()  # [N, V]
        loss_sum = F.cross_entropy(logits, targets[loss_mask], reduction="sum")
        return loss_sum, h.shape[0]


# ---- model ---------------------------------------------------------------------------------------
def build_model(recipe: Recipe, vocab_size: int) -> tuple[InternLM2ForCausalLM, str]:
    """The model named by `recipe.model` (fp32, CPU), and a one-line description of where it came from."""
    sec = recipe.model
    if sec.init:
        init = Path(sec.init)
        if (init / "manifest.json").exists():  # a training checkpoint: its config and weights
            payload = load_checkpoint(init)
            cfg = ModelConfig.from_hf_dict(payload["config"])
            model = InternLM2ForCausalLM(cfg)
            model.load_state_dict({k.removeprefix("lm."): v for k, v in payload["model"].items()})
            source = f"training checkpoint {init}"
        else:
            from puyu.model.checkpoint import load_model

            model = load_model(init, dtype="float32", device="cpu")
            source = f"weights {init}"
    else:
        cfg = get_preset(sec.preset, **{"vocab_size": vocab_size, **sec.overrides})  # ConfigError when invalid
        model = InternLM2ForCausalLM(cfg).reset_parameters(seed=recipe.train.seed)
        shape = "".join(f", {k} {v}" for k, v in sec.overrides.items())
        source = f"preset {sec.preset}{shape} (random init, seed {recipe.train.seed})"
    cfg = model.config
    if sec.rope_theta is not None:
        cfg.rope_theta = float(sec.rope_theta)
    if sec.max_position_embeddings is not None:
        cfg.max_position_embeddings = int(sec.max_position_embeddings)
    cfg.validate()
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"the model's vocab_size ({cfg.vocab_size}) is smaller than the shards' tokenizer "
                          f"({vocab_size}); set model.overrides.vocab_size")
    if recipe.data.seq_len > cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len {recipe.data.seq_len} exceeds the model's max_position_embeddings "
                          f"{cfg.max_position_embeddings}; set model.max_position_embeddings")
    return model.float().train(), source


# ---- precision and threads -----------------------------------------------------------------------
_BF16_FAST: bool | None = None


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices at least 1.5x faster than fp32 (measured once, ~0.2 s)."""
    global _BF16_FAST
    if _BF16_FAST is None:
        a32, b32 = torch.randn(384, 384), torch.randn(384, 384)
        a16, b16 = a32.bfloat16(), b32.bfloat16()

        def best(a, b) -> float:
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(4):
                    a @ b
                times.append(time.perf_counter() - t0)
            return min(times)
        best(a16, b16)
        _BF16_FAST = best(a16, b16) * 1.5 < best(a32, b32)
    return _BF16_FAST


def autocast_context(precision: str, device: torch.device):
    """A factory of autocast contexts for the forward pass (bf16) or of null contexts (fp32)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or cpu_bf16_is_fast()))
    if not use_bf16:
        return nullcontext, "fp32"
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16 autocast"


def _cpu_counters() -> tuple[float, float, float] | None:
    """(busy seconds of the whole machine from /proc/stat, this process's CPU seconds, wall seconds)."""
    import os

    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()


class ThreadGovernor:
    """Chooses torch's CPU thread count. An int is used as given and None keeps torch's default.
    "auto" uses every core while the machine is otherwise quiet and fewer (one on two cores) while other
    processes keep cores busy: on a small shared CPU, threads that wait for each other at every
    operator then run 2-3x slower than one thread alone (measured on this project's 2-core machine).
    The choice is revisited every `every_s` seconds from the machine's busy time minus our own."""

    def __init__(self, setting, every_s: float = 30.0):
        import os

        self.auto, self.every_s, self.cores = setting == "auto", every_s, os.cpu_count() or 1
        if isinstance(setting, int) and setting > 0:
            torch.set_num_threads(setting)
        self.last = _cpu_counters()
        if self.auto and self.last is not None:
            time.sleep(0.3)  # a first short sample
            self.update(force=True)

    def update(self, force: bool = False) -> int:
        if self.auto and self.last is not None and (force or time.perf_counter() - self.last[2] >= self.every_s):
            now = _cpu_counters()
            others = max(0.0, ((now[0] - self.last[0]) - (now[1] - self.last[1])) / max(now[2] - self.last[2], 1e-6))
            self.last = now
            want = self.cores if others < 0.5 else max(1, self.cores - round(others))
            if want != torch.get_num_threads():
                torch.set_num_threads(want)
        return torch.get_num_threads()


# ---- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(net: nn.Module, rows, n_batches: int, batch_size: int, info: D.DistInfo, autocast) -> float:
    """Mean target-token loss over the first `n_batches` global batches of `rows` (a fixed order)."""
    net.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)
    order = list(range(min(rows.n_rows, n_batches * batch_size)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size][info.rank::info.world_size]
        if not idx:
            continue
        b = rows.batch(idx).to(info.device)
        with autocast():
            loss_sum, n = net(b.input_ids, b.targets, b.loss_mask, b.doc_ids, b.position_ids)
        total += torch.tensor([float(loss_sum), float(n)], dtype=torch.float64, device=info.device)
    D.all_reduce_sum(total, info)
    net.train()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def save_hf(net: nn.Module, cfg: ModelConfig, out: Path, tokenizer, info: D.DistInfo, dtype=None) -> Path | None:
    """Write the final weights as a Hugging Face InternLM2 directory (rank 0)."""
    from puyu.model.checkpoint import save_pretrained

    state = D.full_model_state(net)
    if not info.is_main:
        return None
    model = InternLM2ForCausalLM(cfg)
    model.load_state_dict({k.removeprefix("lm."): v for k, v in state.items()})
    return save_pretrained(model, out, tokenizer=tokenizer, dtype=dtype)


# ---- the loop ------------------------------------------------------------------------------------
def train(recipe: Recipe, resume: bool = False, stage: str = "pretrain", task_hook=None) -> dict:
    """Run one training stage described by `recipe`; return a summary (losses, tokens, seconds, paths).

    `task_hook(lm, step, elapsed_s) -> dict`, when given, runs on rank 0 at every validation step with
    the bare model (not under FSDP); its figures are logged as `kind: "task"` records (the nano recipe
    scores held-out arithmetic this way to draw accuracy against minutes)."""
    from tqdm import tqdm

    recipe.validate()
    tr, opt_cfg = recipe.train, recipe.optim
    info = D.setup(tr.device, recipe.dist.backend)
    ok = False
    try:
        torch.manual_seed(tr.seed)
        random.seed(tr.seed)
        out = Path(tr.out_dir)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        tokenizer = None
        if recipe.data.tokenizer:
            from puyu.model.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(recipe.data.tokenizer)
        pad_id = tokenizer.pad_id if tokenizer is not None else 2

        # ---- data ----
        if not recipe.data.train:
            raise ConfigError("data.train lists no shard directories (make them with `puyu train tokenize`)")
        tokens, mask, docs, vocab = load_shards(recipe.data.train)
        rows = make_rows(recipe.data.pack, tokens, mask, docs, recipe.data.seq_len, tr.seed, pad_id, recipe.data.pack_fit)
        val_rows = None
        if recipe.data.val:
            vt, vm, vd, _ = load_shards(recipe.data.val)
            try:
                val_rows = make_rows(recipe.data.pack, vt, vm, vd, recipe.data.seq_len, tr.seed, pad_id,
                                     recipe.data.pack_fit)
            except ConfigError as e:  # a validation set too small for one row: train without it
                if info.is_main:
                    print(f"warning: no validation ({e})", file=sys.stderr)
        per_proc, rem = divmod(tr.batch_size, info.world_size * tr.grad_accum)
        if rem or per_proc == 0:
            raise ConfigError(f"train.batch_size {tr.batch_size} must be a multiple of world_size x grad_accum "
                              f"({info.world_size} x {tr.grad_accum})")

        # ---- model and optimizer ----
        lm, source = build_model(recipe, vocab)
        cfg = lm.config
        net = D.wrap(LossModel(lm, recipe.data.doc_mask).to(info.device), info, recipe.dist.strategy)
        optimizer = build_optimizer(net, opt_cfg.lr, opt_cfg.betas, opt_cfg.eps, opt_cfg.weight_decay)
        autocast, precision = autocast_context(tr.precision, info.device)
        governor = ThreadGovernor(tr.threads) if info.device.type == "cpu" else None
        threads = governor.update() if governor else None
        metrics = MetricsLog(out / "metrics.jsonl", enabled=info.is_main)

        # ---- resume ----
        start_step = 0
        ckpt_root = out / "checkpoints"
        if resume:
            latest = find_latest(ckpt_root) if info.is_main else None
            latest = D.broadcast_object(str(latest) if latest else None, info)
            if latest is not None:
                payload = load_checkpoint(latest)
                D.set_full_state(net, optimizer, payload["model"], payload["optimizer"])
                rows.load_state_dict(payload["data"])
                set_rng_state(payload["rng"])
                start_step = int(payload["step"])
                metrics.truncate_after(start_step)
                if info.is_main:
                    print(f"resumed from {latest} (step {start_step})", file=sys.stderr)
            elif info.is_main:
                print(f"no checkpoint in {ckpt_root}; starting from scratch", file=sys.stderr)
        if start_step == 0:
            metrics.reset()
        if info.is_main:
            n_params = sum(p.numel() for p in lm.parameters())
            fill = f" ({100 * rows.fill:.1f}% document tokens, the rest padding; {recipe.data.pack_fit} fit)" if rows.fill is not None else ""
            print(f"[{stage}] {source}: {n_params / 1e6:.2f}M parameters, {rows.n_rows} rows of "
                  f"{recipe.data.seq_len} tokens{fill}, {info.world_size} process(es) on {info.device}, {precision}"
                  + (f", {threads} thread(s)" if threads else ""), file=sys.stderr)

        def checkpoint(step: int) -> None:
            model_state, optim_state = D.get_full_state(net, optimizer)
            if info.is_main:
                save_checkpoint(ckpt_root, step, {
                    "model": model_state, "optimizer": optim_state, "step": step, "data": rows.state_dict(),
                    "rng": rng_state(), "recipe": to_dict(recipe), "config": cfg.to_hf_dict(),
                    "world_size": info.world_size}, keep=tr.keep_checkpoints)
            D.barrier(info)

        # ---- loop ----
        bar = tqdm(total=tr.steps, initial=start_step, desc=stage, disable=not (tr.progress and info.is_main),
                   dynamic_ncols=True, unit="step")
        t_start, tokens_seen = time.perf_counter(), 0
        train_loss = val_loss = float("nan")
        for step in range(start_step, tr.steps):
            lr = lr_at(step, tr.steps, opt_cfg.lr, opt_cfg.warmup_steps, opt_cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            threads = governor.update() if governor else None
            batch: Batch = rows.next_batch(tr.batch_size, info.rank, info.world_size)
            micro = [batch.rows(i * per_proc, (i + 1) * per_proc) for i in range(tr.grad_accum)]
            # The global number of target tokens of this step normalises every process's loss.
            count = D.all_reduce_sum(torch.tensor([float(batch.n_loss_tokens)], device=info.device), info)
            n_global = max(float(count), 1.0)
            loss_total = torch.zeros((), dtype=torch.float64, device=info.device)
            for k, mb in enumerate(micro):
                mb = mb.to(info.device)
                sync = k == len(micro) - 1 or not hasattr(net, "no_sync")
                with (nullcontext() if sync else net.no_sync()), autocast():
                    loss_sum, _ = net(mb.input_ids, mb.targets, mb.loss_mask, mb.doc_ids, mb.position_ids)
                (loss_sum * (info.world_size / n_global)).backward()
                loss_total += loss_sum.detach().double()
            grad_norm = clip_grad_norm(net, opt_cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = float(D.all_reduce_sum(loss_total, info)) / n_global
            if not math.isfinite(train_loss):
                raise TrainingError(f"[{stage}] loss became {train_loss} at step {step + 1}; "
                                         f"lower optim.lr or raise optim.warmup_steps")
            tokens_seen += tr.batch_size * recipe.data.seq_len
            done = step + 1
            elapsed = time.perf_counter() - t_start
            tok_s = tokens_seen / max(elapsed, 1e-9)
            if done % tr.log_every == 0 or done == tr.steps:
                metrics.log("train", done, loss=train_loss, lr=lr, grad_norm=grad_norm, tokens_per_s=tok_s, threads=threads,
                            elapsed_s=elapsed)
            if val_rows is not None and (done % tr.eval_every == 0 or done == tr.steps):
                val_loss = evaluate(net, val_rows, tr.eval_batches, tr.batch_size, info, autocast)
                metrics.log("val", done, loss=val_loss)
            if task_hook is not None and (done % tr.eval_every == 0 or done == tr.steps):
                if info.is_main and recipe.dist.strategy != "fsdp":
                    figures = task_hook(D.unwrap(net).lm, done, time.perf_counter() - t_start)
                    D.unwrap(net).lm.train()
                    metrics.log("task", done, elapsed_s=time.perf_counter() - t_start, **figures)
                D.barrier(info)
            val = "" if math.isnan(val_loss) else f" val {val_loss:.3f}"  # none until the first validation
            bar.set_postfix_str(f"loss {train_loss:.3f}{val} lr {lr:.2e} {tok_s:,.0f} tok/s"
                                + (f" {threads}t" if threads else ""))
            bar.update(1)
            if done % tr.save_every == 0 or done == tr.steps:
                checkpoint(done)
        bar.close()

        # ---- finish ----
        elapsed = time.perf_counter() - t_start
        hf_dir = None
        if tr.save_hf:
            hf_dir = save_hf(net, cfg, out / "hf", tokenizer, info, tr.hf_dtype)
        if info.is_main:
            plot_losses({stage: out / "metrics.jsonl"}, out / "loss.png", title=f"{stage} loss")
        ok = True
        return {"stage": stage, "steps": tr.steps, "start_step": start_step, "train_loss": train_loss,
                "val_loss": val_loss, "tokens": tokens_seen, "seconds": elapsed,
                "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "hf_dir": str(hf_dir) if hf_dir else None,
                "out_dir": str(out), "parameters": sum(p.numel() for p in lm.parameters()),
                "rows": rows.n_rows, "world_size": info.world_size, "precision": precision, "threads": threads}
    finally:
        D.cleanup(info, ok)


def run_longctx(recipe: Recipe, resume: bool = False) -> dict:
    """The long-context stage (InternLM2: 4K -> 32K tokens with rope_theta raised to 1e6): continue
    from `model.init` at the recipe's longer `data.seq_len` with the new `model.rope_theta`."""
    if not recipe.model.init:
        raise ConfigError("the long-context stage continues a trained model: set model.init")
    if recipe.model.rope_theta is None:
        raise ConfigError("the long-context stage raises the RoPE base: set model.rope_theta")
    return train(recipe, resume=resume, stage="longctx")
