"""Chinese, English, mixed text and code through the data pipeline (issue 16).

The four inputs of the issue (three clean Chinese paragraphs, one English one, and an edited copy of a
Chinese paragraph) go through the default steps; the segmenter, thresholds by CJK share (both sides),
GBK/Big5 mojibake, punctuation, blocklists in both scripts, code recognition and the MinHash goals on
Chinese pairs are tested one by one. All Chinese text here was written for these tests.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from puyu.data.documents import Document
from puyu.data.minhash import MinHashDedup, jaccard
from puyu.data.normalise import Language, Normalise, is_code, legacy_cjk_mojibake
from puyu.data.pipeline import clean_documents
from puyu.data.rules import C4Rules, GopherQuality, GopherRepetition, Punctuation
from puyu.data.safety import WordBlocklist
from puyu.data.segment import CJK_MAJORITY, cjk_share, segment, segmented, shingle_units, words
from puyu.data.thresholds import profile

CITY = ("杭州位于中国东南沿海，是浙江省的省会，也是长江三角洲南翼的重要城市。这座城市以西湖闻名，湖边的苏堤和白堤在春天开满"
        "桃花与柳树，吸引了许多来自各地的游客。杭州历史悠久，曾是南宋的都城，留下了灵隐寺、六和塔等名胜古迹。近年来，杭州的"
        "数字经济发展迅速，许多互联网企业在这里设立总部，城市的交通和公共服务也随之不断完善，成为一座兼具传统文化与现代活力的城市。")
ML = ("机器学习是人工智能的一个重要分支，它研究如何让计算机从数据中自动发现规律，并利用这些规律对新的情况做出预测。与传统的程序"
      "设计不同，机器学习并不需要人们逐条写出规则，而是通过大量的样本来训练模型。常见的方法包括监督学习、无监督学习和强化学习。"
      "在实际应用中，机器学习已经被广泛用于图像识别、语音识别、机器翻译和推荐系统，深刻地改变了人们的工作和生活方式。")
SPRING = ("三月的江南，春风轻轻吹过田野，河边的柳树抽出了嫩绿的新芽。清晨的小雨刚刚停下，空气里弥漫着泥土和青草的香味。田埂上的"
          "油菜花开得金黄一片，蜜蜂在花丛中忙着采蜜，几只燕子从屋檐下飞出，在天空中画出一道道弧线。孩子们穿着薄薄的外衣在小路上"
          "奔跑，老人坐在院子门口晒着太阳，整个村庄都沉浸在温暖而安静的春光里。")
EN = ("The harbour town sits at the mouth of a wide river, and for centuries its life has followed the tides. "
      "Fishing boats leave before dawn and return in the afternoon, when the market fills with the smell of salt and "
      "fresh bread. The old stone bridge that links the two halves of the town was built in the fourteenth century "
      "and is still used every day. In summer the narrow streets are crowded with visitors, but in winter the town "
      "is quiet and the residents have time to repair their boats and houses. A small museum near the church tells "
      "the story of the families who lived here and of the ships that they built.")
# three two-character edits of ML (171 of 175 characters unchanged)
ML_EDITED = ML.replace("自动", "自行").replace("大量", "众多").replace("广泛", "普遍")


def doc(text: str, **meta) -> Document:
    return Document("t", text, dict(meta))


def test_the_four_inputs_of_the_issue(tmp_path):
    assert all(150 <= len(t) <= 200 for t in (CITY, ML, SPRING))
    assert jaccard(ML, ML_EDITED) > 0.75  # character 5-grams see the copy (word shingles saw 0.20)
    res = clean_documents([CITY, ML, SPRING, EN, ML_EDITED], str(tmp_path / "w"), shards=2)
    kept = {d.id: d.text for d in res.documents()}
    assert sorted(kept) == ["doc0000000", "doc0000001", "doc0000002", "doc0000003"]
    assert kept["doc0000001"] == ML  # full-width punctuation kept as written
    assert "，" in kept["doc0000000"] and "," not in kept["doc0000000"]
    report = open(res.report).read()
    assert "minhash: near-duplicate" in report


def test_segmentation_words_and_cache():
    seg = segment(ML)
    assert 60 <= len(seg.words) <= 130 and "机器" in seg.words and "，" not in seg.words
    assert seg.script == "cjk" and seg.cjk_share > 0.95
    en = segment(EN)
    assert en.tokens == EN.split() and en.script == "latin"
    d = doc(CITY)
    first = segmented(d)
    assert segmented(d) is first  # cached: every step reuses one segmentation
    d.text = CITY + "杭州的夜景也很美。"
    assert segmented(d) is not first  # a step that edits the text gets a fresh one
    mixed = "我们用 Python 的 pandas 库处理数据，再把结果写入 CSV 文件。"
    assert {"Python", "pandas", "CSV", "数据"} <= set(words(mixed))


def test_gopher_rules_use_chinese_words_and_thresholds():
    gq = GopherQuality()
    for t in (CITY, ML, SPRING):
        assert gq.process(doc(t)) is None
    assert gq.process(doc("春天来了，花开了。")).startswith("gopher_quality: too few words")
    # the English numbers would drop Chinese on mean word length (jieba words are 1-4 characters)
    assert GopherQuality(zh={"min_mean_word_length": 3}).process(doc(ML)).startswith(
        "gopher_quality: mean word length")
    # no Chinese stop word in 50+ words: dropped by FineWeb-2's Chinese stop-word rule
    fruits = ["苹果", "香蕉", "葡萄", "橘子", "西瓜", "草莓", "菠萝", "芒果", "樱桃", "荔枝"]
    listing = "，".join("".join(fruits[(i * k) % 10] for k in range(1, 8)) for i in range(1, 12)) + "。"
    assert gq.process(doc(listing)).startswith("gopher_quality: stop words")
    rep = GopherRepetition()
    assert rep.process(doc(ML)) is None
    looped = "\n".join([SPRING] + ["欢迎光临本店，全场商品一律八折，欢迎选购。"] * 10)
    assert rep.process(doc(looped)).startswith("gopher_repetition: duplicate line")
    ngram = "".join(["这款产品质量很好价格便宜"] * 12) + "。" + SPRING
    assert rep.process(doc(ngram)).startswith("gopher_repetition:")


def test_mixed_documents_take_thresholds_by_cjk_share_both_sides():
    # Chinese majority with English terms: the Chinese thresholds
    zh_major = ("我们在项目中使用 Python 和 NumPy 处理传感器数据，每天凌晨自动运行一次脚本。" + ML)
    assert cjk_share(zh_major) >= CJK_MAJORITY
    assert profile(doc(zh_major)) == "zh" and GopherQuality().process(doc(zh_major)) is None
    # English majority quoting a Chinese name: the English thresholds
    en_major = EN + " The locals call the bridge 古桥 and the market 早市."
    assert 0 < cjk_share(en_major) < CJK_MAJORITY
    assert profile(doc(en_major)) == "en" and GopherQuality().process(doc(en_major)) is None
    # a document just below the share is judged by English rules (here: too few English stop words),
    # just above by Chinese ones: the rule is the share, not the language identifier's guess
    zh_part = "数据清洗是训练大模型之前的重要步骤。"  # 17 CJK characters
    latin = " ".join(f"token{i}" for i in range(50))  # 50 words of 6+ characters, no stop words
    below = doc(latin + " " + zh_part)
    assert cjk_share(below.text) < CJK_MAJORITY and profile(below) == "en"
    assert GopherQuality().process(below).startswith("gopher_quality: stop words")
    above = doc(" ".join(f"token{i}" for i in range(6)) + " " + zh_part * 3)
    assert cjk_share(above.text) >= CJK_MAJORITY and profile(above) == "zh"


def test_unknown_language_fallback_has_no_stop_word_rule():
    d = doc(" ".join(["Wort"] * 60), language="xx")
    assert profile(d) == "default"
    assert GopherQuality().process(d) is None
    assert GopherQuality().process(doc(" ".join(["Wort"] * 60), language="en")).startswith(
        "gopher_quality: stop words")


def test_c4_and_punctuation_on_chinese():
    c4 = C4Rules(terminal_punct_lines=True, min_words_per_line=3)
    d = doc(CITY + "\n本网站使用cookie来改善您的浏览体验，继续浏览即表示您同意我们的隐私政策。\n" + SPRING)
    assert c4.process(d) is None and "隐私政策" not in d.text and SPRING in d.text
    assert C4Rules().process(doc("春天来了，花开了。")).startswith("c4: too few sentences")
    spam = "\n".join(["手机 批发 正品 包邮 特价"] * 15)
    assert Punctuation().process(doc(spam)).startswith("punctuation: lines ending in punctuation")
    assert Punctuation().process(doc(ML)) is None


def test_normalise_keeps_chinese_punctuation_and_repairs_gbk_big5():
    n = Normalise()
    assert n.normalise(ML) == ML
    assert n.normalise("价格：１２３元（含税）") == "价格：123元（含税）"  # digits to ASCII, punctuation kept
    gbk = doc(CITY.encode("gbk").decode("latin-1"))
    assert n.process(gbk) is None and gbk.text == CITY
    trad = "臺灣的電腦軟體發展很快，許多學生學習程式設計。"
    big5 = doc(trad.encode("big5").decode("latin-1"))
    assert n.process(big5) is None and big5.text == trad
    broken = bytearray(ML.encode("gbk"))
    for i in range(5, len(broken), 40):
        broken[i] = 0xFF
    assert n.process(doc(bytes(broken).decode("latin-1"))).startswith("normalise: undecodable GBK/Big5 mojibake")
    # UTF-8 read as Latin-1 is still ftfy's to repair, and accented Latin text is not mistaken for GBK
    utf = doc(ML.encode("utf-8").decode("latin-1"))
    assert n.process(utf) is None and utf.text == ML
    assert legacy_cjk_mojibake("Le café de la gare est très animé à l'heure où les trains arrivent.") == (None, None)


def test_blocklists_match_both_scripts():
    wb = WordBlocklist(file=["recipes/data/blocklists/words.txt", "recipes/data/blocklists/words_zh.txt"])
    assert wb.process(doc(ML)) is None and wb.process(doc(EN)) is None
    assert wb.process(doc(ML + "点击进入色情专区。")).startswith("word_blocklist: blocked words (色情")
    assert wb.process(doc(ML + "免費參與網絡賭博。")) == "word_blocklist: blocked words (网络赌博)"
    assert wb.process(doc(EN + " Free porn here.")).startswith("word_blocklist")
    assert WordBlocklist(words=["賭博網站"]).process(doc("这是一个赌博网站。")) is not None


def test_code_is_recognised_not_dropped_as_a_language():
    code = open(__file__.replace("tests/data/test_data_chinese.py", "src/puyu/data/segment.py")).read()
    assert is_code(doc(code)) and is_code(doc("x = 1", path="src/main.py"))
    assert not is_code(doc(EN)) and not is_code(doc(ML))
    lang = Language()
    docs = [doc(code), doc(ML), doc(EN), doc("Le café de la gare est très animé à l'heure où les trains arrivent.")]
    reasons = lang.process_batch(docs)
    assert [d.metadata["language"] for d in docs] == ["code", "zh", "en", "fr"]
    assert reasons[:3] == [None, None, None] and reasons[3].startswith("language: fr not in")
    assert GopherQuality().process(docs[0]) is None  # the prose rules leave code alone


def _pairs(rng: random.Random, n: int, target: float) -> list[tuple[str, str, float]]:
    from puyu.data.synthetic import Generator

    g = Generator(rng.randint(0, 10**6))
    out = []
    for _ in range(n):
        src = g.clean_zh(rng.choice(["knowledge", "other"]))
        g.rng.uniform  # noqa: B018 - keep the generator's stream independent of the target
        copy = g.near_copy_zh(src, target - 0.02, target + 0.02)
        out.append((src.text, copy.text, jaccard(src.text, copy.text)))
    return out


@pytest.mark.slow
def test_minhash_goals_hold_for_chinese_pairs():
    """Recall >= 0.95 for Chinese pairs at character 5-gram Jaccard >= 0.8, false positives <= 1% at
    <= 0.5 (the goals tests/data/test_data_minhash.py checks for English)."""
    rng = random.Random(7)
    mh = MinHashDedup()
    hi = [p for p in _pairs(rng, 120, 0.82) if p[2] >= 0.8]
    lo = [p for p in _pairs(rng, 200, 0.45) if p[2] <= 0.5]
    assert len(hi) >= 100 and len(lo) >= 150

    def caught(pairs):
        n = 0
        for a, b, _ in pairs:
            d = mh.decide([(["a", "b"], np.stack([mh.signature_of(a), mh.signature_of(b)]))])
            n += bool(d[0])
        return n

    assert caught(hi) / len(hi) >= 0.95
    assert caught(lo) / len(lo) <= 0.01


def test_traditional_copy_is_a_near_duplicate_but_not_an_exact_one():
    import opencc

    trad = opencc.OpenCC("s2t").convert(CITY)
    assert trad != CITY and shingle_units(trad) == shingle_units(CITY)
    mh = MinHashDedup()
    d = mh.decide([(["a", "b"], np.stack([mh.signature_of(CITY), mh.signature_of(trad)]))])
    assert 1 in d[0]
    from puyu.data.dedup import ExactDedup

    assert ExactDedup().key(CITY) != ExactDedup().key(trad)


def test_classifiers_and_lm_work_on_segmented_chinese():
    from puyu.data.classifiers import TextClassifier
    from puyu.data.ngram import NGramLM, tokenize
    from puyu.data.synthetic import training_set

    assert tokenize("机器学习很有用。") == ["机器", "学习", "很", "有用", "。"]
    texts, labels = training_set("domain", 200, seed=4000)
    zh = [(t, lab) for t, lab in zip(texts, labels) if cjk_share(t) > 0.3]
    assert len(zh) >= 60
    clf = TextClassifier().fit(texts, labels)
    from puyu.data.synthetic_zh import ZhTextGen

    gen = ZhTextGen(random.Random(99))  # documents the classifier has not seen
    held = [(gen.document(d), d) for d in ("knowledge", "math", "code", "other") for _ in range(10)]
    probs = clf.predict_proba([segment(t) for t, _ in held])
    acc = np.mean([clf.classes[int(np.argmax(p))] == d for p, (_, d) in zip(probs, held)])
    assert acc >= 0.9
    lm = NGramLM(3).fit([t for t, _ in zh])
    assert lm.perplexity(segment(ML)) > lm.perplexity(segment(held[0][0]))  # in-domain text is likelier


def test_language_of_mixed_documents():
    """English with one Chinese sentence is English (langid alone said Latin, score 1.0, on such
    pages); Chinese with English terms is Chinese; both are kept by the bilingual default."""
    en_major = doc(EN + "\n\n" + "周末里，孩子们在广场上跳绳，笑声此起彼伏。")
    zh_major = doc("我们使用 Python 和 pandas 处理数据，每周自动生成一份报告。" + CITY)
    reasons = Language().process_batch([en_major, zh_major])
    assert reasons == [None, None]
    assert en_major.metadata["language"] == "en" and zh_major.metadata["language"] == "zh"


C_ZH = """#include <stdio.h>

/* 计算斐波那契数列的第 n 项，使用迭代避免递归的栈开销 */
long fib(int n) {
    long a = 0, b = 1;
    for (int i = 0; i < n; i++) {
        long t = a + b;  // 下一项等于前两项之和
        a = b;
        b = t;
    }
    return a;
}

int main(void) {
    for (int i = 0; i < 20; i++) {
        printf("第 %d 项：%ld\\n", i, fib(i));
    }
    return 0;
}
"""


def _site_package_sources(n: int) -> list[str]:
    """`n` real Python source files (1-40 KB) of packages installed beside puyu, in a fixed order."""
    import importlib
    import pathlib

    files: list[pathlib.Path] = []
    for pkg in ("ftfy", "charset_normalizer", "jieba", "datasketch", "langid", "zstandard", "yaml", "sklearn"):
        try:
            root = pathlib.Path(importlib.import_module(pkg).__file__).parent
        except ImportError:
            continue
        files += sorted(p for p in root.rglob("*.py") if 1000 <= p.stat().st_size <= 40_000)
    texts = []
    for p in files:
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    return texts[:n]


def test_code_is_recognised_by_the_steps_before_language(tmp_path):
    """Real source files (plain strings, no path) and a C function with Chinese comments survive the
    default steps: `characters` and `punctuation` run before `language` and must not judge code as
    prose (newlines per word, punctuation share); before the fix about half of such files were dropped
    there."""
    sources = _site_package_sources(60)
    assert len(sources) >= 40
    texts = sources + [C_ZH]
    res = clean_documents(texts, str(tmp_path / "w"), shards=2)
    kept = [d for d in res.documents()]
    assert len(kept) == len(set(texts))  # nothing dropped (exact duplicates aside)
    assert {d.metadata["language"] for d in kept} == {"code"}
    # the step before language decides "code" by itself, from the cached analysis
    d = doc(C_ZH)
    assert profile(d) == "code" and Punctuation().process(d) is None
    from puyu.data.rules import Characters

    assert Characters().process(doc(sources[0])) is None
    # prose stays prose: the rules still drop what they should
    assert profile(doc(ML)) == "zh" and profile(doc(EN)) == "en"
    assert Punctuation().process(doc("\n".join(["手机 批发 正品 包邮 特价"] * 15))) is not None


def test_text_files_and_jsonl_in_legacy_encodings_are_decoded(tmp_path):
    """GBK, Big5, GB18030 and UTF-16 files are decoded (charset-normalizer, byte-order marks) with the
    encoding recorded; only bytes no encoding decodes are rejected, naming the likely encoding."""
    from puyu.data.documents import list_shards, read_jsonl, read_shard

    trad = "臺北是臺灣最大的城市，也是政治、經濟與文化的中心。每到夜晚，夜市總是擠滿了前來品嚐小吃的遊客。"
    files = {"gbk.txt": CITY.encode("gbk"), "big5.txt": trad.encode("big5"),
             "gb18030.txt": (ML + "𠀀").encode("gb18030"), "utf16.txt": SPRING.encode("utf-16"),
             "utf16le.txt": SPRING.encode("utf-16-le"), "utf8bom.txt": ML.encode("utf-8-sig"),
             "utf8.txt": ML.encode("utf-8")}
    damaged = bytearray(ML.encode("gbk"))
    damaged[40], damaged[41] = 0xFF, 0x20
    files["damaged.txt"] = bytes(damaged)
    root = tmp_path / "in"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    docs = {d.id: d for s in list_shards([str(root)]) for d in read_shard(s, root=str(root))}
    want = {"gbk.txt": (CITY, "gb18030"), "big5.txt": (trad, "big5"), "gb18030.txt": (ML + "𠀀", "gb18030"),
            "utf16.txt": (SPRING, "utf-16"), "utf16le.txt": (SPRING, "utf-16-le"),
            "utf8bom.txt": (ML, "utf-8-sig"), "utf8.txt": (ML, None)}
    for name, (text, enc) in want.items():
        d = docs[name]
        assert d.error is None and d.text == text and d.metadata.get("encoding") == enc, name
    assert docs["damaged.txt"].error.startswith("undecodable bytes (likely gb18030: ")
    # JSONL: a GBK file line by line, and a UTF-16 file with a byte-order mark
    import json

    recs = [{"id": "a", "text": CITY}, {"id": "b", "text": ML}]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    (tmp_path / "gbk.jsonl").write_bytes(lines.encode("gbk"))
    (tmp_path / "utf16.jsonl").write_bytes(lines.encode("utf-16"))
    for name, enc in (("gbk.jsonl", "gb18030"), ("utf16.jsonl", "utf-16")):
        got = list(read_jsonl(str(tmp_path / name)))
        assert [(d.id, d.text, d.error, d.metadata) for d in got] == [
            (r["id"], r["text"], None, {"encoding": enc}) for r in recs], name


def test_chinese_blocklist_matches_on_word_boundaries_in_both_scripts():
    """A blocked term inside ordinary words (色情 in 角色情感 and 出色情节, 援交 in 救援交通, 百家乐 in
    百家乐园) is not a hit; the terms themselves are, in Simplified, Traditional and Taiwan wording,
    including contexts where the shared segmenter splits them (在代/开发票, 看成/人/影片)."""
    import opencc

    wb = WordBlocklist(file=["recipes/data/blocklists/words.txt", "recipes/data/blocklists/words_zh.txt"])
    s2t = opencc.OpenCC("s2t")
    clean = ["这部电影的角色情感很细腻，演员的表演十分出色情节也很紧凑。",
             "暴雨过后，消防队开展救援交通一度中断，孩子们在百家乐园玩了一下午。",
             "国家支援交流项目里有一家特色情调的小店，黄色网页设计很醒目。"]
    for t in clean:
        for text in (t, s2t.convert(t)):
            assert wb.process(doc(text)) is None, text
    blocked = {"点击这里看色情视频。": "色情", "我们发现有人在代开发票，请注意。": "代开发票",
               "点击这里看成人影片。": "成人影片", "免费参与网络赌博。": "网络赌博", "免费成人视频专区": "成人视频",
               "玩百家乐赢钱": "百家乐", "寻找援交少女": "援交", "提供私服外挂下载": "私服外挂"}
    for t, term in blocked.items():
        for text in (t, s2t.convert(t)):
            assert wb.process(doc(text)) == f"word_blocklist: blocked words ({term})", text
    # Taiwan phrasing of listed terms: 網路賭博 (网络赌博), 成人影片 (成人视频)
    assert wb.process(doc("這裡提供網路賭博的連結。")) == "word_blocklist: blocked words (网路赌博)"
    assert WordBlocklist(words=["成人视频"]).process(doc("線上觀看成人影片。")) is not None


def test_mojibake_detector_repairs_mixed_text_and_leaves_accented_latin_alone():
    """GBK mojibake with an ASCII '?' and mixed Chinese-English mojibake are repaired (both used to be
    dropped); short accented Latin strings are neither 're-decoded' into Chinese nor dropped."""
    n = Normalise()
    mixed = ("最近在学习 machine learning，发现 PyTorch 和 TensorFlow 各有优缺点。What is the difference? "
             "PyTorch 的动态图机制让调试变得非常方便，而 TensorFlow 在部署方面更加成熟。")
    with_q = "你今天怎么这么晚才回来?公司临时开会,讨论下个月的新项目。" + CITY
    en_major = "The exhibition 丝绸之路 opened on Friday. A poem by 王维 is shown beside a translation."
    for text in (mixed, with_q, en_major):
        for cp in ("latin-1", "cp1252"):
            d = doc(text.encode("gbk").decode(cp))
            assert n.process(d) is None and d.text == text, (text[:10], cp)
    for latin in ("Ñoño año señor", "Ça été où? Déjà là.", "Größere Übungen für Schüler: Äpfel und Süßigkeiten.",
                  "A informação sobre a situação da população e a educação não é pública."):
        assert legacy_cjk_mojibake(latin) == (None, None), latin
        d = doc(latin)
        assert n.process(d) is None and d.text == latin
    # bytes lost (undefined cp1252 bytes replaced by U+FFFD) or damaged: dropped with the reason
    trad = "臺北是臺灣最大的城市，也是政治、經濟與文化的中心。"
    lost = trad.encode("gbk").decode("cp1252", errors="replace")
    assert n.process(doc(lost)).startswith("normalise: undecodable GBK/Big5 mojibake (bytes lost)")


KUBE = ("使用 kubectl apply -f deployment.yaml 部署 nginx ingress controller，然后用 kubectl get pods -n ingress-nginx "
        "查看 pod status。如果 pod 处于 CrashLoopBackOff 状态，先用 kubectl logs 和 kubectl describe pod 查看 events，"
        "常见原因是 ConfigMap 或 Secret 没有 mount 成功。修改 values.yaml 里的 replicaCount、resources.limits.cpu 和 "
        "resources.limits.memory，再执行 helm upgrade --install ingress-nginx ingress-nginx/ingress-nginx。最后用 curl "
        "验证 service 是否正常，返回 200 OK 就说明 ingress 配置成功了。生产环境建议开启 HPA，并为 controller 设置 "
        "PodDisruptionBudget，避免节点维护时 service 中断。")


def test_cjk_share_counts_latin_words_not_letters():
    """Chinese technical prose full of English commands is Chinese (by letters its CJK share was 0.17
    and the English stop-word rule dropped it); English quoting a few Chinese names stays English."""
    share = cjk_share(KUBE)
    assert CJK_MAJORITY <= share < 0.7
    assert cjk_share("数据清洗 kubectl") == 4 / 5  # four characters and one word
    d = doc(KUBE)
    assert profile(d) == "zh" and GopherQuality().process(d) is None
    en = doc("The museum's new exhibition, titled 丝绸之路 (the Silk Road), opened on Friday. It brings together more "
             "than two hundred objects. One of the highlights is a Tang dynasty poem by 王维, shown beside an English "
             "translation, and the curator said the show will stay open until March.")
    assert cjk_share(en.text) < 0.2 and profile(en) == "en"


def test_c4_counts_ascii_sentence_ends_in_chinese(tmp_path):
    """Chinese typed with ASCII punctuation (no space after '.') has sentences too."""
    ascii_zh = ML.replace("，", ",").replace("。", ".").replace("、", ",")
    assert "。" not in ascii_zh and ascii_zh.count(".") == 4
    c4 = C4Rules()
    assert c4.process(doc(ascii_zh)) is None
    assert c4.process(doc("版本3.10和3.11都可以,推荐3.12")).startswith("c4: too few sentences")  # decimals are not ends
    res = clean_documents([ascii_zh], str(tmp_path / "w"))
    assert [d.text for d in res.documents()] == [ascii_zh]


def test_chinese_and_emoji_line_endings_count_as_punctuation():
    """Lines ending in …… 》 】 ～ 」 』 or an emoji end in punctuation (a chat log, a reading list)."""
    p = Punctuation()
    endings = ["……", "》", "】", "～", "」", "』", "😀", "👍🏻", "❤️"]
    for end in endings:
        lines = "\n".join(f"第{i}行的内容写在这里{end}" for i in range(10))
        assert p.process(doc(lines)) is None, end
    assert p.process(doc("\n".join(f"第{i}行的内容写在这里" for i in range(10)))).startswith(
        "punctuation: lines ending in punctuation")


def test_damaged_gbk_mojibake_is_dropped_not_passed_on():
    """GBK with 2% of its bytes overwritten (the synthetic gbk_broken label) is dropped by normalise,
    although after each bad byte the decoder loses the pair alignment for a few characters."""
    from puyu.data.synthetic_zh import ZhTextGen

    gen = ZhTextGen(random.Random(3))
    broken = [gen.gbk_broken(gen.document(d)) for d in ("knowledge", "other", "math", "code") * 5]
    assert all(Normalise().process(doc(t)).startswith("normalise: undecodable GBK/Big5 mojibake") for t in broken)


def test_safety_classifier_sees_chinese_harassment():
    """The default training set has Chinese harassment (synthetic_zh.ZH_TOXIC); sentences written apart
    from those templates are scored unsafe, clean Chinese prose safe. Written here: weak evidence."""
    from puyu.data.documents import Document
    from puyu.data.safety import SafetyClassifier

    step = SafetyClassifier()
    step.setup()
    texts = {"你这个蠢货，滚出去！我要杀了你全家，你们这种人都该死。": True,
             "闭嘴吧废物，再敢多说一句我就揍你。": True,
             "上海位于长江入海口，是中国重要的经济中心。这座城市有许多历史建筑，外滩的夜景吸引了大量游客。": False,
             "机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不需要人为编写每一条规则。": False}
    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    verdicts = step.process_batch(docs)
    assert [v is not None for v in verdicts] == list(texts.values()), [d.metadata for d in docs]
