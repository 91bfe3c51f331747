"""The programmatic judge: the nano stand-in for human labellers, and preference pairs.

Rules, in order (the first that separates two replies to the same prompt decides, and names the
reward domain the pair trains):
  arithmetic  a correct answer beats a wrong one
  tool        a valid call (right name and arguments, well-formed JSON) beats a malformed or wrong one
  format      a turn that ends with `<|im_end|>` beats one that rambles on (no end within the budget)
  concise     of two correct, ended replies the shorter (in tokens) wins
Replies that tie under every rule make no pair.

Pairs are built from the policy's own samples (several per prompt); when every sample of a prompt ties
(the policy is already always right, say), `perturb` makes a worse variant of one of them (a wrong
number, a broken call, the end marker dropped with rambling after it, a verbose preamble), so every
domain keeps receiving pairs. Each pair records its `source` ("policy" or "perturbed").

Pair JSONL (the format users bring to `puyu train rm` and `puyu train dpo`):
  {"system"?: DOMAIN-or-text, "messages": [...prompt...], "tools"?: [...], "chosen": R, "rejected": R}
where R is the assistant reply: a string (a complete turn) or {"content": str, "end": bool} (end false:
the turn was cut off without `<|im_end|>`). `system` naming a key of `DOMAINS` selects that rubric;
other text is used as the system turn itself.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from puyu.errors import PuyuError
from puyu.model.chat_format import IM_END, render_chat
from puyu.rl.reward_model import DOMAINS, with_domain
from puyu.tasks import verifiable as V
from puyu.tasks.jsonl import read_jsonl, write_jsonl


class PairError(PuyuError):
    """A preference-pair file or record that cannot be used; the message names the line."""


@dataclass
class Reply:
    """One assistant reply: its text (markers included, `<|im_end|>` excluded), whether it ended the turn,
    and its length in tokens (for the concise rule; text length / 4 when unknown)."""

    content: str
    end: bool = True
    n_tokens: int | None = None

    @property
    def length(self) -> float:
        return self.n_tokens if self.n_tokens is not None else len(self.content) / 4

    def to_json(self):
        return self.content if self.end else {"content": self.content, "end": False}


def task_score(sample: dict, reply: Reply) -> float:
    """The judge's verdict on one reply: the task scorer (arithmetic, tool call, chat) times turn-ending."""
    return V.score(reply.content, sample) * float(reply.end)


def prefer(sample: dict, a: Reply, b: Reply) -> tuple[str, int] | None:
    """(domain, 0 if `a` wins else 1) by the rules in the module docstring, or None on a tie."""
    kind = sample["kind"]
    sa, sb = V.score(a.content, sample), V.score(b.content, sample)
    if kind in ("arithmetic", "tool") and sa != sb:
        return kind, 0 if sa > sb else 1
    if a.end != b.end:
        return "format", 0 if a.end else 1
    if sa == sb == 1.0 and a.end and b.end and a.length != b.length:
        return "concise", 0 if a.length < b.length else 1
    return None


TOOL_FAULTS = ("city", "function", "json", "unknown")  # the ways `broken_call` breaks a call


def broken_call(content: str, call: dict, fault: str, rng: random.Random, cities=None) -> str:
    """`content` (a reply holding `call`, {"name", "arguments": {"city"}}) with the call broken one way:
    "json" the arguments' opening brace dropped (invalid JSON), "unknown" a tool not on offer
    (get_news or get_stock), "city" the city swapped for one drawn from `cities` (default: the demo's ten,
    which may draw the same city: callers check), "function" the demo's other tool."""
    if fault == "json":
        return content.replace('"parameters": {', '"parameters": ')
    if fault == "unknown":
        return content.replace(call["name"], "get_" + rng.choice(["news", "stock"]))
    if fault == "city":
        city = call["arguments"]["city"]
        return content.replace(json.dumps(city), json.dumps(rng.choice(V.CITIES if cities is None else cities)))
    if fault == "function":
        other = [t.get("function", t)["name"] for t in V.TOOLS if t.get("function", t)["name"] != call["name"]]
        return content.replace(json.dumps(call["name"]), json.dumps(rng.choice(other)))
    raise PairError(f"unknown tool fault {fault!r}; known: {', '.join(TOOL_FAULTS)}")


def judge_breakage(content: str, call: dict, rng: random.Random) -> str:
    """The judge's own tool perturbation (`perturb`, `worse_variant`): broken JSON, an unknown tool or another
    city, one of the three at random (each drawn first, so the rng advances as it always has)."""
    return rng.choice([broken_call(content, call, f, rng) for f in ("json", "unknown", "city")])


def perturb(sample: dict, good: Reply, rng: random.Random) -> tuple[str, Reply] | None:
    """A worse variant of `good` for the domain the sample exercises: (domain, reply), or None."""
    kind = sample["kind"]
    choice = rng.random()
    if kind == "arithmetic" and V.arithmetic_score(good.content, sample) == 1.0 and choice < 0.5:
        ans = int(sample["answer"])
        wrong = ans + rng.choice([-10, -2, -1, 1, 2, 10])
        head = good.content.rsplit(str(ans), 1)
        return "arithmetic", Reply(f"{head[0]}{wrong}{head[1]}" if len(head) == 2 else str(wrong), True)
    if kind == "tool" and V.tool_call_score(good.content, sample) == 1.0 and choice < 0.5:
        broken = judge_breakage(good.content, sample["call"], rng)
        if broken != good.content and V.tool_call_score(broken, sample) == 0.0:
            return "tool", Reply(broken, True)
    if choice < 0.75 or kind == "tool":
        ramble = good.content + " " + good.content + " " + rng.choice(["and so on", "more", "I think"])
        return "format", Reply(ramble, False)
    if V.score(good.content, sample) == 1.0:
        pre = rng.choice(["Let me think about this. ", "Sure! Here is the answer. ", "Well, let us see. "])
        return "concise", Reply(pre + good.content, True)
    return None


def reference_reply(sample: dict) -> Reply | None:
    """The known right reply of a verifiable sample (arithmetic: `a+b=c`; tool: the expected call)."""
    if sample["kind"] == "arithmetic" and sample.get("problem"):
        a, op, b = sample["problem"]
        return Reply(f"{a}{op}{b}={sample['answer']}", True)
    if sample["kind"] == "tool" and sample.get("call"):
        from puyu.model.chat_format import plugin_action

        return Reply(plugin_action(sample["call"]["name"], sample["call"]["arguments"]), True)
    return None


def build_pairs(samples: list[dict], replies: list[list[Reply]], seed: int, perturb_ties: bool = True,
                reference: bool = True) -> list[dict]:
    """Pairs from K replies per sample: the judge's best against its worst (when the judge separates
    them); else, when every reply fails the task and `reference`, the known right reply against one of
    them (source "reference": a weak policy otherwise gives the RM no correctness pairs at all); else a
    perturbed variant of a reply. Returns pair records (see the module docstring) with `domain` and
    `source` keys."""
    rng = random.Random(f"puyu-pairs-{seed}")
    out = []
    for sample, reps in zip(samples, replies):
        found = None
        for i in range(len(reps)):
            for j in range(i + 1, len(reps)):
                verdict = prefer(sample, reps[i], reps[j])
                if verdict is not None:
                    found = (verdict[0], reps[i], reps[j]) if verdict[1] == 0 else (verdict[0], reps[j], reps[i])
                    break
            if found:
                break
        source = "policy"
        ref = reference_reply(sample) if reference else None
        if (found is None or found[0] not in ("arithmetic", "tool")) and ref is not None and reps and \
                all(V.score(r.content, sample) == 0.0 for r in reps):
            found, source = (sample["kind"], ref, reps[0]), "reference"
        if found is None and perturb_ties and reps:
            p = perturb(sample, reps[0], rng)
            if p is not None:
                found, source = (p[0], reps[0], p[1]), "perturbed"
        if found is None:
            continue
        domain, chosen, rejected = found
        rec = {"system": domain, "domain": domain, "messages": sample["messages"],
               "chosen": chosen.to_json(), "rejected": rejected.to_json(), "source": source}
        if sample.get("tools"):
            rec["tools"] = sample["tools"]
        out.append(rec)
    return out


# ---- programmatic arithmetic pairs ---------------------------------------------------------------
OFF_BY = (-10, -2, -1, 1, 2, 10)  # the near misses `perturb` uses, and what a nano policy gets wrong


def arithmetic_pairs(n: int, seed, exclude: set | None = None, p_big: float = 0.0,
                     offsets: tuple[int, ...] = OFF_BY, problems: list | None = None) -> list[dict]:
    """`n` arithmetic-domain pairs that differ only in the answer: the right reply `a+b=c` (the SFT
    data's form) against `a+b=c+k`, k drawn from `offsets` (hard negatives: one digit off, or the tens
    digit). Cheap (no sampling), so the reward model can see thousands of them; they teach the
    arithmetic rubric the judge pairs alone do not (README, alignment section).

    Problems: drawn like training problems (a, b < 100, a fraction `p_big` < 1000, `exclude` skipped),
    or taken in turn from `problems` (a held-out set); the question's phrasing is drawn from the
    training phrasings. Each record has `source` "programmatic" and a `prompt_id` (its problem), so
    `split_pairs` keeps a problem's pairs on one side. Raises PairError for n < 0 or no offsets, or an
    offset of 0 (that "wrong" answer is right)."""
    from puyu.tasks.synthetic import _training_problem

    if n < 0:
        raise PairError(f"arithmetic_pairs: n must be >= 0, got {n}")
    if not offsets or 0 in offsets:
        raise PairError(f"arithmetic_pairs: offsets must be non-zero integers, got {offsets!r}")
    rng = random.Random(f"puyu-arith-pairs-{seed}")
    out = []
    for i in range(n):
        p = problems[i % len(problems)] if problems else _training_problem(rng, p_big, exclude or set())
        sample = V.arithmetic_prompt(p, rng)
        right = int(p.answer)
        wrong = right + rng.choice(offsets)
        out.append({"system": "arithmetic", "domain": "arithmetic", "messages": sample["messages"],
                    "chosen": f"{p.prompt}{right}", "rejected": f"{p.prompt}{wrong}", "source": "programmatic",
                    "prompt_id": f"arith:{p.a}{p.op}{p.b}"})
    return out


# The default order: a wrong city three times in four, else the other tool. A nano RM (the seed-0 chat model's
# body, lr 3e-4) tells a wrong tool, broken JSON or an unknown tool apart within 100 steps (the judge's own
# perturbations include the last two), but a wrong city only after ~3,000 city-pair views, and not on every run
# (README, "Tool domain").
TOOL_FAULT_ORDER = ("city", "function", "city", "city")


def tool_pairs(n: int, seed, faults: tuple[str, ...] = TOOL_FAULT_ORDER) -> list[dict]:
    """`n` tool-domain pairs that differ only in the call: the right call for a demo tool question
    (`puyu.tasks.verifiable.tool_prompt`: training phrasings, the demo's two tools and ten cities) against
    the same call broken one way, the `faults` in turn (default `TOOL_FAULT_ORDER`): "city" another of
    the ten cities, "function" the demo's other tool (weather for time: the confusion a nano policy
    makes), "json" the arguments' opening brace dropped (invalid JSON), "unknown" a tool that is not on
    offer. Cheap (no sampling), like `arithmetic_pairs`; records carry `tools`, `source` "programmatic"
    and a `prompt_id` (the question: the demo's phrasings and cities make ~160 questions, so pairs repeat
    questions and a split by `prompt_id` keeps each question on one side). Raises PairError for n < 0, a
    string or an empty tuple for `faults`, or an unknown fault."""
    from puyu.model.chat_format import plugin_action

    if n < 0:
        raise PairError(f"tool_pairs: n must be >= 0, got {n}")
    if isinstance(faults, str):
        raise PairError(f"tool_pairs: faults must be a tuple of names among {', '.join(TOOL_FAULTS)}, got {faults!r}")
    bad = [f for f in faults if f not in TOOL_FAULTS]
    if bad or not faults:
        raise PairError(f"tool_pairs: faults must be among {', '.join(TOOL_FAULTS)}, got {list(faults)!r}")
    rng = random.Random(f"puyu-tool-pairs-{seed}")
    out = []
    for i in range(n):
        sample = V.tool_prompt(rng)
        call = sample["call"]
        right = plugin_action(call["name"], call["arguments"])
        others = [c for c in V.CITIES if c != call["arguments"]["city"]]  # never the same city
        wrong = broken_call(right, call, faults[i % len(faults)], rng, cities=others)
        out.append({"system": "tool", "domain": "tool", "messages": sample["messages"], "tools": sample["tools"],
                    "chosen": right, "rejected": wrong, "source": "programmatic",
                    "prompt_id": f"tool:{sample['messages'][-1]['content']}"})
    return out


# ---- one pair per domain -------------------------------------------------------------------------
DOMAINS_OF_KIND = {"arithmetic": ("arithmetic", "format", "concise"), "tool": ("tool", "format"),
                   "interpreter": ("format",), "chat": ("format", "concise")}


def domain_verdict(sample: dict, a: Reply, b: Reply, domain: str) -> int | None:
    """0 if `a` wins, 1 if `b` wins under `domain`'s rule alone, None when the rule does not separate
    them: arithmetic/tool, the task score; format, ending the turn (equal task scores); concise, the
    shorter of two right, ended replies."""
    sa, sb = V.score(a.content, sample), V.score(b.content, sample)
    if domain in ("arithmetic", "tool"):
        return None if sample["kind"] != domain or sa == sb else (0 if sa > sb else 1)
    if domain == "format":
        return None if sa != sb or a.end == b.end else (0 if a.end else 1)
    if domain == "concise":
        if not (sa == sb == 1.0 and a.end and b.end) or a.length == b.length:
            return None
        return 0 if a.length < b.length else 1
    return None


def worse_variant(sample: dict, good: Reply, domain: str, rng: random.Random) -> Reply | None:
    """A variant of `good` that loses under `domain` alone (a wrong number, a broken or wrong call, the
    end dropped with rambling after it, a verbose preamble), or None when `good` cannot give one."""
    if domain == "arithmetic" and V.arithmetic_score(good.content, sample) == 1.0:
        ans = int(sample["answer"])
        wrong = ans + rng.choice([-10, -2, -1, 1, 2, 10])
        head = good.content.rsplit(str(ans), 1)
        return Reply(f"{head[0]}{wrong}{head[1]}" if len(head) == 2 else str(wrong), True, good.n_tokens)
    if domain == "tool" and V.tool_call_score(good.content, sample) == 1.0:
        for _ in range(4):
            broken = judge_breakage(good.content, sample["call"], rng)
            if broken != good.content and V.tool_call_score(broken, sample) == 0.0:
                return Reply(broken, True)
        return None
    if domain == "format" and good.end:
        ramble = good.content + " " + good.content + " " + rng.choice(["and so on", "more", "I think"])
        return Reply(ramble, False)
    if domain == "concise" and good.end and V.score(good.content, sample) == 1.0:
        pre = rng.choice(["Let me think about this. ", "Sure! Here is the answer. ", "Well, let us see. "])
        return Reply(pre + good.content, True)
    return None


def build_domain_pairs(samples: list[dict], replies: list[list[Reply]], seed: int, group: str = "") -> list[dict]:
    """Up to one pair per domain of each sample's kind (`DOMAINS_OF_KIND`) from its K replies: the first
    two replies the domain's rule separates (source "policy"); else, for arithmetic and tool when no
    reply is right, the known right reply against a wrong one ("reference"); else a right or ended reply
    against its `worse_variant` ("perturbed"). Several domains from the same sampled replies, so a
    held-out set per domain costs no extra sampling. Each record carries `prompt_id` (`group` + index) so
    splits can keep a prompt's pairs together."""
    rng = random.Random(f"puyu-domain-pairs-{seed}")
    out = []
    for n, (sample, reps) in enumerate(zip(samples, replies)):
        ref = reference_reply(sample)
        for domain in DOMAINS_OF_KIND[sample["kind"]]:
            found, source = None, "policy"
            for i in range(len(reps)):
                for j in range(i + 1, len(reps)):
                    v = domain_verdict(sample, reps[i], reps[j], domain)
                    if v is not None:
                        found = (reps[i], reps[j]) if v == 0 else (reps[j], reps[i])
                        break
                if found:
                    break
            if found is None and domain in ("arithmetic", "tool") and ref is not None and reps and \
                    all(V.score(r.content, sample) == 0.0 for r in reps):
                found, source = (ref, reps[0]), "reference"
            if found is None:
                right = [r for r in reps if V.score(r.content, sample) == 1.0 and r.end]
                base = (right or [r for r in reps if r.end] or ([ref] if ref else []))
                bad = worse_variant(sample, base[0], domain, rng) if base else None
                if bad is None and ref is not None and base and base[0] is not ref:
                    base = [ref]
                    bad = worse_variant(sample, ref, domain, rng)
                if bad is not None:
                    found, source = (base[0], bad), "perturbed"
            if found is None:
                continue
            rec = {"system": domain, "domain": domain, "messages": sample["messages"], "chosen": found[0].to_json(),
                   "rejected": found[1].to_json(), "source": source, "prompt_id": f"{group}{n}"}
            if sample.get("tools"):
                rec["tools"] = sample["tools"]
            out.append(rec)
    return out


# ---- files and token ids -------------------------------------------------------------------------
def _reply(value, where: str) -> Reply:
    if isinstance(value, str):
        return Reply(value, True)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        end = value.get("end", True)
        if not isinstance(end, bool):
            raise PairError(f"{where}: 'end' must be true or false")
        return Reply(value["content"], end)
    raise PairError(f"{where}: a reply must be a string or {{\"content\": str, \"end\": bool}}")


def check_pair(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise PairError(f"{where}: a pair must be a JSON object")
    for key in ("messages", "chosen", "rejected"):
        if key not in rec:
            raise PairError(f"{where}: missing key {key!r} (a pair is {{\"system\"?, \"messages\", \"chosen\", \"rejected\"}})")
    if not isinstance(rec["messages"], list) or not all(isinstance(m, dict) and "role" in m for m in rec["messages"]):
        raise PairError(f"{where}: 'messages' must be a list of {{\"role\", \"content\"}} objects")
    if "system" in rec and rec["system"] is not None and not isinstance(rec["system"], str):
        raise PairError(f"{where}: 'system' must be a domain name or text")
    _reply(rec["chosen"], where + " chosen")
    _reply(rec["rejected"], where + " rejected")
    return rec


def read_pairs(path: str | Path) -> list[dict]:
    """Pairs from a JSONL file, each checked (PairError names the line)."""
    p = Path(path)
    if not p.is_file():
        raise PairError(f"pair file {p} does not exist")
    lines = [n for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    out = [check_pair(rec, f"{p}:{n}") for n, rec in zip(lines, read_jsonl(p, PairError))]
    if not out:
        raise PairError(f"pair file {p} holds no pairs")
    return out


def write_pairs(path: str | Path, pairs: list[dict]) -> None:
    write_jsonl(path, pairs)


def pair_domain(rec: dict) -> str:
    s = rec.get("system")
    return rec.get("domain") or (s if s in DOMAINS else ("custom" if s else "none"))


def prompt_messages(rec: dict) -> list[dict]:
    """The prompt as the reward model reads it: the domain rubric (or the given system text) first."""
    s = rec.get("system")
    if s in DOMAINS:
        return with_domain(rec["messages"], s)
    return ([{"role": "system", "content": s}] if s else []) + list(rec["messages"])


def reply_ids(tok, reply: Reply, newline: bool = True) -> list[int]:
    """An assistant turn's body tokens, then `<|im_end|>` (and the newline the template puts after it,
    with `newline`) when the turn ended."""
    ids = tok.encode(reply.content, allow_special=True)
    if reply.end:
        ids += [tok.special_ids[IM_END]] + (tok.encode("\n") if newline else [])
    return ids


def prompt_ids(tok, messages: list[dict], tools=None, interpreter=None) -> list[int]:
    return tok.encode(render_chat(messages, tools=tools, interpreter=interpreter, add_generation_prompt=True),
                      allow_special=True)


def pair_ids(tok, rec: dict, reward_token_id: int | None = None) -> tuple[list[int], list[int], int]:
    """(chosen ids, rejected ids, prompt length) of a pair; with `reward_token_id`, each sequence ends
    with it (reward-model inputs), without it they are policy inputs (DPO)."""
    msgs = prompt_messages(rec) if reward_token_id is not None else list(rec["messages"])
    head = prompt_ids(tok, msgs, rec.get("tools"), rec.get("interpreter"))
    tail = [reward_token_id] if reward_token_id is not None else []
    nl = reward_token_id is not None
    c = head + reply_ids(tok, _reply(rec["chosen"], "chosen"), nl) + tail
    r = head + reply_ids(tok, _reply(rec["rejected"], "rejected"), nl) + tail
    return c, r, len(head)
