"""GGUF files: puyu -> GGUF -> puyu round trips per type, the exact Q4_0 -> int4 mapping, the Q8_0 re-quantization
bound, llama.cpp's q/k row order, metadata and tokenizer, refusal of unsupported types, corrupt files.

The references here decode GGUF blocks with this file's own code, written from the published block layouts
(ggml's `block_q8_0`: fp16 d, 32 int8; `block_q4_0`: fp16 d, 16 bytes, weight i in the low nibble of byte i and
weight i + 16 in its high nibble, value d * (q - 8)), and read the file's bytes through `gguf.GGUFReader`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from puyu.cli import main  # noqa: E402
from puyu.model import gguf_file  # noqa: E402
from puyu.model.checkpoint import load_model, save_pretrained  # noqa: E402
from puyu.model.config import ModelConfig  # noqa: E402
from puyu.model.gguf_file import GGUFError, gguf_config, write_gguf_from_model  # noqa: E402
from puyu.model.quant import QuantEmbedding, QuantLinear  # noqa: E402

REAL_TOK = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "internlm2" / "tokenizer.model"
TINY = "tiny"  # the session's tiny trained tokenizer (tests/conftest.py)
CFG = dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
           torch_dtype="float32")


def tiny(seed: int = 0, **over):
    from puyu.model.transformer import InternLM2ForCausalLM

    m = InternLM2ForCausalLM(ModelConfig(**{**CFG, **over})).reset_parameters(seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial norms and larger weights, so every tensor's mapping shows in the logits
        for n, p in m.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))
    return m


IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(3))


def logits(m):
    with torch.no_grad():
        return m(IDS)


def with_weights(model, fn):
    """A copy of a float model with every matrix replaced by fn(name, weight)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() == 2:
                p.copy_(fn(n, p.detach().clone()))
    return m


# ---- independent decoding of the stored blocks ------------------------------------------------------
def _decode(raw: np.ndarray, type_name: str, K: int) -> np.ndarray:
    rows = raw.reshape(raw.shape[0], -1)
    if type_name == "Q8_0":
        b = rows.reshape(rows.shape[0], K // 32, 34)
        d = b[:, :, :2].copy().view(np.float16).astype(np.float32)  # [N, nb, 1]
        q = b[:, :, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(rows.shape[0], K)
    assert type_name == "Q4_0"
    b = rows.reshape(rows.shape[0], K // 32, 18)
    d = b[:, :, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, :, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32)  # weights 0..15 then 16..31
    return (d * (q - 8)).reshape(rows.shape[0], K)


def _block_scales(raw: np.ndarray, K: int, size: int) -> np.ndarray:
    b = raw.reshape(raw.shape[0], K // 32, size)
    return np.abs(b[:, :, :2].copy().view(np.float16).astype(np.float32))[:, :, 0]


def _hf_rows(n_head: int, D: int) -> np.ndarray:
    """GGUF row of each Hugging Face q/k row: in each head, HF row r sits at 2 * (r mod D/2) + r div (D/2)."""
    r = np.arange(D)
    within = 2 * (r % (D // 2)) + r // (D // 2)
    return np.concatenate([h * D + within for h in range(n_head)])


def gguf_weights(path: Path) -> dict[str, np.ndarray]:
    """Each matrix of the file decoded (float32, GGUF row order) by the code above."""
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        K = int(t.shape[0])
        name = t.tensor_type.name
        if name in ("Q8_0", "Q4_0"):
            out[t.name] = (_decode(np.asarray(t.data), name, K), name, np.asarray(t.data).reshape(-1, t.data.shape[-1]))
        elif name in ("F32", "F16"):
            out[t.name] = (np.asarray(t.data).astype(np.float32).reshape(-1, K), name, None)
    return out


# ---- round trips ------------------------------------------------------------------------------------
def test_f32_round_trip_is_exact_and_config_matches(tmp_path):
    m = tiny()
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "f32")
    back = load_model(f)
    assert torch.equal(logits(back), logits(m))
    cfg = gguf_config(f)
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rope_theta", "bias"):
        assert getattr(cfg, k) == getattr(m.config, k), k
    assert cfg.rms_norm_eps == pytest.approx(m.config.rms_norm_eps, rel=1e-6)  # stored as float32


def test_llama_architecture_and_bias_round_trip(tmp_path):
    m = tiny(seed=4, bias=True, rope_scaling={"type": "linear", "factor": 2.0})
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "f32", arch="llama")
    assert gguf.GGUFReader(f).fields["general.architecture"].contents() == "llama"
    back = load_model(f)
    assert back.config.bias and back.config.rope_scaling == {"type": "linear", "factor": 2.0}
    assert torch.equal(logits(back), logits(m))


def test_f16_round_trip_equals_the_fp16_rounded_model(tmp_path):
    m = tiny(seed=1)
    back = load_model(write_gguf_from_model(m, tmp_path / "m.gguf", "f16"))
    assert torch.equal(logits(back), logits(with_weights(m, lambda n, w: w.half().float())))
    assert not torch.equal(logits(back), logits(m))  # the rounding is visible: the comparison can fail


def test_bf16_loads_packed_exactly(tmp_path):
    m = tiny(seed=2)
    back = load_model(write_gguf_from_model(m, tmp_path / "m.gguf", "bf16"))
    assert back.model.layers[0].attention.wqkv.fmt == "bf16"
    ref = with_weights(m, lambda n, w: w.bfloat16().float())
    torch.testing.assert_close(logits(back), logits(ref), rtol=0, atol=1e-5)


def test_layer_rows_follow_llama_cpp_order(tmp_path):
    """q and k rows are stored permuted (checked against the published formula), v and the rest as they are."""
    from puyu.model.llama_layout import unpack_wqkv

    m = tiny(seed=5)
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "f32")
    w = gguf_weights(f)
    c = m.config
    q, k, v = unpack_wqkv(m.model.layers[1].attention.wqkv.weight.detach(), c)
    order_q, order_k = _hf_rows(c.num_attention_heads, c.head_dim), _hf_rows(c.num_key_value_heads, c.head_dim)
    got_q, got_k, got_v = (w[f"blk.1.attn_{x}.weight"][0] for x in "qkv")
    assert np.array_equal(got_q[order_q], q.numpy()) and np.array_equal(got_k[order_k], k.numpy())
    assert np.array_equal(got_v, v.numpy())
    assert np.array_equal(w["blk.1.ffn_gate.weight"][0], m.model.layers[1].feed_forward.w1.weight.detach().numpy())


def test_q8_0_bound_and_int8_requantization(tmp_path):
    m = tiny(seed=6)
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "q8_0")
    exact = load_model(f, weights="f32")  # every tensor dequantized to float32: the file's own values
    w = gguf_weights(f)
    wq = exact.model.layers[0].attention.wqkv.weight.detach()
    # the file's values against the original weights: q = round(w / d) with the exact d = amax / 127, stored
    # as fp16 (relative error <= 2^-11): |w - q d16| <= d / 2 + 127 d 2^-11
    for gname, pname in (("blk.0.ffn_down.weight", "model.layers.0.feed_forward.w2.weight"),
                         ("token_embd.weight", "model.tok_embeddings.weight")):
        vals, _, raw = w[gname]
        orig = dict(m.named_parameters())[pname].detach().numpy()
        K = orig.shape[1]
        d = np.repeat(_block_scales(raw, K, 34), 32, axis=1)
        assert np.all(np.abs(vals - orig) <= d * (0.5 + 127 * 2.0**-11) * (1 + 1e-3))
        assert np.array_equal(dict(exact.named_parameters())[pname].detach().numpy(), vals)
    native = load_model(f)  # int8 per row, re-quantized from the file's values
    assert native.model.layers[0].attention.wqkv.fmt == "int8"
    deq = native.model.layers[0].attention.wqkv.packed.dequantize()
    s = wq.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((deq - wq).abs() <= s / 2 * (1 + 1e-5))
    # logits: documented bound for Q8_0 read as int8 (README): within 2% of the logits' range of the file's values
    a, b = logits(native), logits(exact)
    assert (a - b).abs().max() <= 0.02 * (b.max() - b.min())


def test_a_quantized_gguf_with_a_16_bit_dtype_is_refused_naming_the_packed_tensor(tmp_path):
    """A Q8_0 file loads packed (no weights= asked): the rest of the model runs in float32, as with weights=, so
    dtype bfloat16 is refused at the first packed tensor (the engine failed mid-generation before); an f16 file
    with weights unset has nothing packed that forbids it."""
    from puyu.errors import CheckpointError

    q8 = write_gguf_from_model(tiny(seed=6), tmp_path / "q8.gguf", "q8_0")
    with pytest.raises(CheckpointError, match=r"q8\.gguf \(GGUF .* packed as int8\): the model around its packed "
                                              r"layers runs in float32 .* not bfloat16"):
        load_model(q8, dtype="bfloat16")
    assert isinstance(load_model(q8).model.layers[0].feed_forward.w2, QuantLinear)
    f16 = write_gguf_from_model(tiny(seed=6), tmp_path / "f16.gguf", "f16")
    assert load_model(f16, dtype="bfloat16").model.norm.weight.dtype == torch.bfloat16


def test_q4_0_loads_as_int4_group_32_without_requantizing(tmp_path):
    m = tiny(seed=7)
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "q4_0")
    w = gguf_weights(f)
    native = load_model(f)
    exact = load_model(f, weights="f32")
    ff = native.model.layers[0].feed_forward.w2
    assert isinstance(ff, QuantLinear) and ff.fmt == "int4" and ff.group == 32
    vals, tname, raw = w["blk.0.ffn_down.weight"]
    assert tname == "Q4_0"
    assert torch.equal(ff.packed.dequantize(), torch.from_numpy(vals))  # bit for bit the file's values
    for i in range(2):  # wqkv from permuted q/k Q4_0 rows: still exact
        att = native.model.layers[i].attention.wqkv
        assert att.fmt == "int4" and torch.equal(att.packed.dequantize(),
                                                 exact.model.layers[i].attention.wqkv.weight.detach())
    # Q4_0's own bound against the original weights: |w - d (q - 8)| <= |d| (the block's largest value maps to
    # q = 0; its opposite may clip at q = 15) + 8 |d| 2^-11 (d stored as fp16)
    orig = m.model.layers[0].feed_forward.w2.weight.detach().numpy()
    d = np.repeat(_block_scales(raw, orig.shape[1], 18), 32, axis=1)
    assert np.all(np.abs(vals - orig) <= d * (1 + 8 * 2.0**-11) * (1 + 1e-3))
    # embeddings and head are Q8_0 in a q4_0 file -> int8; logits within 2% of the range of the file's values
    assert isinstance(native.model.tok_embeddings, QuantEmbedding) and native.model.tok_embeddings.fmt == "int8"
    a, b = logits(native), logits(exact)
    assert (a - b).abs().max() <= 0.02 * (b.max() - b.min())
    # another group size re-quantizes (and says so in the log); group 32 keeps the bytes
    g64 = load_model(f, weights="int4", group=64).model.layers[0].feed_forward.w2
    assert g64.group == 64 and not torch.equal(g64.packed.dequantize(), torch.from_numpy(vals))
    g32 = load_model(f, weights="int4", group=32).model.layers[0].feed_forward.w2
    assert torch.equal(g32.qweight, ff.qweight)


def test_q4_0_engine_decode_matches_forward(tmp_path):
    """The native kernel reads the int4 blocks as loaded (Q4_0's q = 0 included): greedy tokens as the model's
    own forward on the same packed weights gives them."""
    from puyu.engine.sampling import SamplingParams
    from puyu.engine.scheduler import Engine

    m = load_model(write_gguf_from_model(tiny(seed=8), tmp_path / "m.gguf", "q4_0"))
    prompt = IDS[0, :8].tolist()
    with Engine(m, max_batch_size=1, cache_tokens=64, prefix_cache=False) as eng:
        got = [t for d in eng.stream(prompt, SamplingParams(max_new_tokens=8, ignore_eos=True)) for t in d.token_ids]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(prompt):]


def test_requantized_type_loads_as_int8(tmp_path, monkeypatch):
    """A type puyu has no exact format for (Q5_0 here) is dequantized by gguf's reference code and re-quantized."""
    m = tiny(seed=9)
    real = gguf_file._gguf_type
    monkeypatch.setattr(gguf_file, "_gguf_type", lambda t, g, n: "Q5_0" if g == "blk.0.ffn_up.weight" else real(t, g, n))
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "f32")
    back = load_model(f)
    up = back.model.layers[0].feed_forward.w3
    assert up.fmt == "int8"
    t = next(t for t in gguf.GGUFReader(f).tensors if t.name == "blk.0.ffn_up.weight")
    assert t.tensor_type.name == "Q5_0"
    ref = torch.from_numpy(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).copy())  # gguf's own decoder
    s = ref.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((up.packed.dequantize() - ref).abs() <= s / 2 * (1 + 1e-5))  # int8's rounding only
    orig = m.model.layers[0].feed_forward.w3.weight.detach()
    assert (ref - orig).abs().max() <= orig.abs().max() / 16 * 1.01  # and Q5_0's own: |d| = block amax / 16


def test_unsupported_type_is_refused_naming_the_tensor(tmp_path, monkeypatch):
    m = tiny(seed=10, hidden_size=256)  # TQ2_0 blocks are 256 weights long
    real = gguf_file._gguf_type
    monkeypatch.setattr(gguf_file, "_gguf_type", lambda t, g, n: "TQ2_0" if g == "blk.1.ffn_gate.weight" else real(t, g, n))
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "f16")
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_gate\.weight.*TQ2_0 is not supported.*Q4_0"):
        load_model(f)


def test_other_architectures_and_missing_tensors_are_refused(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "x.gguf", "gpt2")
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="architecture is 'gpt2'"):
        load_model(tmp_path / "x.gguf")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_gguf"])
def test_corrupt_file_gives_one_line_error(tmp_path, damage, capsys, tiny_tokenizer):
    f = write_gguf_from_model(tiny(seed=11, vocab_size=tiny_tokenizer.vocab_size), tmp_path / "m.gguf", "q8_0",
                              tokenizer_model=tiny_tokenizer.model_file)
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        f.write_bytes(data[:8] + bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)) + data[408:])
    else:
        f.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(GGUFError):
        load_model(f)
    capsys.readouterr()
    assert main(["generate", "--model", str(f), "--ids", "1 2 3", "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(f) in lines[0], err


@pytest.mark.parametrize("keep", [10, 30])
def test_a_header_cut_short_has_one_error_prefix(tmp_path, keep, capsys):
    """struct's exception is named "error", so the message read "error: ... is truncated or corrupt: error:
    unpack_from requires ..."."""
    f = write_gguf_from_model(tiny(seed=3), tmp_path / "m.gguf", "f32")
    f.write_bytes(f.read_bytes()[:keep])
    assert main(["generate", "--model", str(f), "--ids", "1 2 3", "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {f} is truncated or corrupt: the header runs past the end of the file (")
    assert err.count("error:") == 1 and len(err.splitlines()) == 1, err

def test_cli_convert_info_and_generate(tmp_path, capsys):
    """The commands as a user runs them (in-process: `puyu.cli.main` is the console script's body)."""
    import json

    m = tiny(seed=12)
    src = save_pretrained(m, tmp_path / "ck", dtype="bfloat16")
    out = tmp_path / "m.gguf"
    assert main(["convert", str(src), str(out), "--to", "gguf", "--type", "q4_0"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "128" in json.dumps(info)
    assert main(["generate", "--model", str(out), "--ids", "1 2 3", "--max-new-tokens", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]
    ref = load_model(out)
    seq = [1, 2, 3]
    with torch.no_grad():
        for _ in range(4):
            seq.append(int(ref(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[3:]


@pytest.mark.parametrize("tok", [pytest.param(TINY, id="tiny"),
                                 pytest.param(REAL_TOK, id="internlm2", marks=pytest.mark.slow)])
def test_tokenizer_rebuilt_from_gguf_encodes_identically(tmp_path, tok, monkeypatch, request):
    if tok == TINY:
        tok = request.getfixturevalue("tiny_tokenizer").model_file
    if not tok.exists():
        pytest.skip(f"{tok} not present")
    from puyu.model.tokenizer import load_tokenizer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    orig = load_tokenizer(tok)
    m = tiny(seed=13, vocab_size=orig.vocab_size)
    f = write_gguf_from_model(m, tmp_path / "m.gguf", "f16", tokenizer_model=tok)
    back = load_tokenizer(f)
    assert back.vocab_size == orig.vocab_size and back.special_ids == orig.special_ids
    texts = ["Hello world", "  two  spaces\tand tab\n\nnewlines", "数学题：12 + 35 = 47。", "emoji 🐉 and \x00 byte",
             "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "x" * 50, "3.14159 1e-9 -42", ""]
    for t in texts:
        assert back.encode(t) == orig.encode(t), t
        assert back.decode(orig.encode(t)) == orig.decode(orig.encode(t))


def test_header_parser_matches_gguf_reader(tmp_path, tiny_tokenizer):
    """puyu parses the header itself (GGUFReader is ~20x slower on a real vocabulary): both agree on every
    metadata value and every tensor's type, shape and data offset."""
    f = write_gguf_from_model(tiny(seed=14, vocab_size=tiny_tokenizer.vocab_size), tmp_path / "m.gguf", "q4_0",
                              tokenizer_model=tiny_tokenizer.model_file)
    ours = gguf_file._File(f)
    r = gguf.GGUFReader(f)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert sorted(keys) == sorted(ours.fields)
    for k in keys:
        theirs = r.fields[k].contents()
        if isinstance(theirs, float) or (isinstance(theirs, list) and theirs and isinstance(theirs[0], float)):
            np.testing.assert_allclose(ours.fields[k], theirs, rtol=1e-7)
        else:
            assert ours.fields[k] == theirs, k
    assert len(r.tensors) == len(ours.tensors)
    for t in r.tensors:
        tname, shape, offset, nbytes = ours.tensors[t.name]
        assert (tname, shape, offset, nbytes) == (t.tensor_type.name, tuple(reversed(t.shape.tolist())),
                                                  int(t.data_offset), int(t.n_bytes))


def test_generate_reads_the_tokenizer_and_memory_group_from_the_gguf(tmp_path, monkeypatch, capsys, tiny_tokenizer):
    """`puyu generate --model x.gguf "text"` needs no --tokenizer (the file carries one), and the memory check
    counts a Q4_0 file's int4 in groups of 32 (as it loads), not --group's default of 64."""
    tok_file = tiny_tokenizer.model_file
    import puyu.model.memory as memory
    from puyu.model.tokenizer import load_tokenizer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    vocab = load_tokenizer(tok_file).vocab_size
    f = write_gguf_from_model(tiny(seed=14, vocab_size=vocab), tmp_path / "m.gguf", "q4_0", tokenizer_model=tok_file)
    seen = []
    real = memory.check_fits
    monkeypatch.setattr(memory, "check_fits", lambda *a, **k: (seen.append((a[1], k.get("group"))), real(*a, **k))[1])
    assert main(["generate", "--model", str(f), "Hello", "--max-new-tokens", "2"]) == 0, capsys.readouterr().err
    assert seen == [("int4", 32)]
