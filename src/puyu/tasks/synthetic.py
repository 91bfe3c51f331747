"""Synthetic task data for the nano recipe, generated from a seed (identical on every machine).

- Arithmetic: `a+b=` and `a-b=` with a, b < 100 and < 1000, as prompt/completion records
  (`{"prompt": "12+34=", "completion": "46"}`; the shard writer adds `<s>` and `</s>`, and trains on the
  completion and `</s>` only). The question is written exactly as a user types it; the answer is the
  plain decimal result (negative results keep their sign). A fixed, seeded set of test problems is held
  out of every training record, so the reported accuracy is on problems the model never saw.
- Passkey retrieval: a 5-digit key hidden at a random depth in repeated filler text, asked for at the
  end (the "needle in a haystack" test of the long-context literature, scaled down).
- Copying: "Repeat after me" records with random content, which teach copying from the context.
- Short chats, tool-call dialogues and code-interpreter dialogues in the InternLM2 chat format
  (`messages` records with `tools` / `interpreter`, rendered by `puyu.model.chat_format`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from puyu.tasks.jsonl import write_jsonl  # noqa: F401  (re-exported: the recipes write their data with it)

# ---- arithmetic ----------------------------------------------------------------------------------
OPS = ("+", "-")


def answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> str:
        return str(answer(self.a, self.op, self.b))


def arithmetic_cell(p: Problem) -> str:
    """The problem's cell for per-cell accuracy and data counts: operator, digit counts of a and b and of
    the result, and its sign, e.g. `"+ 1d2d =2d"`, `"- 2d2d =1d neg"` (12-19=-7), `"- 2d1d =2d"`."""
    r = answer(p.a, p.op, p.b)
    cell = f"{p.op} {len(str(p.a))}d{len(str(p.b))}d ={len(str(abs(r)))}d"
    return cell + " neg" if r < 0 else cell


def held_out_problems(seed: int, n_small: int, n_big: int) -> tuple[list[Problem], list[Problem]]:
    """Test problems: `n_small` with a, b < 100 and `n_big` with a, b < 1000 (distinct, half + half -),
    drawn from their own seed. Training generators skip all of them."""
    rng = random.Random(f"puyu-arith-test-{seed}")
    out = []
    for n, limit in ((n_small, 100), (n_big, 1000)):
        chosen: set[Problem] = set()
        while len(chosen) < n:
            op = OPS[len(chosen) % 2]
            chosen.add(Problem(rng.randrange(limit), op, rng.randrange(limit)))
        out.append(sorted(chosen, key=lambda p: (p.op, p.a, p.b)))
    return out[0], out[1]


def _training_problem(rng: random.Random, p_big: float, exclude: set[Problem],
                      p_short: float | None = None, p_close: float = 0.0) -> Problem:
    """One training problem not in `exclude`: operands < 1000 with probability `p_big`, else < 100.
    For < 100: each operand has one digit with probability `p_short` (None: uniform over 0..99, so 0.1),
    and a subtraction has |a-b| <= 9 (a one-digit result, either sign) with probability `p_close`."""
    while True:
        if rng.random() < p_big:
            p = Problem(rng.randrange(1000), rng.choice(OPS), rng.randrange(1000))
        elif p_short is None and not p_close:
            p = Problem(rng.randrange(100), rng.choice(OPS), rng.randrange(100))
        else:
            op = rng.choice(OPS)
            if op == "-" and rng.random() < p_close:
                a = rng.randrange(100)
                b = a + rng.randint(-9, 9)
                if not 0 <= b < 100:
                    continue
            else:
                a, b = (rng.randrange(100) if p_short is None else
                        rng.randrange(10) if rng.random() < p_short else rng.randrange(10, 100) for _ in "ab")
            p = Problem(a, op, b)
        if p not in exclude:
            return p


def arithmetic_records(rng: random.Random, n: int, p_big: float, exclude: set[Problem],
                       p_sheet: float = 0.0, max_sheet: int = 4, p_prefix: float = 0.0,
                       p_short: float | None = None, p_close: float = 0.0) -> list[dict]:
    """`n` records; a fraction `p_big` of problems with operands < 1000, the rest < 100. Most are one
    problem (prompt/completion); a fraction `p_sheet` are "worksheets" of 2..max_sheet problems, one
    per line, trained on every answer, so that problems also appear after other text in a document;
    a fraction `p_prefix` are one problem after unrelated text (`context_prefix`, no loss on it).
    `p_short` and `p_close` reweight the < 100 problems toward one-digit operands and one-digit
    differences (`_training_problem`; None and 0.0: uniform operands).

    Why the reweighting: a nano base model trained on uniform operands (nano recipe, pretraining lr
    5e-4, seeds 0-2) got a+b and a-b with two-digit operands and a two-digit result 85-100% right, but
    a-b with two-digit operands and a one-digit result 13-24% (about 1 held-out problem in 10) and
    problems with a one-digit operand 50-97% (about 1 in 5); `benchmarks/arith_cells.py`.

    Why the last two: the position of a token restarts in every packed document, and a nano model
    trained only on problems at a document's start computes them there and almost nowhere else
    (nano recipe, fp32 run of 2026-11-30: 81.5% at the start, 10% after "The sky is blue.\n",
    about the rate through the chat template)."""
    out = []
    while len(out) < n:
        u = rng.random()
        if u < p_prefix:
            p = _training_problem(rng, p_big, exclude, p_short, p_close)
            out.append({"segments": [[context_prefix(rng) + p.prompt, False], [p.answer, True]]})
        elif u < p_prefix + p_sheet:
            segs = []
            for k in range(rng.randint(2, max_sheet)):
                p = _training_problem(rng, p_big, exclude, p_short, p_close)
                segs += [[("\n" if k else "") + p.prompt, False], [p.answer, True]]
            out.append({"segments": segs})
        else:
            p = _training_problem(rng, p_big, exclude, p_short, p_close)
            out.append({"prompt": p.prompt, "completion": p.answer})
    return out


def context_prefix(rng: random.Random) -> str:
    """Unrelated text put before an arithmetic problem: 1-16 random words (or sentences of the passkey
    filler), then a newline, a colon or a space."""
    if rng.random() < 0.5:
        words = rng.choices(COPY_WORDS, k=rng.randint(1, 16))
        text = " ".join(words)
        text = text[0].upper() + text[1:]
    else:
        sentences = [x.strip() + "." for x in FILLER.split(".") if x.strip()]
        text = " ".join(rng.choices(sentences, k=rng.randint(1, 4)))
    return text + rng.choice(["\n", "\n", ": ", " "])


# ---- passkey -------------------------------------------------------------------------------------
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_INTRO = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and "
                 "memorize it. I will quiz you about the pass key.\n")
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is "


def passkey_prompt(key: int, n_filler: int, depth: float) -> str:
    """The passkey prompt with `n_filler` filler blocks, the key after a fraction `depth` of them.
    The model must continue with the key's digits."""
    before = round(n_filler * depth)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return PASSKEY_INTRO + FILLER * before + needle + FILLER * (n_filler - before) + PASSKEY_QUESTION


def passkey_filler_range(tokenizer, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """Filler-block counts (lo, hi) whose whole passkey document (`<s>`, prompt, key, `</s>`) is
    about `min_tokens` to at most `max_tokens` tokens with this tokenizer."""
    frame = len(tokenizer.encode(passkey_prompt(99999, 0, 0.5) + "99999.")) + 2
    block = len(tokenizer.encode(FILLER * 8)) / 8
    hi = max(0, int((max_tokens - frame) // block))
    lo = min(hi, max(0, -int(-(min_tokens - frame) // block)))
    return lo, hi


def passkey_records(rng: random.Random, n: int, min_filler: int, max_filler: int) -> list[dict]:
    """Passkey documents as plain text (loss on every token: the filler repeats and the key is said
    again at the end, which teaches copying from far back)."""
    out = []
    for _ in range(n):
        key = rng.randrange(10000, 100000)
        prompt = passkey_prompt(key, rng.randint(min_filler, max_filler), rng.random())
        out.append({"text": f"{prompt}{key}."})
    return out


# ---- copying -------------------------------------------------------------------------------------


def copy_records(rng: random.Random, n: int, min_items: int, max_items: int, p_list: float = 0.0) -> list[dict]:
    """"Repeat after me" records: a random sequence of numbers and words, then the same sequence as the
    completion. The content is random, so it can only be predicted by copying from the context; this
    grows the copying (induction) circuits that passkey retrieval and chat answers rely on.

    A fraction `p_list` asks for the items as a JSON list (`["Oslo", "red", "12"]`). There a word is
    a different token than in the question (`" Oslo"` with its space, `"Oslo"` after a quote, with the
    nano tokenizer), the same change a tool call's argument makes (`in Oslo?` -> `{"city": "Oslo"}`);
    the words include the tool dialogues' city names."""
    out = []
    for _ in range(n):
        items = [str(rng.randrange(10 ** rng.randint(1, 5))) if rng.random() < 0.5 else rng.choice(COPY_WORDS)
                 for _ in range(rng.randint(min_items, max_items))]
        seq = " ".join(items)
        if rng.random() < p_list:
            out.append({"prompt": f"Repeat after me as a list: {seq}\nList:", "completion": " " + json.dumps(items)})
        else:
            out.append({"prompt": f"Repeat after me: {seq}\nRepeat:", "completion": " " + seq})
    return out


# ---- chats ---------------------------------------------------------------------------------------
SYSTEM = "You are puyu, a small assistant trained from scratch on a CPU. Answer briefly."
GREETINGS = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi, who are you?", "I am puyu, a small InternLM2-style model trained from scratch on a CPU."),
    ("What can you do?", "I can do small sums, find a pass key in a text, call tools and run Python code."),
    ("Thank you!", "You are welcome."),
    ("Good morning.", "Good morning! What would you like to do?"),
    ("What is InternLM2?", "InternLM2 is an open large language model family from Shanghai AI Laboratory."),
    ("Which architecture do you use?", "A decoder-only transformer with grouped-query attention, RMSNorm, "
     "SwiGLU and rotary position embeddings, like InternLM2."),
    ("Bye.", "Goodbye!"),
]
ARITH_QUESTIONS = ["{p}", "What is {q}?", "Compute {q}.", "{q} = ?", "Please calculate {q}."]


def arithmetic_chat(rng: random.Random, exclude: set[Problem], p_big: float, p_close: float = 0.0) -> dict:
    """A user's arithmetic question answered `a+b=c` (a system prompt half the time); the problem as
    `_training_problem` draws it (`p_close`: one-digit-result subtractions reweighted)."""
    p = _training_problem(rng, p_big, exclude, p_close=p_close)
    q = rng.choice(ARITH_QUESTIONS).format(p=p.prompt, q=p.prompt[:-1])
    msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": f"{p.prompt}{p.answer}"}]
    if rng.random() < 0.5:
        msgs.insert(0, {"role": "system", "content": SYSTEM})
    return {"messages": msgs}


def doc_chat(rng: random.Random, doc_facts: list[tuple[str, str]]) -> dict:
    """A question about a standard-library function answered with the first line of its docstring."""
    name, line = rng.choice(doc_facts)
    q = rng.choice(["What does {n} do?", "Explain {n} briefly.", "What is {n} for?"]).format(n=name)
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                         {"role": "assistant", "content": f"{name}: {line}"}]}


def greeting_chat(rng: random.Random) -> dict:
    turns = rng.sample(GREETINGS, k=rng.randint(1, 2))
    msgs = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.7 else []
    for q, a in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Current local time of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]
CITIES = ["Paris", "Shanghai", "Tokyo", "Lima", "Oslo", "Cairo", "Sydney", "Boston", "Delhi", "Rome"]
# More city names for pretraining tool dialogues (`corpus.pretrain_tool_cities`): with the demo's ten alone a
# model can lower its loss on the argument by a prior over ten names instead of copying the question's.
MORE_CITIES = ("Berlin Madrid Lisbon Vienna Prague Warsaw Dublin Athens Helsinki Stockholm Copenhagen Zurich "
               "Geneva Milan Naples Munich Hamburg Lyon Seville Porto Krakow Budapest Bucharest Sofia Riga "
               "Vilnius Tallinn Kyiv Istanbul Ankara Tehran Dubai Doha Riyadh Karachi Mumbai Chennai Dhaka "
               "Bangkok Hanoi Manila Jakarta Seoul Busan Osaka Kyoto Beijing Taipei Perth Auckland Toronto "
               "Montreal Vancouver Chicago Denver Seattle Houston Miami Havana Bogota Quito Santiago Caracas "
               "Nairobi Lagos Accra Dakar Tunis Casablanca Johannesburg").split()
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"]
COPY_WORDS = ("red green blue apple river stone seven lamp cloud paper tiger music north silver "
              "window garden bread candle forest orange").split() + CITIES
# Questions per tool: training phrasings, and held-out ones that only the evaluation asks.
TOOL_QUESTIONS = {
    "get_weather": (["What is the weather in {c}?", "How is the weather in {c} today?", "Weather in {c}?",
                     "What's the weather like in {c}?", "Tell me the weather in {c}.",
                     "Check the weather in {c}, please.", "Is it sunny in {c}?", "Weather report for {c}?"],
                    ["How is the weather in {c} right now?", "Could you check the weather in {c}?",
                     "What is the weather like today in {c}?"]),
    "get_time": (["What time is it in {c}?", "Tell me the time in {c}.", "Local time in {c}?",
                  "What is the time in {c} now?", "Time in {c}?", "What's the local time in {c}?",
                  "Check the time in {c}, please.", "What is the current time in {c}?"],
                 ["What time is it now in {c}?", "Could you tell me the local time in {c}?",
                  "Current time in {c}, please?"]),
}
MULTIPLY_QUESTIONS = (["Use Python to compute {a}*{b}.", "Use Python to compute {a}*{b}.",
                       "Compute {a}*{b} with Python.", "Run code to multiply {a} by {b}."],
                      ["Use Python to compute {a}*{b}."])


def tool_call_question(rng: random.Random, call: str, city: str, held_out: bool = False) -> str:
    """A user question for tool `call` about `city`, from the training or the held-out phrasings."""
    return rng.choice(TOOL_QUESTIONS[call][1 if held_out else 0]).format(c=city)


def tool_chat(rng: random.Random, cities=CITIES) -> dict:
    """User asks; assistant calls a tool (plugin action); the environment answers; assistant replies.
    The city is drawn from `cities` (default: the demo's ten, which the evaluation asks about)."""
    city = rng.choice(cities)
    call = rng.choice(["get_weather", "get_time"])
    q = tool_call_question(rng, call, city)
    if call == "get_weather":
        temp, cond = rng.randint(-5, 35), rng.choice(CONDITIONS)
        result = json.dumps({"city": city, "temperature_c": temp, "condition": cond})
        reply = f"It is {cond} in {city}, {temp} degrees Celsius."
    else:
        hh, mm = rng.randrange(24), rng.randrange(60)
        result = json.dumps({"city": city, "time": f"{hh:02d}:{mm:02d}"})
        reply = f"It is {hh:02d}:{mm:02d} in {city}."
    msgs = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": q},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": call, "arguments": {"city": city}}}]},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": reply}]
    return {"messages": msgs, "tools": TOOLS}


def with_city(rec: dict, city: str) -> dict:
    """A copy of a `tool_chat` record asking about `city` instead: the question, the call's argument, the
    tool's result and the reply all name it. Raises ValueError for a record that is not a tool chat."""
    calls = [m for m in rec.get("messages", []) if m.get("tool_calls")]
    if not calls:
        raise ValueError("with_city: not a tool chat (no assistant message with tool_calls)")
    old = calls[0]["tool_calls"][0]["function"]["arguments"]["city"]
    msgs = []
    for m in rec["messages"]:
        m = dict(m)
        if m.get("role") != "system":
            m["content"] = m["content"].replace(old, city)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**tc, "function": {**tc["function"], "arguments": {**tc["function"]["arguments"],
                                                                                   "city": city}}}
                               for tc in m["tool_calls"]]
        msgs.append(m)
    return {**rec, "messages": msgs}


def interpreter_arithmetic_code(p: Problem) -> str:
    """The code the model should send for a+b / a-b when it has the interpreter. Written without spaces,
    as the question writes it: with the nano tokenizer `+` and ` +` are different tokens, and a nano
    model wrote the wrong operator in 34 of 100 such calls (fp32 run of 2026-11-30; 0 of 100 after);
    without spaces the operator is a plain copy."""
    return f"print({p.a}{p.op}{p.b})"


def interpreter_chat(rng: random.Random, exclude: frozenset | set = frozenset(), p_arith: float = 0.4) -> dict:
    """User asks for a computation; assistant writes Python (interpreter action); the environment
    returns the printed output; assistant states the result. A fraction `p_arith` are plain a+b / a-b
    questions (a, b < 1000, the chat arithmetic phrasings, `exclude` skipped): with an interpreter the
    model sends them to it and answers `The answer is <output>.`"""
    if rng.random() < p_arith:
        p = _training_problem(rng, 0.7, exclude)
        q = rng.choice(ARITH_QUESTIONS).format(p=p.prompt, q=p.prompt[:-1])
        # The reply states the printed output; "a+b=..." would invite computing it again (which a nano
        # model does badly for a, b < 1000) instead of copying it.
        code, out, reply = interpreter_arithmetic_code(p), p.answer, f"The answer is {p.answer}."
    else:
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randrange(100, 10000), rng.randrange(100, 10000)
            q = rng.choice(MULTIPLY_QUESTIONS[0]).format(a=a, b=b)
            code, out = f"print({a}*{b})", str(a * b)  # `*` as in the question (see interpreter_arithmetic_code)
            reply = f"{a}*{b} = {out}."
        elif kind == 1:
            n = rng.randrange(5, 40)
            q, code, out = f"What is the sum of the integers from 1 to {n}? Use code.", f"print(sum(range(1, {n + 1})))", str(n * (n + 1) // 2)
            reply = f"The sum is {out}."
        else:
            n = rng.randrange(3, 15)
            q = f"Run code to find {n} factorial."
            code = f"import math\nprint(math.factorial({n}))"
            out = str(_factorial(n))
            reply = f"{n}! = {out}."
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
            {"role": "assistant", "content": "", "code": code},
            {"role": "environment", "name": "interpreter", "content": out},
            {"role": "assistant", "content": reply}]
    return {"messages": msgs, "interpreter": True}


def _factorial(n: int) -> int:
    out = 1
    for i in range(2, n + 1):
        out *= i
    return out


def chat_records(rng: random.Random, n: int, exclude: set[Problem], doc_facts: list[tuple[str, str]],
                 weights: dict[str, float]) -> list[dict]:
    """`n` conversations drawn by `weights` over kinds: arithmetic, docs, greeting, tool, interpreter."""
    kinds = list(weights)
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        if kind == "arithmetic":
            out.append(arithmetic_chat(rng, exclude, p_big=0.2))
        elif kind == "docs" and doc_facts:
            out.append(doc_chat(rng, doc_facts))
        elif kind == "tool":
            out.append(tool_chat(rng))
        elif kind == "interpreter":
            out.append(interpreter_chat(rng, exclude))
        else:
            out.append(greeting_chat(rng))
    return out


