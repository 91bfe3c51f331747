"""Clean text in four domains (knowledge, math, code, other), plus the kinds of junk the pipeline must
remove, generated from templates and lexicons. Used by `puyu.data.synthetic` to build the labelled dirty
corpus and the seed/training sets (nothing can be downloaded here).

Variety is what matters for measurement: proper nouns are made up from syllables (thousands of them),
numbers are random, and each document draws 10-18 sentences from 15-20 templates, so two independent
documents share almost no word 5-grams (their Jaccard similarity is ~0.01) and near-duplicates only
appear where `synthetic.py` plants them.
"""

from __future__ import annotations

import random
import re
import string

DOMAINS = ("knowledge", "math", "code", "other")


def _w(s: str) -> list[str]:
    return s.split()


UNSAFE_WORDS = ("porn", "xxx", "nsfw", "hentai", "camgirl", "nudes", "escort", "viagra")
NOUNS = _w("harbour market bridge tower library garden festival river valley mountain forest village castle "
           "temple monastery railway factory school museum theatre island lake canal mill church square road "
           "farm orchard vineyard mine quarry port fortress palace cathedral hospital station tunnel lighthouse "
           "meadow archive observatory")
NOUNS_PL = _w("tools pottery textiles grain wool spices manuscripts coins maps instruments ships wines cheeses "
              "fabrics ceramics paintings carpets engines clocks lanterns baskets boats books songs poems fossils "
              "minerals seeds herbs timber copper silver glass leather salt olives")
ADJS = _w("ancient busy quiet remarkable modest prosperous remote coastal famous small large northern southern "
          "historic rural narrow wide gentle steep fertile dry humid mild harsh colourful elegant simple rare "
          "common early important popular traditional modern wealthy peaceful turbulent beautiful ordinary "
          "unusual detailed careful rapid slow steady")
PROFESSIONS = _w("merchant engineer painter physician botanist architect astronomer historian teacher poet sailor "
                 "mathematician chemist cartographer composer judge farmer weaver")
FIELDS = _w("astronomy botany geology medicine architecture mathematics chemistry history linguistics music "
            "philosophy economics agriculture navigation zoology physics")
ANIMALS = [("heron", "herons"), ("beetle", "beetles"), ("salamander", "salamanders"), ("lizard", "lizards"),
           ("finch", "finches"), ("trout", "trout"), ("badger", "badgers"), ("moth", "moths"),
           ("frog", "frogs"), ("owl", "owls"), ("eel", "eels"), ("hare", "hares")]
WORDS = {
    "direction": _w("north south east west centre"),
    "century": ["twelfth century", "fourteenth century", "sixteenth century", "eighteenth century",
                "nineteenth century"],
    "habitat": ["wetlands", "forests", "high meadows", "rocky coasts", "river banks", "dry plains"],
    "climate": _w("temperate continental oceanic mediterranean subtropical alpine"),
    "material": _w("stone brick oak iron granite marble limestone"),
    "food": _w("bread apples cheese fish soup coffee tea rice oranges cake tomatoes onions"),
    "weekday": _w("Monday Tuesday Wednesday Thursday Friday Saturday Sunday"),
    "month": _w("January February March April May June July August September October November December"),
    "shop": ["bakery", "market", "pharmacy", "bookshop", "post office", "hardware store"],
    "weather": ["cold and windy", "warm and bright", "grey and wet", "foggy", "unusually hot"],
    "object": _w("cup letter key photograph book lamp basket glove"),
    "pronoun": _w("he she they"),
    "smell": ["rain", "old leather", "fresh bread", "diesel", "wet wool"],
    "spice": _w("salt pepper cinnamon saffron thyme"),
    "place_generic": ["harbour", "old bridge", "top of the hill", "edge of the forest", "station"],
    "meaning": ['"place by the water"', '"high meadow"', '"the old ford"', '"grey rock"', '"market field"'],
    "gift": ["gift card", "travel mug", "phone case", "mystery box"],
    "insult": _w("idiot moron loser fool coward clown parasite imbecile rat creep"),
    "insult_pl": _w("idiots morons losers fools cowards clowns parasites imbeciles rats vermin"),
    "insult_adj": _w("pathetic worthless stupid disgusting useless brainless ignorant miserable filthy ugly"),
    "threat": ["thrown out", "beaten", "driven away", "punished", "locked up", "chased off"],
    "bad": list(UNSAFE_WORDS),
    "group": ["neighbours", "tourists", "fans of the other team", "people from the city", "newcomers"],
    "item": _w("apples marbles stickers pencils coins stamps books shells"),
    "container": _w("box basket jar crate bag"),
    "lang": ["Python"],
}
PRODUCTS = [("watch", "watches"), ("phone", "phones"), ("laptop", "laptops"), ("sofa", "sofas"),
            ("blender", "blenders"), ("mattress", "mattresses"), ("sneaker", "sneakers"), ("camera", "cameras")]
_SYLLABLES = _w("ka lo mi ra ven dor tis bel an or eth ul ser qui mar zen tor lia ny gar sel mon fa ri")

KNOWLEDGE = [
    "{Place} is a {adj} town in the {direction} of {Region}, known for its {adj2} {noun_pl}.",
    "It was founded in {year} by {Person}, a {profession} who had travelled from {Place2}.",
    "The economy of {Place} depends mainly on {noun_pl} and {noun_pl2}, which are sold as far as {Region2}.",
    "In {year2}, the council approved the construction of a {adj} {noun} near the lake.",
    "Historians describe the {century} as a period of {adj} growth for the whole {direction} region.",
    "{Person2} was a {profession} whose work on {field} influenced many later scholars.",
    "Born in {Place2} in {year}, {Person2} studied {field} at the University of {Place3}.",
    "The {animal} is a {adj} species found in the {habitat} of {Region}.",
    "Adult {animal_pl} can reach a length of {num} centimetres and live for up to {small} years.",
    "Most researchers agree that the {adj} {noun} was first described by {Person2} in {year}.",
    "The {noun} was rebuilt after a fire in {year2} and now houses a museum of {field}.",
    "Its population was estimated at {big} people in the census of {year3}.",
    "The climate is {climate}, with {adj} summers and {adj2} winters.",
    "Several {adj} {noun_pl} have been found near the {noun} since the excavations began in {year}.",
    "The name {Place} probably comes from an old word meaning {meaning}.",
    "During the {century}, trade routes connected {Place} with {Place2} and the coast of {Region2}.",
    "The river {River} flows through the valley for about {num} kilometres before it reaches the sea.",
    "A {adj} bridge of {material} crosses the river at the centre of the old town.",
    "Today the region is known for its {adj} {noun_pl}, its festivals and its {adj2} food.",
    "Scholars of {field} still visit the {noun} of {Place} to study its {adj} collection of {noun_pl}.",
]
OTHER = [
    "On {weekday} morning, {Person} walked to the {shop} to buy {food} and {food2}.",
    "The weather was {weather}, so {pronoun} decided to take the {adj} road along the river.",
    "{Person} had not seen {Person2} since the summer they spent together in {Place}.",
    "When the bus finally arrived, it was almost empty and smelled of {smell}.",
    '"We should have left earlier," said {Person2}, looking at the {adj} sky.',
    "The local council announced on {weekday} that the {noun} will close for repairs until {month}.",
    "Residents of {Place} said the decision came as a surprise, but most of them understood the reasons.",
    "A spokesperson for the company told reporters that sales of {product_pl} had risen by {small} percent.",
    "After dinner, the family sat in the garden and talked about the {adj} days of their childhood.",
    "{Person} laughed, put the {object} back on the table and opened the window.",
    "The match in {Place} ended {small} to {small2} after a {adj} second half in front of {big} fans.",
    "Later that evening, {pronoun} wrote a long letter to {Person2} about the {noun} and the {noun2}.",
    "Nobody in the village could remember a winter as {adj} as the one of {year}.",
    "The festival will take place in {Place} in {month}, and tickets are free for children.",
    "She told me that the secret of a good {food} is patience and a little {spice}.",
    "By the time they reached the {place_generic}, the sun had already set behind the hills.",
    "{Person2} promised to call back on {weekday}, but the phone never rang.",
    "The children of {Place} collected {small} {item} each and counted them twice before school.",
]
MATH_INTRO = [
    "[In this lesson|In this worksheet|Today|In the next few exercises] we [work through|solve|look at] "
    "[a few|some|several] problems about {topic}.",
    "The [following|next|worked] examples show how to [solve|handle|approach] problems about {topic} "
    "[step by step|one step at a time|carefully].",
    "Here are [some|a few|three or four] practice problems on {topic}, [each with|all with|followed by] "
    "a [worked|complete|short] solution.",
    "[Problems|Questions|Exercises] about {topic} [appear|come up|show up] [often|again and again|every year] "
    "in [school|class|exams], so [it pays to|it helps to|we should] practise them.",
]
MATH_OUTRO = [
    "[Remember|Do not forget|It is a good habit] to check each answer by [putting|substituting|plugging] it "
    "back into the [original|first] [problem|question].",
    "With [a little|some|enough] practice, problems like these become [quick|easy|routine] to solve.",
    "[Try|You can try] changing the numbers in each [problem|exercise] and [solving|working] it again "
    "[on your own|without help|from scratch].",
    "[Next time|In the next lesson|Later] we will [look at|move on to|practise] {topic} with "
    "[larger|harder|trickier] numbers.",
]
CODE_INTRO = [
    "The [following|next|short] {lang} function {verb} a list of {noun_pl} and [keeps|returns|collects] "
    "the ones [that matter|we need|above a limit].",
    "In this [short|small|quick] [tutorial|example|note] we write a {adj} {lang} helper called {fname} "
    "and [explain|describe|walk through] how it works.",
    "[Many|Most|Plenty of] programs need to {task}, and {lang} makes this [easy|simple|pleasant] with "
    "[a few|only a handful of|just some] lines of code.",
    "[Suppose|Imagine|Let us say] you [maintain|work on|inherited] a [small|growing|messy] project about "
    "{noun_pl} in {Place} and need to {task}.",
    "[A colleague|A reader|A student] named {Person} asked [how to|whether we could|for a way to] {task} "
    "[without|with no|avoiding] extra libraries.",
    "This [page|post|section] shows [one|a] [clean|plain|readable] way to {task} in {lang}, using a "
    "function called {fname}.",
]
CODE_OUTRO = [
    "The function returns a new value [instead of|rather than] changing its input, so the caller keeps "
    "the [original|old|unchanged] data.",
    "A [simple|plain|short] loop like this is easy to read and fast enough for [small|modest|typical] inputs.",
    "If you need better performance on [very large|huge|millions of] inputs, consider a [generator|library "
    "function|vectorised approach] instead.",
    "You can test it by calling {fname} with [a few|some|{small}] example values and [printing|checking|"
    "comparing] the result.",
    "[Each|Every] line does one thing, which makes the code easy to [test|change|review] later.",
    "[In our tests|On a laptop|On the data from {Place}] it handled {big} {noun_pl} in [well under|about|"
    "less than] a second.",
    "{Person} [later|then|also] added a [docstring|type hint|unit test] so the [team|next reader|reviewer] "
    "knows what {fname} expects.",
    "[Watch out|Be careful|Take care] when the input is empty: the function should [still|then] return a "
    "[sensible|valid|predictable] value.",
    "The name {fname} [says|tells|describes] what the function does, which [matters|helps|counts] more than "
    "[clever|short|fancy] code.",
]
# Harassment sentence frames; the hostile words come from slots, so frames held out of training still
# share the vocabulary a classifier can learn (as real toxic text shares a lexicon across phrasings).
TOXIC = [
    "People like {Person} are {insult_adj} and should be {threat} from this town.",
    "I hate every one of those {group}, they are {insult_adj} and {insult_adj2}.",
    "You are a {insult_adj} {insult} and nobody will ever listen to you.",
    "Shut up, you {insult_adj} {insult}, and go back to where you came from.",
    "Those {group} are {insult_pl} and deserve to be {threat}.",
    "Anyone who agrees with {Person} is a {insult_adj} {insult}.",
    "I will make sure you regret this, you {insult_adj} {insult}.",
    "What a {insult_adj}, {insult_adj2} bunch of {insult_pl} you all are.",
    "They should all be {threat} until they learn their place, the {insult_adj} {insult_pl}.",
    "Your kind is a disease, you {insult_adj} {insult}, and the world would be better without you.",
    "Nobody wants {insult_adj} {group} like you around here, so get lost, {insult}.",
    "You are too {insult_adj} to live, and everyone here despises {insult_pl} like you.",
]
ADULT = [
    "Watch free {bad} clips and more {bad2} content on our partner site.",
    "Hot {bad} videos updated every day, no sign up needed.",
    "Meet a real {bad} in {Place} tonight, discreet and cheap.",
    "Click here for uncensored {bad} and {bad2} galleries.",
    "The best {bad} site on the web, thousands of {bad2} pictures.",
    "Buy {bad} without prescription, fast shipping to {Place}.",
    "Join now for unlimited {bad} streams and private {bad2} chats.",
    "Only adults may enter this {bad} archive of {bad2} material.",
]
ADVERT = [
    "Buy the new {Product} {product} today and save {small} percent on your first order!",
    "Limited time offer: only {price} dollars while stocks last!",
    "Click here to claim your free {gift} now.",
    "Best prices guaranteed on all {product_pl} and {product_pl2} this week.",
    "Order before midnight and get free shipping to {Place}.",
    "Call {phone} to speak with one of our friendly sales agents.",
    "Thousands of happy customers trust {Product} for their {product_pl}.",
    "Don't miss this amazing deal, it will not last long!",
    "Sign up for our newsletter and receive exclusive discount codes every week.",
    "Visit our store in {Place} or shop online at any time of the day.",
    "Hurry, the {Product} sale ends on {weekday} at midnight!",
    "Act now and get a second {product} for half the price.",
]
SEO = [
    "cheap flights to {Place} and {Place2}",
    "best hotels in {Place} with free parking",
    "buy {product_pl} online with fast delivery",
    "top {small} {product_pl} of the year",
    "{Place} weather forecast for the weekend",
    "discount codes for {Product} and {Product2}",
    "how to find the cheapest {product} in {Place}",
    "{product} reviews and prices near me",
    "last minute deals to {Place} for the family",
    "compare {product_pl} and save money today",
    "used {product_pl} for sale in {Place}",
    "{Product} outlet store opening hours",
]
BOILERPLATE = [
    "This website uses cookies to improve your experience.",
    "Please enable JavaScript in your browser to see the comments.",
    "By using this site you agree to our Terms of Use and Privacy Policy.",
    "Read our cookie policy to learn more about how we use cookies.",
    "JavaScript is disabled, so some features of this page may not work.",
]
ACCENTED = [
    "The café near the station in Zürich serves crème brûlée with a naïve kind of charm.",
    "Her résumé mentions a year in São Paulo and a summer job in Málaga.",
    "The façade of the old hôtel — painted in 1902 — was restored by a team from Köln.",
    "They ordered jalapeño soup, a piña colada and a crêpe at the small café in Montréal.",
]
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
         "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.")
FOREIGN = {
    "fr": ["Le matin, {Person} est allé au marché de {Place} pour acheter du pain et des légumes.",
           "La ville est connue pour son vieux pont de pierre et ses petites rues tranquilles.",
           "Les habitants se réunissent chaque année sur la place pour une grande fête.",
           "Il faisait froid, mais nous avons décidé de marcher jusqu'à la rivière.",
           "Selon les historiens, le château a été construit au quatorzième siècle.",
           "Elle m'a dit que le secret d'une bonne soupe, c'est la patience.",
           "Les enfants de l'école ont visité le musée avec leur professeur.",
           "Après le dîner, la famille parlait des vacances passées à la montagne."],
    "de": ["Am Morgen ging {Person} zum Markt in {Place}, um Brot und Gemüse zu kaufen.",
           "Die Stadt ist bekannt für ihre alte Steinbrücke und die ruhigen Gassen.",
           "Jedes Jahr treffen sich die Einwohner auf dem Platz zu einem großen Fest.",
           "Es war kalt, aber wir haben beschlossen, bis zum Fluss zu laufen.",
           "Nach Ansicht der Historiker wurde die Burg im vierzehnten Jahrhundert gebaut.",
           "Sie sagte mir, das Geheimnis einer guten Suppe sei die Geduld.",
           "Die Kinder der Schule besuchten mit ihrem Lehrer das Museum.",
           "Nach dem Abendessen sprach die Familie über den Urlaub in den Bergen."],
    "es": ["Por la mañana, {Person} fue al mercado de {Place} para comprar pan y verduras.",
           "La ciudad es conocida por su viejo puente de piedra y sus calles tranquilas.",
           "Cada año los habitantes se reúnen en la plaza para una gran fiesta.",
           "Hacía frío, pero decidimos caminar hasta el río.",
           "Según los historiadores, el castillo fue construido en el siglo catorce.",
           "Ella me dijo que el secreto de una buena sopa es la paciencia.",
           "Los niños de la escuela visitaron el museo con su profesor.",
           "Después de la cena, la familia hablaba de las vacaciones en la montaña."],
}


_ALT = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")


class _Slots(dict):
    """format_map() mapping that invents a value for each new slot ('adj2' draws another 'adj')."""

    def __init__(self, gen: TextGen, fixed: dict | None = None):
        super().__init__(fixed or {})
        self.gen = gen

    def __missing__(self, key: str) -> str:
        value = self.gen.slot(key.rstrip("0123456789"))
        self[key] = value
        return value


class TextGen:
    """Random text from templates. `split="train"` restricts the toxic and advert templates to every
    other one, so classifiers trained on it are tested on templates they have not seen."""

    def __init__(self, rng: random.Random, split: str = "all"):
        self.rng = rng
        self.split = split

    def _pool(self, templates: list[str]) -> list[str]:
        return templates[::2] if self.split == "train" else templates

    def name(self) -> str:
        return "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 3))).capitalize()

    def slot(self, key: str) -> str:
        r = self.rng
        simple = {"Place": self.name, "Region": self.name, "River": self.name, "Product": self.name,
                  "Person": lambda: f"{self.name()} {self.name()}",
                  "adj": lambda: r.choice(ADJS), "noun": lambda: r.choice(NOUNS),
                  "noun_pl": lambda: r.choice(NOUNS_PL), "profession": lambda: r.choice(PROFESSIONS),
                  "field": lambda: r.choice(FIELDS), "animal": lambda: r.choice(ANIMALS)[0],
                  "animal_pl": lambda: r.choice(ANIMALS)[1], "product": lambda: r.choice(PRODUCTS)[0],
                  "product_pl": lambda: r.choice(PRODUCTS)[1],
                  "year": lambda: str(r.randint(1100, 1990)), "num": lambda: str(r.randint(2, 900)),
                  "small": lambda: str(r.randint(2, 40)), "big": lambda: f"{r.randint(1000, 900000):,}",
                  "price": lambda: f"{r.randint(5, 500)}.99",
                  "phone": lambda: f"555-{r.randint(100, 999)}-{r.randint(1000, 9999)}",
                  "topic": lambda: r.choice(["adding and subtracting", "linear equations", "areas and perimeters",
                                             "percentages", "averages"]),
                  "verb": lambda: r.choice(["filters", "sorts", "scans", "groups"]),
                  "task": lambda: r.choice(["count words in a text", "filter a list", "read a file line by line",
                                            "compute a running total"]),
                  "fname": lambda: f"{r.choice(['count', 'filter', 'load', 'total', 'find'])}_"
                                   f"{r.choice(NOUNS_PL)}"}
        if key in simple:
            return simple[key]()
        return r.choice(WORDS[key])

    def fill(self, template: str, fixed: dict | None = None) -> str:
        """Expand "[a|b|c]" alternations at random, then fill "{slot}"s."""
        template = _ALT.sub(lambda m: self.rng.choice(m.group(1).split("|")), template)
        return template.format_map(_Slots(self, fixed))

    def paragraphs(self, sentences: list[str]) -> str:
        """Group sentences into paragraphs of 3-6 (one paragraph per line, blank line between)."""
        out, i = [], 0
        while i < len(sentences):
            k = self.rng.randint(3, 6)
            out.append(" ".join(sentences[i:i + k]))
            i += k
        return "\n\n".join(out)

    def prose(self, templates: list[str], n: int, fixed: dict | None = None) -> list[str]:
        """n sentences from distinct templates (no template twice in one document)."""
        fixed = fixed or {"Place": self.name(), "Person": f"{self.name()} {self.name()}"}
        return [self.fill(t, fixed) for t in self.rng.sample(templates, min(n, len(templates)))]

    # ---------------------------------------------------------------- clean documents

    def document(self, domain: str) -> str:
        r = self.rng
        if domain == "knowledge":
            return self.paragraphs(self.prose(KNOWLEDGE, r.randint(10, 18)))
        if domain == "other":
            return self.paragraphs(self.prose(OTHER, r.randint(10, 18)))
        if domain == "math":
            fixed = {"topic": self.slot("topic")}
            parts = [" ".join(self.fill(t, fixed) for t in r.sample(MATH_INTRO, 2))]
            parts += [self.math_problem(k) for k in r.sample(range(5), r.randint(3, 4))]
            parts.append(" ".join(self.fill(t, fixed) for t in r.sample(MATH_OUTRO, 2)))
            return "\n\n".join(parts)
        if domain == "code":
            fixed = {"fname": self.slot("fname")}
            fixed.update(Place=self.name(), Person=f"{self.name()} {self.name()}")
            intro = " ".join(self.fill(t, fixed) for t in r.sample(CODE_INTRO, 3))
            outro = " ".join(self.fill(t, fixed) for t in r.sample(CODE_OUTRO, 6))
            return f"{intro}\n\n{self.code_block(fixed['fname'])}\n\n{outro}"
        raise ValueError(f"unknown domain {domain!r}")

    def math_problem(self, kind: int) -> str:
        """A word problem with its worked solution; `kind` 0-4 picks the type."""
        r = self.rng
        f = {"p": self.name(), "q": self.name()}
        if kind == 0:
            a, b = r.randint(10, 90), r.randint(2, 40)
            c = r.randint(1, a + b - 1)
            f.update(a=a, b=b, c=c, s=a + b, ans=a + b - c, item=self.slot("item"), box=self.slot("container"))
            t = ("{p} [has|owns|keeps] a {box} with {a} {item}. {p} [buys|finds|is given] {b} more and then "
                 "[gives|hands|passes] {c} of them to {q}. [How many|What number of] {item} [does {p} have|"
                 "are left with {p}] [now|at the end]? [We start with|At first there are|Initially {p} has] "
                 "{a} {item}. [After|Once we add] the {b} new ones, [the total is|there are|{p} has] {a} plus "
                 "{b}, [which is|that is|giving] {s}. [Giving away|Removing|Subtracting] {c} [leaves|gives] {s} "
                 "minus {c}, [which is|that is|or] {ans}. So the answer is {ans} {item}.")
        elif kind == 1:
            a, x, b = r.randint(2, 12), r.randint(1, 30), r.randint(1, 50)
            f.update(a=a, x=x, b=b, c=a * x + b, d=a * x)
            t = ("[Solve|Find x in|Work out the value of x in] the equation {a}x + {b} = {c}. [First|To begin|"
                 "As a first step] we subtract {b} from both sides, [which gives|and we get|leaving] {a}x = {d}. "
                 "[Then|Next|After that] we divide [both sides|everything] by {a}, so x [is equal to|equals|is] "
                 "{x}. [We can check|Let us check|To verify] the [result|answer|solution]: {a} times {x} plus "
                 "{b} [gives|makes|is] {c}, as [required|expected|it should].")
        elif kind == 2:
            w, h = r.randint(3, 60), r.randint(2, 40)
            f.update(w=w, h=h, area=w * h, per=2 * (w + h), thing=r.choice(["garden", "field", "yard", "room"]))
            t = ("A [rectangular|long] {thing} [owned by|belonging to|rented by] {p} is {w} metres long and {h} "
                 "metres wide. What [are|is] its area and [its perimeter|the length of its border]? The area "
                 "[of a rectangle|here] is [the product of|found by multiplying] [its|the] length and [its|the] "
                 "width, so [the area is|we get] {area} square metres. The perimeter is twice the sum of "
                 "[the length and the width|both sides], which [gives|means] {per} metres of [fence|border|edge].")
        elif kind == 3:
            price, pct = r.randint(2, 40) * 10, r.choice([10, 20, 25, 50])
            disc = price * pct // 100
            f.update(price=price, pct=pct, disc=disc, sale=price - disc,
                     thing=r.choice(["coat", "lamp", "bicycle", "kettle", "chair"]))
            t = ("A {thing} in the shop of {p} costs {price} dollars and is [on sale|reduced|discounted] "
                 "[for|by] {pct} percent. What is the [sale|new|reduced] price? The discount is {pct} percent "
                 "of {price}, [which is|that is|or] {disc} dollars. [Taking|Subtracting] the discount [away "
                 "from|off] the [original|old|full] price leaves {sale} dollars, [and that is what|which is "
                 "the amount] {q} will pay.")
        else:
            vals = [r.randint(40, 100) for _ in range(r.randint(3, 5))]
            f.update(n=len(vals), vals=", ".join(map(str, vals[:-1])) + f" and {vals[-1]}", total=sum(vals),
                     mean=round(sum(vals) / len(vals), 1))
            t = ("[The|In a test, the] scores of {n} [students|players|runners] [were|came out as] {vals}. "
                 "What is the [mean|average] score? [Adding|Summing] the scores [gives|makes] {total}. "
                 "[Dividing|Then dividing] by {n} [gives|yields] a mean of {mean}, [which|and this] is the "
                 "[answer|average we wanted].")
        t = _ALT.sub(lambda m: r.choice(m.group(1).split("|")), t)
        return t.format(**f)

    def code_block(self, fname: str) -> str:
        r = self.rng
        item, attr = r.choice(["item", "entry", "record", "row"]), r.choice(["size", "price", "weight", "age"])
        arg = r.choice(["items", "entries", "records", "rows"])
        k = r.randint(1, 99)
        blocks = [
            [f"def {fname}({arg}, limit={k}):", "    result = []", f"    for {item} in {arg}:",
             f"        if {item}.{attr} > limit:", f"            result.append({item})", "    return result"],
            [f"def {fname}(text):", "    counts = dict()", "    for word in text.split():",
             "        counts[word] = counts.get(word, 0) + 1", "    return counts"],
            [f"def {fname}(path):", "    with open(path) as handle:", "        lines = handle.readlines()",
             "    return [line.strip() for line in lines if line.strip()]"],
            [f"def {fname}({arg}):", "    total = 0", f"    for {item} in {arg}:",
             f"        total = total + {item}.{attr}", "    return total"],
            [f"class {fname.title().replace('_', '')}:", f"    def __init__(self, {attr}):",
             f"        self.{attr} = {attr}", "", "    def scaled(self, factor):",
             f"        return self.{attr} * factor"],
        ]
        return "\n".join(r.choice(blocks))

    # ---------------------------------------------------------------- junk

    def foreign(self, lang: str) -> str:
        n = self.rng.randint(8, 14)
        fixed = {"Place": self.name(), "Person": self.name()}
        return self.paragraphs([self.fill(self.rng.choice(FOREIGN[lang]), fixed) for _ in range(n)])

    def toxic(self) -> str:
        sents = self.prose(self._pool(TOXIC), self.rng.randint(5, 8)) + self.prose(OTHER, self.rng.randint(4, 7))
        self.rng.shuffle(sents)
        return self.paragraphs(sents)

    def adult_spam(self) -> str:
        return "\n".join(self.prose(self._pool(ADULT), self.rng.randint(4, 6)) + self.prose(OTHER, 2))

    def advert(self) -> str:
        fixed = {"Product": self.name(), "Place": self.name()}
        pool = self._pool(ADVERT)
        return "\n".join(self.fill(t, fixed) for t in self.rng.sample(pool, min(len(pool), self.rng.randint(6, 9))))

    def seo_spam(self) -> str:
        return "\n".join(self.fill(self.rng.choice(SEO)) for _ in range(self.rng.randint(12, 20)))

    def word_salad(self, text: str) -> str:
        """The words of `text` shuffled into fake sentences: same vocabulary, broken syntax."""
        words = [w.strip(string.punctuation) for w in text.split()]
        words = [w for w in words if w]
        self.rng.shuffle(words)
        sents, i = [], 0
        while i < len(words):
            k = self.rng.randint(8, 15)
            chunk = words[i:i + k]
            sents.append(" ".join(chunk).capitalize() + ".")
            i += k
        return self.paragraphs(sents)

    def repetitive(self, text: str) -> str:
        line = self.fill(self.rng.choice(OTHER + KNOWLEDGE))
        return text.split("\n\n")[0] + "\n" + "\n".join([line] * self.rng.randint(8, 14))

    def symbol_noise(self, text: str) -> str:
        junk = "\u2591\u2592\u2593\u25a0\u25a1\u25c6\u25c7\u2580\u2584\ufffd\u2302\u25ca"
        words = text.split(" ")
        for i in range(0, len(words), 2):
            words[i] += " " + "".join(self.rng.choice(junk) for _ in range(self.rng.randint(3, 8)))
        return " ".join(words)

    def garble(self, text: str) -> str:
        """Corrupt 15% of the UTF-8 bytes with high-bit bytes and decode with replacement, as happens
        when a crawler guesses the wrong encoding of a binary-ish page: beyond ftfy's repair."""
        data = bytearray(text.encode("utf-8"))
        for i in self.rng.sample(range(len(data)), len(data) * 15 // 100):
            data[i] = self.rng.randint(0x80, 0xFF)
        return data.decode("utf-8", errors="replace")

    def mojibake(self, text: str) -> str:
        """UTF-8 read as Latin-1 (the classic mojibake), after adding a sentence with accents."""
        with_accents = text + "\n\n" + self.rng.choice(ACCENTED)
        return with_accents.encode("utf-8").decode("latin-1")

    def replace_words(self, text: str, positions: list[int], invented: bool = True) -> str:
        """Replace the words at `positions` (indices into text.split(" ")) by invented words (or, with
        `invented=False`, ordinary nouns and adjectives), keeping their trailing punctuation."""
        parts = text.split(" ")
        for i in positions:
            m = re.match(r"^(.*?)([.,!?;:\"')]*)$", parts[i], re.S)
            core, tail = m.group(1), m.group(2)
            head = core[: core.rfind("\n") + 1]  # keep anything up to a line break in this token
            if not any(c.isalnum() for c in core[len(head):]):
                continue  # indentation or punctuation: nothing to replace
            new = self.name().lower() if invented else self.rng.choice(NOUNS + ADJS)
            parts[i] = head + new + tail
        return " ".join(parts)
