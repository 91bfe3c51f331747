"""The model layer: the exact InternLM2 architecture and everything needed to load, describe and talk to it.

config (ModelConfig and presets), transformer (InternLM2ForCausalLM), rope (rotary embeddings and their
scaling), checkpoint (Hugging Face directories: read, write, load_model), llama_layout and convert (the
LLaMA layout), tokenizer (SentencePiece with InternLM2's ids), chat_format (render_chat, the Jinja
template and the encoding of conversations into token ids), info (`puyu info`).

Layer rule (import-linter, pyproject.toml): the lowest layer; imports only `puyu.errors`.
"""
