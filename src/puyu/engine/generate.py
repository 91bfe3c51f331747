"""`puyu generate`: complete prompts with the engine, streaming for one prompt, batched for several.

    puyu generate --model runs/nano "Once upon a time"
    puyu generate --model internlm2-chat-1_8b --chat "What is 2+2?" --max-new-tokens 64
    puyu generate --model nano --ids "1 15 300 27" --temperature 0.8 --seed 0 --json

Text prompts get `<s>` in front (unless `--no-bos`); `--chat` wraps each prompt as a user turn of the
InternLM2 template (and stops at `<|im_end|>`). A preset name gives a randomly initialised model, so
text needs `--tokenizer`, or give token ids with `--ids`. The sampling flags here are shared with
`puyu chat` (`add_sampling_arguments`, `sampling_from_args`). A prompt whose tokens + `--max-new-tokens`
exceed the model's context (`max_position_embeddings`, or `--context-length`: the rule `puyu serve` uses)
is refused before anything is generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from puyu.errors import PuyuError


# ---- shared with puyu chat ------------------------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="checkpoint directory (InternLM2 or LLaMA layout) or preset name")
    p.add_argument("--tokenizer", help="tokenizer directory or .model file (default: the checkpoint's own)")
    p.add_argument("--dtype", help="float32 (CPU default), bfloat16, float16")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_weights_arguments(p)
    p.add_argument("--cache-tokens", type=int, help="KV cache size in tokens (default: --context, else sized from memory)")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="prompt tokens per prefill forward")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="prefill every prompt in full (default: reuse cached blocks of earlier prompts and answers)")


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    """--weights / --group / --kv / --context / --no-memory-check (shared by generate, chat and serve)."""
    p.add_argument("--weights", choices=["f32", "bf16", "int8", "int4"],
                   help="store the linear layers packed (CPU): quantized tensor by tensor while loading "
                        "(default: as the checkpoint is: float32, or the format `puyu quantize` wrote)")
    p.add_argument("--group", type=int, default=64, help="int4 group size: 32, 64 or 128 (default 64)")
    add_kv_argument(p)
    p.add_argument("--context", type=int,
                   help="tokens of KV cache to reserve and to check memory for (default: the model's "
                        "max_position_embeddings for the check; the cache is sized from memory)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="load even when weights + KV cache look larger than the memory available")


def add_kv_argument(p: argparse.ArgumentParser) -> None:
    """--kv: the KV cache's stored format (also on `puyu eval` and `puyu info`)."""
    p.add_argument("--kv", choices=["f32", "bf16", "int8"],
                   help="KV cache format: f32, bf16 (half the bytes) or int8 with a scale per token and head "
                        "(0.26-0.28x of f32) (default: the model's dtype)")


def kv_format(args: argparse.Namespace) -> str:
    """The KV format the engine will store: --kv, else the model's dtype (bf16/fp16 both 2 bytes)."""
    if getattr(args, "kv", None):
        return args.kv
    return "bf16" if str(getattr(args, "dtype", None) or "").lower() in ("bfloat16", "bf16", "float16", "fp16", "half") else "f32"


def check_memory(args: argparse.Namespace) -> None:
    """Before loading: weights (in --weights) + KV cache for --context vs the memory available (CPU only);
    raises puyu.model.memory.MemoryCheckError naming the options that help."""
    from puyu.model.checkpoint import QUANT_KEY, resolve_device
    from puyu.model.info import resolve_config
    from puyu.model.memory import check_fits
    from puyu.model.quant import check_format

    if getattr(args, "no_memory_check", False) or resolve_device(args.device).type != "cpu":
        return
    cfg = resolve_config(str(args.model))
    stored = cfg.extra.get(QUANT_KEY) or {}
    # without --weights the checkpoint loads as it records (a Q4_0 GGUF or an AWQ directory: int4 in groups of
    # 32), so its group counts, not --group's default
    group = args.group if args.weights else int(stored.get("group", args.group))
    weights = args.weights or stored.get("weights") or "f32"
    if args.weights:
        check_format(args.weights, group)  # a bad --group is named before any size is computed from it
    check_fits(cfg, weights, kv_format(args), getattr(args, "context", None), group=group)


def add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--stop-token-id", action="append", type=int, default=[], metavar="ID", help="repeatable")


def sampling_from_args(args: argparse.Namespace, extra_stop_ids: list[int] | None = None, **more):
    from puyu.engine.sampling import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=list(args.stop), stop_token_ids=sorted(set(args.stop_token_id) | set(extra_stop_ids or [])),
                          **more)


def load_model_and_tokenizer(args: argparse.Namespace, need_tokenizer: bool):
    """The model, and its tokenizer: --tokenizer, else the checkpoint directory's (or the GGUF file's), else None."""
    from puyu.model.checkpoint import load_model
    from puyu.model.gguf_file import is_gguf
    from puyu.model.tokenizer import load_tokenizer

    if not Path(args.model).exists():
        from puyu.model.info import resolve_config

        resolve_config(str(args.model))  # a preset name passes; anything else: "neither a checkpoint ... nor a preset"
    tok_path = args.tokenizer
    if tok_path is None and Path(args.model).is_dir() and (Path(args.model) / "tokenizer.model").exists():
        tok_path = args.model
    from_gguf = tok_path is None and is_gguf(Path(args.model))
    if from_gguf:  # a GGUF file usually carries its tokenizer
        tok_path = args.model
    if tok_path is None and need_tokenizer:
        raise PuyuError(f"{args.model} has no tokenizer.model: pass --tokenizer DIR"
                        + (" (or token ids with --ids)" if hasattr(args, "ids") else ""))
    try:
        tokenizer = load_tokenizer(tok_path) if tok_path is not None else None
    except PuyuError:
        if not from_gguf or need_tokenizer:  # token ids (--ids) need no tokenizer: a GGUF without one is fine
            raise
        tokenizer = None
    check_memory(args)
    model = load_model(args.model, dtype=args.dtype, device=args.device, weights=args.weights, group=args.group)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise PuyuError(f"the tokenizer has {tokenizer.vocab_size} pieces but the model's vocabulary is "
                        f"{model.config.vocab_size}: they do not belong together")
    return model, tokenizer


def make_engine(args: argparse.Namespace, model, tokenizer, max_batch_size: int = 16):
    from puyu.engine.scheduler import Engine

    cache_tokens = args.cache_tokens or getattr(args, "context", None)
    return Engine(model, tokenizer, max_batch_size=max_batch_size, cache_tokens=cache_tokens,
                  prefill_chunk=args.prefill_chunk, prefix_cache=not getattr(args, "no_prefix_cache", False),
                  kv=getattr(args, "kv", None))


# ---- puyu generate -----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="prompts (text, or ids with --ids); '-' reads one from stdin")
    add_model_arguments(p)
    add_sampling_arguments(p, max_new_tokens=128)
    p.add_argument("--ids", action="store_true", help="prompts are token ids separated by spaces or commas")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn of the chat template")
    p.add_argument("--system", help="system prompt for --chat")
    p.add_argument("--no-bos", action="store_true", help="do not put <s> in front of text prompts")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past </s> (benchmarks)")
    p.add_argument("--logprobs", action="store_true", help="report each token's log-probability (with --json)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt instead of plain text")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int,
                   help="longest prompt + completion (default: the model's max_position_embeddings, as serve)")


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise PuyuError(f"--ids prompt {text!r} is not a list of integers") from None


def build_prompts(args: argparse.Namespace, tokenizer) -> list:
    texts = [sys.stdin.read() if t == "-" else t for t in args.prompts]
    if not texts:
        raise PuyuError("no prompt given: puyu generate --model M \"your prompt\"")
    if args.ids:
        return [_parse_ids(t) for t in texts]
    if args.chat:
        from puyu.model.chat_format import encode_chat

        system = [{"role": "system", "content": args.system}] if args.system else []
        # ids: the prompt text is a user message (plain text), only the template's markers are special
        return [encode_chat(tokenizer, system + [{"role": "user", "content": t}], None) for t in texts]
    # Prompts are encoded with special tokens allowed (engine contract); "<s>" here is the bos id.
    return [t if args.no_bos else "<s>" + t for t in texts]


def check_prompts_fit(args: argparse.Namespace, config, tokenizer, prompts: list) -> None:
    """Refuse (ContextLengthError, naming the prompt) any prompt whose tokens + --max-new-tokens exceed the
    context `puyu serve` would allow (puyu.engine.sampling.context_length: --context-length, else the
    model's max_position_embeddings): past it the model runs on positions it never saw."""
    from puyu.engine.sampling import ContextLengthError, check_context, context_length

    context = context_length(config, getattr(args, "context_length", None))
    for i, prompt in enumerate(prompts):
        # counted as the engine encodes a text prompt (markers written in it are special ids)
        n = len(tokenizer.encode(prompt, allow_special=True)) if isinstance(prompt, str) else len(prompt)
        try:
            check_context(context, n, args.max_new_tokens,
                          fix="shorten the prompt, lower --max-new-tokens or raise --context-length")
        except ContextLengthError as e:
            raise ContextLengthError(f"prompt [{i}]: {e}" if len(prompts) > 1 else str(e)) from None


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_model_and_tokenizer(args, need_tokenizer=not args.ids)
    prompts = build_prompts(args, tokenizer)
    check_prompts_fit(args, model.config, tokenizer, prompts)
    stop_ids = tokenizer.stop_ids if (args.chat and tokenizer is not None) else []
    params = sampling_from_args(args, stop_ids, ignore_eos=args.ignore_eos, logprobs=args.logprobs)
    with make_engine(args, model, tokenizer, max_batch_size=args.max_batch_size) as engine:
        if len(prompts) == 1 and not args.json:
            finish = None
            for delta in engine.stream(prompts[0], params):
                if tokenizer is None and delta.token_ids:
                    sys.stdout.write(" ".join(map(str, delta.token_ids)) + " ")
                sys.stdout.write(delta.text)
                sys.stdout.flush()
                finish = delta.finish_reason or finish
            sys.stdout.write("\n")
            print(f"[finish: {finish}]", file=sys.stderr)
            return 0
        results = engine.generate(prompts, params)
    for i, r in enumerate(results):
        if args.json:
            row = {"prompt": args.prompts[i], "text": r.text, "token_ids": r.token_ids,
                   "finish_reason": r.finish_reason, "prompt_tokens": len(r.prompt_token_ids)}
            if r.logprobs is not None:
                row["logprobs"] = r.logprobs
            print(json.dumps(row, ensure_ascii=False))
        else:
            body = r.text if tokenizer is not None else " ".join(map(str, r.token_ids))
            print(f"=== [{i}] finish: {r.finish_reason}\n{body}")
    return 0
