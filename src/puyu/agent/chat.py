"""`puyu chat`: a multi-turn terminal chat with the InternLM2 template, streamed as it decodes.

    puyu chat --model runs/sft                      # plain chat (or: puyu chat runs/sft)
    puyu chat --model runs/sft --system "Be brief."
    puyu chat --model runs/sft --tools --interpreter  # the agent: calculator and a sandboxed Python

Commands at the prompt: `/reset` forgets the conversation (keeps the system prompt), `/system TEXT`
sets the system prompt (and resets), `/exit` (or Ctrl-D) quits. Ctrl-C during a reply stops that reply
(its cache is freed) and returns to the prompt. Replies stop at `<|im_end|>` and `</s>`.

With `--tools` and/or `--interpreter` each turn runs through `puyu.agent.loop.Agent` with the engine-backed
`puyu.engine.scheduler.chat_policy`; tool calls, their results and saved images are shown between the text.
"""

from __future__ import annotations

import argparse
import sys

from puyu.engine.generate import (
    add_model_arguments,
    add_sampling_arguments,
    load_model_and_tokenizer,
    make_engine,
    sampling_from_args,
)
from puyu.errors import PuyuError

PROMPT = ">>> "
HELP = "commands: /reset  /system TEXT  /exit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_path", nargs="?", metavar="MODEL", help="same as --model")
    add_model_arguments(p, required=False)
    add_sampling_arguments(p, max_new_tokens=1024)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--tools", action="store_true", help="let the model call the built-in tools (calculator ...)")
    p.add_argument("--interpreter", action="store_true", help="let the model run Python in the sandboxed interpreter")
    p.add_argument("--workdir", help="working directory for the interpreter and the read_file tool")
    p.add_argument("--max-steps", type=int, default=8, help="tool/interpreter actions per turn (with the agent)")


class ChatSession:
    """The conversation state and one reply per user line; `reply` writes to `out` as it streams."""

    def __init__(self, engine, tokenizer, params, system: str | None = None, agent=None, out=sys.stdout):
        self.engine, self.tokenizer, self.params, self.agent, self.out = engine, tokenizer, params, agent, out
        self.system = system
        self.messages: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def handle(self, line: str) -> bool:
        """Act on one input line; False means quit."""
        text = line.strip()
        if not text:
            return True
        if text in ("/exit", "/quit"):
            return False
        if text == "/reset":
            self.reset()
            self._say("(conversation reset)")
        elif text.startswith("/system"):
            self.system = text[len("/system"):].strip() or None
            self.reset()
            self._say(f"(system prompt {'set' if self.system else 'cleared'}; conversation reset)")
        elif text.startswith("/"):
            self._say(f"unknown command {text.split()[0]}; {HELP}")
        else:
            self.messages.append({"role": "user", "content": line.rstrip("\n")})
            try:
                self.reply()
            except PuyuError as e:  # e.g. the conversation no longer fits the cache
                self.messages.pop()
                self._say(f"error: {e}\n(type /reset to start a new conversation)")
        return True

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def reply(self) -> None:
        if self.agent is not None:
            return self._agent_reply()
        from puyu.model.chat_format import encode_chat

        prompt = encode_chat(self.engine.tokenizer, self.messages, None)  # contents stay plain text
        parts: list[str] = []
        stream = self.engine.stream(prompt, self.engine.fit(prompt, self.params))
        try:
            for delta in stream:
                parts.append(delta.text)
                self._write(delta.text)
        except KeyboardInterrupt:
            stream.close()  # cancels the request and frees its cache
            self._write(" [interrupted]")
        self._write("\n")
        self.messages.append({"role": "assistant", "content": "".join(parts)})

    def _agent_reply(self) -> None:
        from puyu.agent.loop import Error, Final, Image, TextDelta, ToolCall, ToolOutput

        for ev in self.agent.stream(self.messages):
            if isinstance(ev, TextDelta):
                self._write(ev.text)
            elif isinstance(ev, ToolCall):
                if ev.kind == "interpreter":  # code None: the action held none (the result says so next)
                    what = "(no code)" if ev.code is None else ev.code
                else:
                    what = f"{ev.name}({ev.arguments})"
                self._write(f"\n[{ev.kind}] {what}\n")
            elif isinstance(ev, ToolOutput):
                self._write(f"[result{'' if ev.ok else ' (error)'}] {ev.content}\n")
            elif isinstance(ev, Image):
                self._write(f"[image] {ev.path}\n")
            elif isinstance(ev, Error):
                self._write(f"[error] {ev.message}\n")
            elif isinstance(ev, Final):
                self.messages = list(ev.messages)
        self._write("\n")


def make_agent(args: argparse.Namespace, engine, params):
    """The tool-using agent over the engine, or None when neither --tools nor --interpreter is given."""
    if not (args.tools or args.interpreter):
        return None
    try:
        from puyu.agent.loop import Agent
        from puyu.agent.tools import default_tools
    except ImportError as e:
        raise PuyuError(f"--tools/--interpreter need the agent module ({e})") from None
    from puyu.engine.scheduler import chat_policy

    tools = default_tools(args.workdir) if args.tools else None
    return Agent(chat_policy(engine, params), tools=tools, interpreter=True if args.interpreter else None,
                 max_steps=args.max_steps, workdir=args.workdir)


def run(args: argparse.Namespace) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    args.model = args.model or args.model_path
    if not args.model:
        raise PuyuError("which model? puyu chat --model PATH (a checkpoint directory)")
    model, tokenizer = load_model_and_tokenizer(args, need_tokenizer=True)
    params = sampling_from_args(args, tokenizer.stop_ids)
    with make_engine(args, model, tokenizer, max_batch_size=1) as engine:
        agent = make_agent(args, engine, params)
        session = ChatSession(engine, tokenizer, params, system=args.system, agent=agent)
        print(f"puyu chat ({args.model}); {HELP}", flush=True)
        try:
            while True:
                try:
                    line = input(PROMPT)
                except EOFError:
                    print()
                    break
                except KeyboardInterrupt:
                    print()
                    break
                if not session.handle(line):
                    break
        finally:
            if agent is not None:
                agent.close()
    return 0
