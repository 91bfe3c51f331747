"""Does a model choose the demo's tool from the question? For every phrasing (training and held-out) and
every city, the logit margin weather - time of the token after `{"name": "get_` (the one token where the
two calls differ: `get_weather` is `get` `_` `weather` with the nano tokenizer), and how often its sign is
right. A model that ignores the question shows the same margin for both functions (README, "Fifth round").

    python benchmarks/tool_choice.py runs/nano/chat runs/nano/pretrain/hf
"""

from __future__ import annotations

import argparse
import statistics

import torch


def margins(model, tok, fn: str, held_out: bool) -> list[float]:
    from puyu.model.chat_format import render_chat
    from puyu.tasks.synthetic import CITIES, SYSTEM, TOOL_QUESTIONS, TOOLS

    weather, time_ = tok.encode("weather"), tok.encode("time")
    if len(weather) != 1 or len(time_) != 1:
        raise SystemExit(f"this tokenizer writes weather / time as {weather} / {time_}, not one piece each")
    out = []
    for q in TOOL_QUESTIONS[fn][1 if held_out else 0]:
        for city in CITIES:
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q.format(c=city)}]
            text = render_chat(msgs, tools=TOOLS) + '<|action_start|><|plugin|>\n{"name": "get_'
            ids = tok.encode(text, allow_special=True)
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0, -1].float()
            out.append(float(logits[weather[0]] - logits[time_[0]]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="model directories (a checkpoint with its tokenizer)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import puyu

    for path in a.models:
        model, tok = puyu.load_model(path).eval(), puyu.load_tokenizer(path)
        right_all = n_all = 0
        for fn in ("get_weather", "get_time"):
            for held in (False, True):
                m = margins(model, tok, fn, held)
                right = sum((x > 0) == (fn == "get_weather") for x in m)
                right_all, n_all = right_all + right, n_all + len(m)
                print(f"{path}  {fn:11s} {'held-out' if held else 'training'} phrasings: margin weather-time "
                      f"mean {statistics.mean(m):+.2f} sd {statistics.pstdev(m):.2f}, right {right}/{len(m)}")
        print(f"{path}  right function: {right_all}/{n_all}")


if __name__ == "__main__":
    main()
