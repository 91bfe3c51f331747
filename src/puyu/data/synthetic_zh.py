"""Clean Chinese and mixed Chinese-English text in four domains, and Chinese junk, from templates
written for this project (no Chinese corpus can be downloaded here). Used by `puyu.data.synthetic`.

Variety: place and person names are made up from character pools (about 2,000 place names, 20 x 600
person names), numbers are random, and each document draws 8-14 sentences from 16-20 templates with
"[a|b|c]" alternations, so independent documents share few character 5-grams and near-duplicates only
appear where `synthetic.py` plants them. This is text we wrote, in a style we chose: precision and
recall measured on it are weak evidence about real Chinese web text.
"""

from __future__ import annotations

import random
import re

# place-name characters: two from these pools plus a suffix
_P1 = list("青白云石金清长安平宁永新东西南北龙凤桃柳松竹梅兰溪泉江湖山岭")
_P2 = list("川阳州林河源丰泰和兴华桥湾坪口溪岗屯渡田庄冈")
_PSUF = ["镇", "县", "城", "村", "乡", ""]
_SURNAMES = list("王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗")
_GIVEN = list("明华伟芳秀英丽强军敏静磊洋艳勇杰娟涛超霞平刚桂兰玉萍红")

ZH_WORDS = {
    "direction": ["东", "南", "西", "北", "中"],
    "century": ["十二世纪", "十四世纪", "明朝中期", "清朝初年", "十九世纪末"],
    "climate": ["温带季风", "亚热带季风", "高原山地", "温和湿润的海洋性", "干燥的大陆性"],
    "industry": ["农业和渔业", "丝绸纺织", "制茶", "陶瓷烧制", "木材加工", "盐业"],
    "product": ["茶叶", "瓷器", "丝绸", "竹器", "纸张", "药材", "桐油"],
    "profession": ["商人", "工程师", "画家", "医生", "植物学家", "建筑师", "天文学家", "历史学家", "教师", "诗人"],
    "field": ["天文", "植物", "地质", "医学", "建筑", "数学", "化学", "历史", "语言", "音乐", "农学"],
    "habitat": ["湿地", "竹林", "高山草甸", "河滩", "丘陵", "松林"],
    "animal": ["白鹭", "苍鹭", "松鼠", "萤火虫", "野鸭", "画眉", "青蛙", "金丝猴"],
    "material": ["青石", "木头", "红砖", "花岗岩", "夯土"],
    "building": ["石桥", "古塔", "祠堂", "书院", "城门", "戏台", "钟楼"],
    "festival": ["庙会", "龙舟赛", "灯会", "茶会", "山歌节"],
    "food": ["米粉", "豆腐", "年糕", "鱼汤", "包子", "腊肉", "汤圆"],
    "taste": ["鲜美", "香甜", "微辣", "清淡", "软糯"],
    "month": ["一月", "三月", "五月", "七月", "九月", "十月", "腊月"],
    "weekday": ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期天"],
    "weather": ["阴沉沉的", "阳光很好", "下着小雨", "刮着大风", "格外闷热"],
    "shop": ["菜市场", "书店", "面包店", "药店", "邮局", "五金店"],
    "object": ["雨伞", "钥匙", "信封", "相机", "围巾", "笔记本"],
    "meaning": ["水边的地方", "高处的草地", "古老的渡口", "灰色的石头", "集市的田野"],
    "artifact": ["青铜器", "陶罐", "石碑", "古钱币", "手抄本"],
    "season": ["春天", "夏天", "秋天", "冬天"],
    "tool": ["Python", "NumPy", "pandas", "Git", "Linux", "GPU", "SQL", "Docker"],
}

ZH_KNOWLEDGE = [
    "{Place}是一座位于{Region}{direction}部的[古老|安静|繁华|偏远]小城，建于{century}，[现有|如今约有]人口{big}人。",
    "{Place}这个名字在当地的古语中意为“{meaning}”，最早[见于|出现在]{century}的地方志里。",
    "这里属于{climate}气候，夏季[炎热多雨|凉爽宜人]，冬季[寒冷干燥|温和少雪]，年平均降水量约为{num}毫米。",
    "[很长一段时间里|几百年来]，当地的经济主要依靠{industry}，{century}以后，{product}逐渐成为最重要的[外销|出口]商品。",
    "{Person}是{century}[著名|颇有影响]的{profession}，[他|她]在{Place}生活了{small}年，留下了[关于|有关]{field}的{small}部著作。",
    "{Place}附近的{habitat}中栖息着[大量|成群的]{animal}，每年{month}前后[可以|常常能]看到它们[聚集|出没]。",
    "城中最古老的建筑是一座用{material}[建造|修筑]的{building}，至今已有{num}多年的历史。",
    "{year}年，一场[洪水|大火|地震]使{Place}损失惨重，此后居民们[重新修建|陆续修复]了{building}和[道路|街巷]。",
    "[学者们|历史学家]认为，{Place}的繁荣与{River}河的航运[密切相关|关系很大]，[船只|商船]可以从这里直达{Region}。",
    "{Place}每年{month}都会举办{festival}，届时[四乡八镇|附近村庄]的人们[纷纷赶来|都会前来]，街上[热闹非凡|人山人海]。",
    "当地的{food}以{taste}著称，[做法|制作方法]是先把原料[洗净切块|浸泡一夜]，再[用小火|慢慢地]炖煮{small}个小时。",
    "{Place}的方言与周边地区[略有不同|差别很大]，[保留了|至今仍有]不少古代汉语的发音。",
    "{year}年修建的铁路把{Place}和{Region}连接起来，两地之间的路程缩短到{small}个小时。",
    "[县里的|当地的]博物馆收藏着{big}件文物，其中最珍贵的是一批{century}的{artifact}。",
    "研究{field}的学者经常来到{Place}[考察|进行实地调查]，他们发现这里的{building}[保存得相当完整|仍然保持着原貌]。",
    "{century}，{Person}在{Place}创办了一所书院，[先后|前后]培养了{num}多名学生。",
    "[据统计|根据县志记载]，{year}年{Place}共有{small}条街道、{num}家店铺，是{Region}[最大的|重要的]集镇之一。",
    "{Place}[盛产|出产]{product}，[早在|远在]{century}就[远销|运往]各地，[享有盛誉|名气很大]。",
    "{Place}[周围|四周]群山环绕，{River}河从城南[流过|穿过]，[两岸|河边]种满了[柳树|桃树|樟树]。",
    "[二十世纪|近几十年]以来，{Place}的人口[逐渐增加|不断增长]，[新城区|新的街区]沿着河岸向{direction}扩展。",
]

ZH_OTHER = [
    "{weekday}的早上，{Person}像往常一样去{shop}买{food}。",
    "那天{weather}，街上的行人比平时少了[许多|不少]。",
    "[他|她]在路上遇到了多年不见的老同学{Person2}，两人站在{shop}门口聊了[很久|半个小时]。",
    "{Person2}说自己[刚从|上个月才从]{Place}回来，在那里[住了|待了]{small}个[星期|月]。",
    "[回到家里|到家以后]，{Person}发现[把{object}忘在了|{object}落在了]{shop}，只好又走了一趟。",
    "[傍晚|晚饭后]，[一家人|全家]坐在院子里[乘凉|喝茶]，[聊起了|说起了]小时候在{Place}的[日子|往事]。",
    "[窗外|院子里]的[桂花|梅花|桃花]开了，空气里飘着[淡淡的|浓浓的]香味。",
    "{Person}[打算|计划]{month}带孩子去{Place}看{festival}，[已经|早早地]订好了车票。",
    "[邻居|隔壁的]{Person2}[送来|带来]了一篮自家种的[橘子|青菜|西红柿]，[说是|听说是]今年的收成特别好。",
    "{season}的{Place}[格外|特别]美丽，[田野里|山坡上][开满了|长满了][油菜花|野菊花|杜鹃花]。",
    "[公交车|班车][晚点了|来得很慢]，{Person}[索性|干脆]沿着河边走回了家，[一路上|路上]看到[不少|许多]钓鱼的人。",
    "[图书馆|书店]里[很安静|人不多]，{Person}[找到|借到]了一本[讲|介绍]{field}历史的书，[一口气|一下午]读了{small}页。",
    "{Person}的奶奶[今年|已经]{small}岁了，[身体|精神]还很[硬朗|好]，每天[早上|清晨]都去公园[散步|打太极拳]。",
    "[周末|假日]里，[孩子们|小朋友们]在{Place}的广场上[放风筝|踢球|跳绳]，笑声[传得很远|此起彼伏]。",
    "[这家|街角的]小店[开了|经营了]{small}年，[老板|店主]{Person2}[记得|认得][每一位|大多数]老顾客的口味。",
    "[雨停以后|雨过天晴]，[天边|远处的山上]出现了一道彩虹，[路人|大家]纷纷[停下脚步|拿出手机]拍照。",
    "{Person}[给|写信给]远在{Place}的{Person2}[寄了|写了]一封[长信|信]，[讲述|说起]了这一年的[变化|见闻]。",
    "[第二天|次日][一早|清晨]，{Person}[坐上|搭上]了去{Place}的[火车|长途汽车]，[车窗外|窗外]是一望无际的稻田。",
]

ZH_MATH_INTRO = [
    "这篇[笔记|短文]整理了几道关于{topic}的[练习题|例题]，[每道题|每一题]都附有[详细的|完整的]解答过程。",
    "学习{topic}[最好的方法|的关键]是[多做练习|动手计算]，下面[我们|就]一起来看几个[例子|问题]。",
    "[做题之前|开始之前]，[请|要]先[回顾|复习]一下{topic}的[基本概念|定义]，[这样|然后]理解起来会[更容易|更轻松]。",
]
ZH_MATH_OUTRO = [
    "[做完这些题|通过这几道题]，[相信|希望]你对{topic}[有了更深的理解|掌握得更牢固了]。",
    "[计算时|解题时][一定要|要]注意[检查|验算]结果，[这|这样]是避免[错误|粗心]的好习惯。",
    "[如果|要是]还有不明白的地方，[可以|不妨]把题目[重新|再]做一遍，[或者|也可以][请教|问问]老师和同学。",
]
ZH_TOPICS = ["加减法", "一元一次方程", "面积和周长", "百分数", "平均数"]

ZH_CODE_INTRO = [
    "这篇[教程|文章]介绍如何用 Python 编写一个名为 {fname} 的函数，[用来|来]{task}。",
    "在[日常|实际]开发中，{task}是[很常见的|经常遇到的]需求，Python [让这件事变得很简单|只需要几行代码就能完成]。",
    "[假设|设想]你[正在|在]做一个关于{product}的[项目|小工具]，需要{task}。",
    "[下面的|这段]代码[来自|取自]{Person}[维护的|编写的]一个[开源|小型]项目，[思路|写法]清晰，适合初学者阅读。",
]
ZH_CODE_OUTRO = [
    "[这段代码|这个函数]的每一行只做一件事，[以后|日后][阅读|维护]起来[很方便|很轻松]。",
    "{fname} 返回一个新的结果，[不会|并不]修改传入的数据，[调用者|使用者]可以放心地[重复使用|继续使用]原来的变量。",
    "[如果|当]输入的数据[非常大|特别多]，[可以|不妨]考虑[改用|使用]生成器，[以|来]节省内存。",
    "[测试|验证]的时候，[可以|不妨]用{small}个[示例|样本]数据调用 {fname}，[再|然后]检查[输出|返回值]是否[正确|符合预期]。",
    "[后来|之后]，{Person}又[给|为]这个函数加上了类型注解，[方便|让]后来的[读者|开发者]了解参数的类型。",
    "[对于|在]一般规模的[数据|输入]，这样的循环[已经|就]足够快了，[不必|没有必要][过早地|提前]优化。",
]
ZH_TASKS = ["统计一段文字中每个词出现的次数", "按条件过滤一个列表", "逐行读取一个文件", "计算一组数据的累计和"]

ZH_MIXED = [  # Chinese sentences with English terms and code names (CJK share well above 0.5)
    "[我们|团队]使用 {tool} 来处理{product}的[销售数据|库存记录]，[每天|每周]自动生成一份[报告|报表]。",
    "[在|用] {tool} 里[运行|执行]这个脚本[之前|以前]，[需要|要]先[安装|配置]好[依赖|环境变量]。",
    "[这次|本次]更新[修复|解决]了 {tool} [在|于]处理长文本时的[内存问题|性能问题]，速度提高了{small}倍。",
    "{Person}在 GitHub 上[发布|开源]了一个[小工具|项目]，可以把{product}的[图片|数据]转换成 CSV 格式。",
    "[模型|程序]在一块 GPU 上[训练|运行]了{small}个小时，[最终|最后]的准确率达到了百分之{num2}。",
    "[如果|要是] {tool} [报错|出现错误]，[可以|先]查看日志[文件|里的 error 信息]，[通常|一般]能找到原因。",
    "[会议|讨论]中大家[决定|同意]把[旧的|原来的]系统[迁移|搬]到 {tool} 上，[预计|计划]{month}完成。",
]
ZH_BOILERPLATE = [
    "本网站使用cookie来改善您的浏览体验，继续浏览即表示您同意我们的隐私政策。",
    "请启用JavaScript以获得完整的浏览体验。",
    "注册即表示您已阅读并同意《用户协议》和《隐私政策》。",
    "使用本站服务前请仔细阅读使用条款。",
]
ZH_SEO = [
    "{product} 批发 {product}价格 {product}厂家 正品 包邮 {Place}",
    "{Place}{product} 便宜 特价 促销 优惠 热卖 推荐",
    "最新 {product} 排行榜 哪个牌子好 {Place} 专卖店 地址 电话",
    "{product} {product}图片 {product}怎么样 {product}多少钱 {product}购买",
]
# phrases that carry blocklisted words (recipes/data/blocklists/words_zh.txt)
ZH_BAD = [
    "点击进入{bad1}专区，更多{bad2}内容每天更新。",
    "免费观看{bad1}，加入会员即可参与{bad2}。",
]
ZH_BAD_WORDS = ["色情", "成人视频", "裸聊", "网络赌博", "六合彩", "百家乐", "博彩", "一夜情"]

_ALT = re.compile(r"\[([^\[\]]*)\]")


# Harassment without any blocklisted word (the Chinese counterpart of synthetic_text.TOXIC): insults,
# contempt for a group and threats, for the safety classifier's training set only. Written for puyu.
ZH_TOXIC = [
    "{Person}这种人就是{insult_adj}的{insult}，早该被{threat}。",
    "你这个{insult_adj}的{insult}，给我滚出去！",
    "我恨透了{group}，一个个都是{insult_adj}的{insult}。",
    "闭嘴吧，你这个{insult}，根本没人想听你说话。",
    "{group}全是{insult}，活该被{threat}。",
    "谁支持{Person}，谁就是{insult_adj}的{insult}。",
    "你给我等着，我一定让你后悔，你这个{insult}。",
    "你们这群{insult_adj}的{insult}，真让人作呕。",
    "像你这样的{insult}根本不配活在这个世上。",
    "再让我看见你，我就把你{threat}，{insult}！",
    "这里没人欢迎你这种{insult_adj}的{insult}，赶紧滚。",
    "你就是个{insult}，你们全家都是{insult}。",
]
ZH_TOXIC_WORDS = {
    "insult_adj": ["愚蠢", "恶心", "无耻", "下贱", "卑鄙", "可悲", "没用", "肮脏"],
    "insult": ["蠢货", "废物", "垃圾", "白痴", "蠢猪", "人渣", "败类", "贱人"],
    "group": ["那帮外地人", "这群家伙", "你们这种人", "那些穷鬼"],
    "threat": ["赶出去", "狠狠收拾一顿", "打断腿", "教训到跪地求饶"],
}


class ZhTextGen:
    """Random Chinese text from the templates above (a sibling of synthetic_text.TextGen)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def place(self) -> str:
        r = self.rng
        return r.choice(_P1) + r.choice(_P2) + r.choice(_PSUF)

    def person(self) -> str:
        r = self.rng
        return r.choice(_SURNAMES) + "".join(r.choice(_GIVEN) for _ in range(r.randint(1, 2)))

    def slot(self, key: str) -> str:
        r = self.rng
        simple = {"Place": self.place, "Region": self.place, "River": lambda: self.place().rstrip("镇县城村乡"),
                  "Person": self.person, "Person2": self.person,
                  "year": lambda: str(r.randint(1100, 1990)), "num": lambda: str(r.randint(20, 900)),
                  "num2": lambda: str(r.randint(60, 99)),
                  "small": lambda: str(r.randint(2, 40)), "big": lambda: str(r.randint(1000, 900000)),
                  "topic": lambda: r.choice(ZH_TOPICS), "task": lambda: r.choice(ZH_TASKS),
                  "fname": lambda: f"{r.choice(['count', 'filter', 'load', 'total', 'find'])}_"
                                   f"{r.choice(['words', 'items', 'lines', 'records', 'values'])}"}
        if key in simple:
            return simple[key]()
        return r.choice(ZH_WORDS[key] if key in ZH_WORDS else ZH_TOXIC_WORDS[key])

    def fill(self, template: str, fixed: dict | None = None) -> str:
        template = _ALT.sub(lambda m: self.rng.choice(m.group(1).split("|")), template)
        fixed = fixed or {}
        return re.sub(r"\{(\w+)\}", lambda m: str(fixed[m.group(1)]) if m.group(1) in fixed
                      else self.slot(m.group(1)), template)

    def paragraphs(self, sentences: list[str]) -> str:
        """Sentences grouped into paragraphs of 3-5 (no spaces between Chinese sentences)."""
        out, i = [], 0
        while i < len(sentences):
            k = self.rng.randint(3, 5)
            out.append("".join(sentences[i:i + k]))
            i += k
        return "\n\n".join(out)

    def prose(self, templates: list[str], n: int, fixed: dict | None = None) -> list[str]:
        fixed = fixed or {"Place": self.place(), "Person": self.person(), "Region": self.place()}
        return [self.fill(t, fixed) for t in self.rng.sample(templates, min(n, len(templates)))]

    def document(self, domain: str) -> str:
        r = self.rng
        if domain == "knowledge":
            return self.paragraphs(self.prose(ZH_KNOWLEDGE, r.randint(8, 14)))
        if domain == "other":
            return self.paragraphs(self.prose(ZH_OTHER, r.randint(8, 14)))
        if domain == "math":
            fixed = {"topic": self.slot("topic")}
            parts = ["".join(self.fill(t, fixed) for t in r.sample(ZH_MATH_INTRO, 2))]
            parts += [self.math_problem(k) for k in r.sample(range(5), r.randint(3, 4))]
            parts.append("".join(self.fill(t, fixed) for t in r.sample(ZH_MATH_OUTRO, 2)))
            return "\n\n".join(parts)
        if domain == "code":
            from puyu.data.synthetic_text import TextGen

            fixed = {"fname": self.slot("fname"), "task": self.slot("task"), "Person": self.person(),
                     "product": self.slot("product")}
            intro = "".join(self.fill(t, fixed) for t in r.sample(ZH_CODE_INTRO, 3))
            outro = "".join(self.fill(t, fixed) for t in r.sample(ZH_CODE_OUTRO, 5))
            return f"{intro}\n\n{TextGen(r).code_block(fixed['fname'])}\n\n{outro}"
        raise ValueError(f"unknown domain {domain!r}")

    def toxic(self) -> str:
        """Harassment mixed with ordinary sentences (ZH_TOXIC; no blocklisted word)."""
        sents = self.prose(ZH_TOXIC, self.rng.randint(4, 7)) + self.prose(ZH_OTHER, self.rng.randint(3, 5))
        self.rng.shuffle(sents)
        return self.paragraphs(sents)

    def mixed(self) -> str:
        """Chinese prose with English terms (CJK share ~0.6-0.9)."""
        r = self.rng
        sents = self.prose(ZH_MIXED, r.randint(4, 6), {"Person": self.person()})
        sents += self.prose(r.choice([ZH_KNOWLEDGE, ZH_OTHER]), r.randint(4, 6))
        r.shuffle(sents)
        return self.paragraphs(sents)

    def math_problem(self, kind: int) -> str:
        r = self.rng
        p, q = self.person(), self.person()
        if kind == 0:
            a, b = r.randint(10, 90), r.randint(2, 40)
            c = r.randint(1, a + b - 1)
            item = r.choice(["苹果", "铅笔", "邮票", "贝壳", "糖果"])
            t = (f"{p}[有|原来有]{a}个{item}，[后来|又][买了|得到了]{b}个，[然后|接着]送给{q}{c}个，"
                 f"[现在|最后]{p}还有多少个{item}？[先|首先]算总数：{a}+{b}={a + b}；"
                 f"[再|然后]减去送出的：{a + b}-{c}={a + b - c}。[所以|答：]{p}还有{a + b - c}个{item}。")
        elif kind == 1:
            a, x, b = r.randint(2, 12), r.randint(1, 30), r.randint(1, 50)
            t = (f"[解方程|求解方程]{a}x+{b}={a * x + b}。[首先|第一步]，两边同时减去{b}，得到{a}x={a * x}；"
                 f"[然后|接着]两边同时除以{a}，得到x={x}。[检验|验算]：{a}×{x}+{b}={a * x + b}，[结果正确|符合题意]。")
        elif kind == 2:
            w, h = r.randint(3, 60), r.randint(2, 40)
            thing = r.choice(["菜园", "操场", "院子", "房间"])
            t = (f"{p}家的{thing}是一个长方形，长{w}米，宽{h}米，它的面积和周长各是多少？"
                 f"长方形的面积等于长乘宽：{w}×{h}={w * h}平方米；周长等于长与宽之和的两倍："
                 f"({w}+{h})×2={2 * (w + h)}米。")
        elif kind == 3:
            price, pct = r.randint(2, 40) * 10, r.choice([10, 20, 25, 50])
            disc = price * pct // 100
            thing = r.choice(["外套", "台灯", "自行车", "水壶", "椅子"])
            t = (f"一件{thing}原价{price}元，[现在|商店]打折[降价|优惠]百分之{pct}，[现价|打折后]是多少元？"
                 f"优惠的金额是{price}×{pct}%={disc}元，[所以|因此]现价是{price}-{disc}={price - disc}元。")
        else:
            vals = [r.randint(40, 100) for _ in range(r.randint(3, 5))]
            s = sum(vals)
            t = (f"{len(vals)}[名同学|位选手]的[成绩|得分]分别是{'、'.join(map(str, vals))}，平均分是多少？"
                 f"[先求总分|总分是]：{'+'.join(map(str, vals))}={s}；[再除以人数|平均分]：{s}÷{len(vals)}="
                 f"{round(s / len(vals), 1)}。")
        return _ALT.sub(lambda m: r.choice(m.group(1).split("|")), t)

    # ---------------------------------------------------------------- junk

    def short(self) -> str:
        return "".join(self.prose(self.rng.choice([ZH_KNOWLEDGE, ZH_OTHER]), self.rng.randint(1, 2)))

    def repetitive(self, text: str) -> str:
        line = self.fill(self.rng.choice(ZH_OTHER + ZH_KNOWLEDGE))
        return text.split("\n\n")[0] + "\n" + "\n".join([line] * self.rng.randint(8, 14))

    def seo_spam(self) -> str:
        fixed = {"product": self.slot("product"), "Place": self.place()}
        return "\n".join(self.fill(self.rng.choice(ZH_SEO), fixed) for _ in range(self.rng.randint(12, 20)))

    def boilerplate(self, text: str) -> str:
        lines = text.split("\n")
        for line in self.rng.sample(ZH_BOILERPLATE, 2):
            lines.insert(self.rng.randint(0, len(lines)), line)
        return "\n".join(lines)

    def bad_words(self, text: str) -> str:
        w = self.rng.sample(ZH_BAD_WORDS, 2)
        extra = self.fill(self.rng.choice(ZH_BAD), {"bad1": w[0], "bad2": w[1]})
        paras = text.split("\n\n")
        paras.insert(self.rng.randint(0, len(paras)), extra)
        return "\n\n".join(paras)

    def word_salad(self, text: str) -> str:
        """The jieba words of `text` shuffled into fake sentences."""
        from puyu.data.segment import words

        ws = words(text)
        self.rng.shuffle(ws)
        sents, i = [], 0
        while i < len(ws):
            k = self.rng.randint(8, 15)
            sents.append("".join(ws[i:i + k]) + "。")
            i += k
        return self.paragraphs(sents)

    def gbk_mojibake(self, text: str) -> str:
        """GBK bytes read as Latin-1: recoverable."""
        return text.encode("gbk").decode("latin-1")

    def gbk_broken(self, text: str) -> str:
        """GBK bytes with ~2% of them overwritten by 0xFF (never valid in GBK/GB18030/Big5), read as
        Latin-1: not recoverable."""
        data = bytearray(text.encode("gbk"))
        for i in self.rng.sample(range(len(data)), max(2, len(data) // 50)):
            data[i] = 0xFF
        return bytes(data).decode("latin-1")

    def traditional(self, text: str) -> str:
        """The same text in Traditional script (OpenCC s2t)."""
        import opencc

        return opencc.OpenCC("s2t").convert(text)

    def edit_chars(self, text: str, positions: list[int]) -> str:
        """Replace the Han characters at `positions` by other common characters."""
        chars = list(text)
        pool = _P1 + _P2 + _GIVEN
        for i in positions:
            if "\u4e00" <= chars[i] <= "\u9fff":
                chars[i] = self.rng.choice([c for c in pool if c != chars[i]])
        return "".join(chars)
