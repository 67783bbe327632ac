"""The instruction-following probe's prompts: written here from templates, no hub, no external data.

Known-answer questions (capitals, unit conversions, small arithmetic, Python standard library) carry the
answer that exact match scores; open requests (rewrite, summarise, list) carry none and are scored by the loss
of the model's own pre-training answer and by whether the answer ends its turn. Every prompt asks for a short
answer, so that a model that still follows instructions can end its turn within the probe's small generation
budget.

The split is by content hash (stable across Python versions and orderings): a prompt is held out when the
first byte of sha256("probe:" + prompt) is below 128 — half of them — and the rest form the build split.
"""

from __future__ import annotations

import hashlib
import random

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Canada": "Ottawa",
    "Australia": "Canberra", "Egypt": "Cairo", "Kenya": "Nairobi", "Brazil": "Brasilia",
    "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Peru": "Lima", "Chile": "Santiago",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens", "Turkey": "Ankara", "Ireland": "Dublin",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Switzerland": "Bern", "Hungary": "Budapest",
    "the Czech Republic": "Prague", "Thailand": "Bangkok", "Vietnam": "Hanoi", "South Korea": "Seoul",
    "Indonesia": "Jakarta", "the Philippines": "Manila", "Iran": "Tehran", "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh", "Nigeria": "Abuja", "Ghana": "Accra", "Ethiopia": "Addis Ababa",
    "Morocco": "Rabat", "Cuba": "Havana", "Colombia": "Bogota", "Venezuela": "Caracas",
    "New Zealand": "Wellington", "Ukraine": "Kyiv", "Romania": "Bucharest", "Iceland": "Reykjavik",
    "the United Kingdom": "London", "the United States": "Washington",
}

# (from unit, to unit, factor): "How many <to> are in <n> <from>?" → n × factor
CONVERSIONS = [
    ("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("centimetres", "millimetres", 10),
    ("kilograms", "grams", 1000), ("litres", "millilitres", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("years", "months", 12),
    ("dozens", "items", 12), ("feet", "inches", 12),
]

# (question, answer): answers are one word or a short phrase
STDLIB = [
    ("Which Python built-in function returns the number of items in a list?", "len"),
    ("Which Python built-in function returns the largest item of an iterable?", "max"),
    ("Which Python built-in function returns the smallest item of an iterable?", "min"),
    ("Which Python built-in function adds up the numbers of an iterable?", "sum"),
    ("Which Python built-in function returns a new sorted list from an iterable?", "sorted"),
    ("Which Python built-in function writes text to standard output?", "print"),
    ("Which Python built-in function reads a line of text typed by the user?", "input"),
    ("Which Python built-in function opens a file?", "open"),
    ("Which Python built-in function returns the type of an object?", "type"),
    ("Which Python built-in function returns the absolute value of a number?", "abs"),
    ("Which Python built-in function pairs up items of several iterables?", "zip"),
    ("Which Python built-in function yields index and item pairs from an iterable?", "enumerate"),
    ("Which Python built-in function checks whether an object is an instance of a class?", "isinstance"),
    ("Which Python built-in function rounds a number?", "round"),
    ("Which Python built-in function reverses an iterable?", "reversed"),
    ("Which Python list method adds one item at the end of a list?", "append"),
    ("Which Python string method splits a string into a list of words?", "split"),
    ("Which Python string method joins a list of strings with a separator?", "join"),
    ("Which Python string method removes whitespace from both ends of a string?", "strip"),
    ("Which Python string method converts a string to upper case?", "upper"),
    ("Which Python string method converts a string to lower case?", "lower"),
    ("Which Python dict method returns the value for a key, or a default?", "get"),
    ("Which Python module provides regular expressions?", "re"),
    ("Which Python module reads and writes JSON?", "json"),
    ("Which Python module provides pseudo-random numbers?", "random"),
    ("Which Python module provides mathematical functions such as sqrt?", "math"),
    ("Which Python module handles dates and times as objects?", "datetime"),
    ("Which Python module provides object-oriented filesystem paths?", "pathlib"),
    ("Which Python module runs external commands?", "subprocess"),
    ("Which Python module parses command-line arguments?", "argparse"),
    ("Which Python module reads and writes CSV files?", "csv"),
    ("Which Python module provides the Counter and deque classes?", "collections"),
    ("Which Python module copies objects, shallow or deep?", "copy"),
    ("Which Python module provides the unittest framework?", "unittest"),
    ("Which Python module computes SHA-256 hashes?", "hashlib"),
    ("Which Python keyword defines a function?", "def"),
    ("Which Python keyword defines a class?", "class"),
    ("Which Python keyword returns a value from a function?", "return"),
    ("Which Python keyword imports a module?", "import"),
    ("What does math.sqrt compute?", "square root"),
    ("What does math.factorial compute?", "factorial"),
    ("What does math.gcd compute?", "greatest common divisor"),
    ("What does math.floor return for 3.7?", "3"),
    ("What does len('hello') return?", "5"),
    ("What does 7 // 2 evaluate to in Python?", "3"),
    ("What does 7 % 3 evaluate to in Python?", "1"),
    ("What does 2 ** 5 evaluate to in Python?", "32"),
]

SENTENCES = [
    "The meeting was moved from Monday to Wednesday because the room was booked.",
    "Our team finished the report late last night after many small delays.",
    "The old bridge over the river will be closed for repairs during the summer.",
    "She bought fresh bread and apples at the market before it started to rain.",
    "The new library opens at nine in the morning and closes at eight in the evening.",
    "Heavy snow blocked the mountain road, so the bus took a longer route.",
    "The children planted tomatoes in the garden and watered them every day.",
    "After the update, the program starts faster but uses a little more memory.",
    "The museum shows paintings from the seventeenth century in its north wing.",
    "He forgot his umbrella at the office and walked home in the rain.",
    "The train to the coast leaves every hour from the central station.",
    "Volunteers cleaned the beach on Saturday and collected forty bags of rubbish.",
    "The company hired three engineers to work on the new payment system.",
    "Prices at the cafe went up, but most customers kept coming back.",
    "The scientist measured the water temperature every morning for a month.",
    "Our neighbour repaired the fence that the storm had knocked down.",
    "The orchestra practised the symphony twice before the evening concert.",
    "A small fire in the kitchen was put out quickly and nobody was hurt.",
    "The students presented their project on solar power to the whole school.",
    "The river flooded the lower fields after a week of heavy rain.",
]
REWRITES = ["Rewrite this sentence in simpler words: {s}", "Rewrite this sentence in the passive voice: {s}",
            "Rewrite this sentence as a question: {s}"]
SUMMARISE = "Summarise this in at most five words: {s}"
LIST_TOPICS = ["colours", "fruits", "animals that live in the sea", "musical instruments",
               "European countries", "programming languages", "planets", "kitchen tools",
               "sports played with a ball", "types of trees", "vegetables", "birds", "metals", "board games",
               "units of length", "flowers", "vehicles", "rivers", "weather words", "shapes"]
LIST_TEMPLATES = ["List three {t}, separated by commas.", "Name two {t}. Answer in one line."]

HINT_NUMBER = " Answer with the number only."
HINT_WORD = " Answer in one or two words."


def _arithmetic(rng: random.Random) -> list[dict]:
    out = []
    for op, fn in (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("×", lambda a, b: a * b)):
        for _ in range(40):
            a, b = rng.randint(2, 60), rng.randint(2, 40 if op != "×" else 12)
            if op == "-" and b > a:
                a, b = b, a
            out.append(_fact("arithmetic", f"What is {a} {op} {b}?{HINT_NUMBER}", str(fn(a, b))))
    return out


def _fact(category: str, prompt: str, answer: str) -> dict:
    return {"kind": "fact", "category": category, "prompt": prompt, "answer": answer}


def _open(category: str, prompt: str) -> dict:
    return {"kind": "open", "category": category, "prompt": prompt, "answer": None}


def all_prompts() -> list[dict]:
    """Every probe prompt, in a fixed order: {kind: fact | open, category, prompt, answer (None for open)}."""
    rng = random.Random(12)  # fixed: the set must not change between runs
    out = [_fact("capital", f"What is the capital of {c}?{HINT_WORD}", a) for c, a in CAPITALS.items()]
    for src, dst, k in CONVERSIONS:
        for n in (2, 3, 5, 7, 9):
            out.append(_fact("conversion", f"How many {dst} are in {n} {src}?{HINT_NUMBER}", str(n * k)))
    out += _arithmetic(rng)
    out += [_fact("stdlib", q + HINT_WORD, a) for q, a in STDLIB]
    out += [_open("rewrite", t.format(s=s)) for s in SENTENCES for t in REWRITES]
    out += [_open("summarise", SUMMARISE.format(s=s)) for s in SENTENCES]
    out += [_open("list", t.format(t=topic)) for topic in LIST_TOPICS for t in LIST_TEMPLATES]
    seen: set = set()
    return [p for p in out if not (p["prompt"] in seen or seen.add(p["prompt"]))]  # random sums may repeat


def is_heldout(prompt: str) -> bool:
    return hashlib.sha256(("probe:" + prompt).encode()).digest()[0] < 128


def split_prompts(split: str) -> list[dict]:
    """The `build` or `heldout` half, ordered by content hash (a stable, category-mixed order to take a prefix
    of)."""
    rows = [p for p in all_prompts() if is_heldout(p["prompt"]) == (split == "heldout")]
    return sorted(rows, key=lambda p: hashlib.sha256(("order:" + p["prompt"]).encode()).hexdigest())
