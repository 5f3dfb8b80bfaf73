"""Writes the fact-learning development set (issue 25): dev.json and dev_sample10.json.

Deterministic (one seeded ``random.Random``, standard library only, no network):
running it twice writes the same bytes. Every person, pet, place, organisation
and product is invented (names built from syllables), so the base model cannot
know the facts; each fact has its own subject.

Schema of both files::

    {"facts": [{"statement", "question", "paraphrase", "paraphrases", "answer"}],
     "neighbours": [{"question", "answer"}], "distractor_chat": [str]}

``paraphrase`` is ``paraphrases[0]``; ``answer`` occurs verbatim in
``statement`` and never in a question. Usage::

    python3 benchmarks/fact_sets/make_dev_set.py [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 25
FACTS_PER_KIND = 6

# The ten relation kinds of dev_sample10.json (the default --facts of
# benchmarks/fact_learning.py): people, roles, a pet, places, organisations, a
# product, a year and an allergy, so the sample is not one kind of sentence.
SAMPLE_KINDS = (
    "service_role",
    "owns_business",
    "pet_name",
    "lives_in",
    "family",
    "teaches",
    "drives",
    "works_for",
    "founded_year",
    "allergic_to",
)

# General-knowledge questions the base model answers correctly. Verified with
# benchmarks/fact_sets/check_neighbours.py on SmolLM2-135M-Instruct as
# configs/chat_smollm2.yaml ships it (float32, base model with an untouched
# adapter, greedy, 32 new tokens): each reply contains its answer
# (case-insensitive). 173 candidate (question, answer) pairs were asked on
# 2026-12-04; the 106 whose reply contained the answer were kept, less 10 whose
# reply contained it only by accident or beside a wrong answer ("red" in
# "medium-brown ... a hint of red", "euro" in "European", "A" in "'E'"). Answers
# are in the form the model uses ("7", not "seven"). The files list them in a
# seeded order, so any prefix of them is a mix of topics.
NEIGHBOURS: list[tuple[str, str]] = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of the United Kingdom?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of India?", "New Delhi"),
    ("What is the capital of Mexico?", "Mexico City"),
    ("Which planet has the most famous rings?", "Saturn"),
    ("What planet do we live on?", "Earth"),
    ("What is the chemical symbol for water?", "H2O"),
    ("What gas do plants absorb from the air?", "carbon dioxide"),
    ("What gas do humans need to breathe?", "oxygen"),
    ("What is the chemical symbol for gold?", "Au"),
    ("At what temperature in Celsius does water boil?", "100"),
    ("What force keeps us on the ground?", "gravity"),
    ("What is 2 plus 2?", "4"),
    ("What is 5 times 5?", "25"),
    ("What is 100 divided by 10?", "10"),
    ("How many legs does a dog have?", "four"),
    ("How many sides does a triangle have?", "three"),
    ("How many sides does a square have?", "four"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What colour is a banana when it is ripe?", "yellow"),
    ("What colour are most strawberries?", "red"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("What is the largest desert in Africa?", "Sahara"),
    ("On which continent is Brazil?", "South America"),
    ("On which continent is Kenya?", "Africa"),
    ("What is the largest mammal in the world?", "blue whale"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("Who wrote Hamlet?", "Shakespeare"),
    ("Who wrote Pride and Prejudice?", "Austen"),
    ("Who wrote 1984?", "Orwell"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("Who was the first person to walk on the Moon?", "Armstrong"),
    ("Who discovered penicillin?", "Fleming"),
    ("Who proposed the theory of evolution by natural selection?", "Darwin"),
    ("Who invented the telephone?", "Bell"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("What language is mainly spoken in France?", "French"),
    ("What language is mainly spoken in Germany?", "German"),
    ("What is the main language of Spain?", "Spanish"),
    ("What is the currency of Japan?", "yen"),
    ("What is the currency of the United Kingdom?", "pound"),
    ("What is the currency of the United States?", "dollar"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("In which city is the Eiffel Tower?", "Paris"),
    ("In which city is the Colosseum?", "Rome"),
    ("In which country is the Great Wall?", "China"),
    ("What organ pumps blood through the body?", "heart"),
    ("What organ do we use to think?", "brain"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("How many letters are in the English alphabet?", "26"),
    ("What fruit is used to make wine?", "grape"),
    ("What sport is played at Wimbledon?", "tennis"),
    ("What is the smallest prime number?", "2"),
    ("What natural satellite orbits the Earth?", "Moon"),
    ("How many days are in a week?", "7"),
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Thailand?", "Bangkok"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is the capital of Finland?", "Helsinki"),
    ("What is the capital of the Netherlands?", "Amsterdam"),
    ("What is the capital of Hungary?", "Budapest"),
    ("What is the capital of Switzerland?", "Bern"),
    ("What is the capital of Iran?", "Tehran"),
    ("What is the opposite of big?", "small"),
    ("What is the opposite of day?", "night"),
    ("What is the opposite of wet?", "dry"),
    ("What is the plural of mouse?", "mice"),
    ("Which ocean lies between Europe and North America?", "Atlantic"),
    ("What is the name of our galaxy?", "Milky Way"),
    ("What is the chemical symbol for iron?", "Fe"),
    ("What is H2O commonly called?", "water"),
    ("What language is spoken in Italy?", "Italian"),
    ("What language is mainly spoken in Japan?", "Japanese"),
    ("In which city is the Statue of Liberty?", "New York"),
    ("In which city is Big Ben?", "London"),
    ("What is the main gas in the air we breathe?", "nitrogen"),
    ("Who wrote A Christmas Carol?", "Dickens"),
    ("What is the longest river in South America?", "Amazon"),
    ("What is the capital of Brazil?", "Brasilia"),
    ("What do plants need from the sun to grow?", "light"),
]

# Chit-chat turns placed after a fact's first statement: no line states a fact
# about a named entity or about the user, so none teaches anything.
DISTRACTOR_CHAT = [
    "Hello, how are you today?",
    "Can you suggest a good book?",
    "What should I cook for dinner tonight?",
    "Tell me a fun fact about space.",
    "Any tips for a tired afternoon?",
    "Thanks for your help earlier!",
    "Could you recommend a film for the weekend?",
    "What's a good way to relax after work?",
    "Good morning!",
    "Can you give me a tip for sleeping better?",
    "Is a walk in the park a good idea today?",
    "What are some easy houseplants to look after?",
    "Do you have any advice for learning to cook?",
    "That sounds great, thank you.",
    "Can you tell me a short joke?",
    "What is a good stretch to do at my desk?",
    "Rainy days can be so cosy, right?",
    "How can I stay motivated when studying?",
    "What's a healthy snack idea?",
    "Please give me a word that rhymes with moon.",
    "Which hobby would you suggest for a beginner?",
    "Any ideas for a rainy Sunday?",
    "Could you help me plan my week?",
    "What games are fun to play with friends?",
    "Have a nice evening!",
    "How do I make a good cup of tea?",
    "I need some inspiration for a drawing.",
    "What's the best way to start running?",
    "Can you recommend some relaxing music?",
    "Okay, let's talk about something else.",
    "Write one sentence about autumn leaves.",
    "How do people usually celebrate the new year?",
    "Hmm, interesting.",
    "What are some tips for a tidy kitchen?",
    "Good night, talk to you tomorrow.",
]

# --------------------------------------------------------------------------- names

_ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "r",
    "s",
    "st",
    "t",
    "th",
    "tr",
    "v",
    "w",
    "z",
    "sh",
    "fl",
    "cl",
    "qu",
    "y",
]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "e", "ae", "ei", "ou"]
_CODAS = [
    "sk",
    "rn",
    "lt",
    "nd",
    "ck",
    "rk",
    "st",
    "ll",
    "ss",
    "x",
    "rth",
    "mb",
    "sh",
    "rd",
]
_MIDDLES = [
    "l",
    "r",
    "n",
    "m",
    "v",
    "s",
    "th",
    "nd",
    "rl",
    "ss",
    "lv",
    "st",
    "rw",
    "nn",
    "lb",
    "d",
    "t",
    "c",
    "z",
]
_FIRST_ENDS = [
    "a",
    "a",
    "o",
    "e",
    "ia",
    "n",
    "in",
    "en",
    "an",
    "ella",
    "ina",
    "ric",
    "wen",
    "mir",
    "dor",
    "is",
    "ara",
    "eth",
    "ius",
    "ys",
    "ette",
    "",
]
_SURNAME_ENDS = [
    "wick",
    "mont",
    "ley",
    "ford",
    "ski",
    "ova",
    "ard",
    "ett",
    "holm",
    "quist",
    "ridge",
    "ston",
    "ander",
    "ino",
    "ez",
    "ault",
    "berg",
    "croft",
    "ier",
    "well",
    "ak",
    "ani",
    "ow",
    "er",
    "by",
    "dal",
]
_PLACE_ENDS = [
    "mere",
    "wick",
    "ford",
    "haven",
    "by",
    "stead",
    "thorpe",
    "bury",
    "dale",
    "port",
    "ton",
    "ville",
    "grad",
    "holm",
    "ness",
    "combe",
    "field",
    "minster",
]
_PLACE_PREFIXES = ["Port ", "North ", "Upper ", "Lower ", "East ", "West ", "Saint "]
_ORG_ENDS = [
    "Systems",
    "Logistics",
    "Foods",
    "Analytics",
    "Textiles",
    "Robotics",
    "Pharma",
    "Labs",
    "Works",
    "Group",
    "Biotech",
    "Insurance",
    "Media",
    "Motors",
    "Energy",
    "Partners",
    "Studios",
    "Freight",
]
_SOCIETY_KINDS = [
    "Rowing Club",
    "Institute",
    "Museum",
    "Brewery",
    "Choir",
    "Theatre",
    "Observatory",
    "Orchestra",
    "Press",
    "Society",
    "Library",
    "Academy",
]
_ADJECTIVES = [
    "Crooked",
    "Velvet",
    "Amber",
    "Hollow",
    "Salty",
    "Copper",
    "Quiet",
    "Juniper",
    "Wandering",
    "Silver",
    "Sleepy",
    "Lantern",
    "Marble",
    "Crimson",
    "Gentle",
    "Tidal",
    "Paper",
    "Brass",
    "Frosted",
    "Clover",
]
_NOUNS = [
    "Spoon",
    "Oven",
    "Heron",
    "Kettle",
    "Pine",
    "Thimble",
    "Anchor",
    "Fern",
    "Otter",
    "Lark",
    "Compass",
    "Teacup",
    "Barrow",
    "Quill",
    "Lantern",
    "Acorn",
    "Harbour",
    "Meadow",
    "Badger",
    "Orchard",
]


_COMMON = (
    {
        w.casefold()
        for group in (_ADJECTIVES, _NOUNS, _ORG_ENDS, _SOCIETY_KINDS, _PLACE_PREFIXES)
        for phrase in group
        for w in phrase.split()
    }
    | {"the", "of", "university"}
    | {n.casefold() + "s" for n in _NOUNS}
)


# Generated first names that are English words read as words, not names.
_REAL_WORDS = {
    "were",
    "flame",
    "grin",
    "here",
    "there",
    "stone",
    "bone",
    "line",
    "mine",
    "wine",
    "fine",
    "shine",
    "tone",
    "done",
    "gone",
    "rose",
    "cone",
    "zone",
    "lane",
    "tale",
    "male",
    "sale",
    "role",
    "hole",
    "pole",
    "sole",
    "mile",
    "file",
    "tide",
    "ride",
    "side",
    "wide",
    "bride",
    "pride",
    "slide",
    "glide",
    "trade",
    "grade",
    "shade",
    "blade",
    "drone",
    "throne",
    "dove",
    "love",
    "move",
    "cove",
    "drove",
    "stove",
    "wove",
    "rove",
    "vine",
    "dune",
    "tune",
    "prune",
    "flute",
    "brute",
    "mute",
    "cute",
    "dose",
    "hose",
    "nose",
    "pose",
    "those",
    "whose",
    "rise",
    "wise",
    "vise",
    "base",
    "case",
    "vase",
    "chase",
    "phase",
    "pine",
    "spine",
    "swine",
    "dine",
    "gale",
    "pale",
    "bale",
    "dale",
    "kale",
    "vale",
    "whale",
    "scale",
    "stale",
    "stare",
    "flare",
    "glare",
    "spare",
    "share",
    "snare",
    "dare",
    "care",
    "bare",
    "fare",
    "hare",
    "mare",
    "rare",
    "ware",
    "sure",
    "cure",
    "pure",
    "lure",
    "hone",
    "lone",
    "clone",
    "prone",
    "sane",
    "cane",
    "mane",
    "pane",
    "vane",
    "wane",
    "crane",
    "plane",
    "bane",
    "mina",
    "data",
    "drama",
    "baby",
    "fern",
    "north",
    "south",
    "turn",
    "nova",
    "tudor",
    "sofa",
    "lava",
    "diva",
    "soda",
    "toga",
    "tuba",
    "vista",
    "bass",
    "boss",
    "moss",
    "mist",
    "lost",
    "must",
    "best",
    # names of the issue's own examples stay out of the development set
    "nerilla",
    "fosk",
    "thessaly",
    "burke",
}


class Names:
    """Invented, pairwise-distinct names drawn from one seeded generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        self.used_words: set[str] = set()

    def _fresh(self, make) -> str:
        for _ in range(10_000):
            name = make()
            # An invented word reused across names (two "Nerilla"s) would make
            # two subjects look alike; common words ("Velvet", "Labs") may repeat.
            every = {w.casefold() for w in name.split()}
            words = every - _COMMON
            if (
                name
                and name.casefold() not in self.used
                and not (words & self.used_words)
                and not (every & _REAL_WORDS)
            ):
                self.used.add(name.casefold())
                self.used_words |= words
                return name
        raise RuntimeError("name space exhausted; add syllables")

    def _stem(self, parts: int) -> str:
        r = self.rng
        s = r.choice(_ONSETS) + r.choice(_VOWELS)
        for _ in range(parts - 1):
            s += r.choice(_MIDDLES) + r.choice(_VOWELS)
        return s

    @staticmethod
    def _join(stem: str, end: str) -> str:
        """``stem + end`` without vowel pile-ups ("Nae" + "ella" -> "Nella")."""
        if end[:1] in "aeiouy" and end:
            stem = stem.rstrip("aeiou") or stem
        return (stem + end).capitalize()

    def word(self) -> str:
        """One invented capitalised word (a pet name, a brand)."""
        return self._fresh(
            lambda: self._join(
                self._stem(2), self.rng.choice(["", "n", "x", "l", "o", "ie", "y"])
            )
        )

    def person(self) -> str:
        r = self.rng

        def make() -> str:
            first = self._join(self._stem(r.choice([1, 2])), r.choice(_FIRST_ENDS))
            if r.random() < 0.3:  # short surnames: "Brisk", "Vask"
                last = self._join(
                    r.choice(_ONSETS) + r.choice("aeiou"), r.choice(_CODAS)
                )
            else:
                last = self._join(
                    self._stem(r.choice([1, 1, 2])), r.choice(_SURNAME_ENDS)
                )
            ok = 4 <= len(first) <= 9 and len(last) >= 4
            return f"{first} {last}" if ok else ""

        return self._fresh(make)

    def place(self) -> str:
        r = self.rng

        def make() -> str:
            base = self._join(self._stem(r.choice([1, 2])), r.choice(_PLACE_ENDS))
            return (r.choice(_PLACE_PREFIXES) + base) if r.random() < 0.2 else base

        return self._fresh(make)

    def org(self) -> str:
        return self._fresh(
            lambda: f"{self._stem(2).capitalize()} {self.rng.choice(_ORG_ENDS)}"
        )

    def society(self) -> str:
        return self._fresh(
            lambda: f"{self._stem(2).capitalize()} {self.rng.choice(_SOCIETY_KINDS)}"
        )

    def shop(self) -> str:
        r = self.rng

        def make() -> str:
            if r.random() < 0.5:
                return f"{r.choice(_ADJECTIVES)} {r.choice(_NOUNS)}"
            return f"{self._stem(2).capitalize()} {r.choice(_NOUNS)}"

        return self._fresh(make)

    def title(self) -> str:
        r = self.rng

        def make() -> str:
            k = r.random()
            if k < 0.4:
                return f"The {r.choice(_ADJECTIVES)} {r.choice(_NOUNS)}"
            if k < 0.7:
                return f"{r.choice(_NOUNS)}s of {self.place().split()[-1]}"
            return f"The {self._stem(2).capitalize()} {r.choice(_NOUNS)}"

        return self._fresh(make)

    def product(self, kinds: list[str]) -> str:
        return self._fresh(
            lambda: f"{self._stem(2).capitalize()} {self.rng.choice(kinds)}"
        )


# ----------------------------------------------------------------------- relations

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_WEEKDAYS = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
]
# Number words that are not part of common words (no "one" as in "someone",
# "ten" as in "often", "eight" as in "weight").
_COUNT_WORDS = ["two", "three", "four", "five", "six", "seven"]


def _date(rng: random.Random, year: bool) -> str:
    day, month = rng.randint(2, 28), rng.choice(_MONTHS)
    s = f"{day} {month}" if rng.random() < 0.5 else f"{month} {day}"
    return f"{s} {rng.randint(1948, 2004)}" if year else s


def _postcode(rng: random.Random) -> str:
    out = rng.choice("BCDFHKLMNRSTW") + rng.choice("BCDFHKLMNRSTW")
    out += f"{rng.randint(2, 9)} {rng.randint(2, 9)}"
    return out + rng.choice("ABDEFGHJ") + rng.choice("LNPQRSTUWXY")


def _number(pool, state: dict, rng: random.Random) -> str:
    """A number from ``pool`` that no other fact has as its answer."""
    return _pick([str(v) for v in pool], state, "numbers", rng)


def _time(rng: random.Random) -> str:
    return (
        f"{rng.randint(5, 21)}:{rng.choice(['05', '15', '20', '35', '40', '50', '55'])}"
    )


def _pick(pool: list[str], state: dict, key: str, rng: random.Random) -> str:
    """A value of ``pool`` not yet used under ``key`` (objects vary within a kind)."""
    left = [v for v in pool if v not in state.setdefault(key, set())]
    v = rng.choice(left)
    state[key].add(v)
    return v


# Each relation kind: a function (rng, names, i, state) -> (statements, answer,
# question, paraphrases) where ``statements`` are the surface phrasings to
# choose from; i cycles the phrasing so every one occurs in the set.


def _service_role(rng, n, i, st):
    x = n.person()
    role = _pick(
        [
            "dentist",
            "accountant",
            "plumber",
            "lawyer",
            "landlord",
            "hairdresser",
            "physiotherapist",
            "tutor",
            "gardener",
            "financial adviser",
        ],
        st,
        "service",
        rng,
    )
    art = "an" if role[0] in "aeiou" else "a"
    statements = [
        f"{x} is my {role}.",
        f"My {role} is {x}.",
        f"{x} has been my {role} for years.",
        f"For the last three years, {x} has been my {role}.",
        f"I have {art} {role} called {x}.",
    ]
    return (
        statements,
        role,
        f"Who is {x}?",
        [
            f"What does {x} do for me?",
            f"How do I know {x}?",
            f"In what capacity does {x} help me?",
        ],
    )


def _family(rng, n, i, st):
    x = n.person()
    rel = _pick(
        [
            "brother",
            "sister",
            "cousin",
            "uncle",
            "aunt",
            "nephew",
            "niece",
            "grandmother",
            "grandfather",
            "stepmother",
            "half-brother",
            "godson",
        ],
        st,
        "family",
        rng,
    )
    statements = [
        f"{x} is my {rel}.",
        f"My {rel} is called {x}.",
        f"{x} is my older {rel}.",
        f"{x}, my {rel}, is visiting next week.",
        f"My {rel}'s name is {x}.",
    ]
    return (
        statements,
        rel,
        f"Who is {x}?",
        [
            f"How is {x} related to me?",
            f"Which member of my family is {x}?",
            f"What relation is {x} to me?",
        ],
    )


def _work_role(rng, n, i, st):
    x = n.person()
    role = _pick(
        [
            "manager",
            "supervisor",
            "team lead",
            "mentor",
            "assistant",
            "intern",
            "deputy",
            "line manager",
            "co-founder",
        ],
        st,
        "work",
        rng,
    )
    statements = [
        f"{x} is my {role}.",
        f"{x} is my {role} at work.",
        f"At work, my {role} is {x}.",
        f"{x} became my {role} in the spring.",
        f"My new {role} is {x}!",
    ]
    return (
        statements,
        role,
        f"Who is {x}?",
        [
            f"What is {x}'s role in my job?",
            f"How is {x} connected to me at work?",
            f"What position does {x} hold relative to me?",
        ],
    )


def _owns_business(rng, n, i, st):
    x, y = n.person(), n.shop()
    biz = _pick(
        [
            "bakery",
            "bookshop",
            "cafe",
            "florist",
            "bicycle shop",
            "pub",
            "restaurant",
            "tea room",
            "bakehouse",
        ],
        st,
        "biz",
        rng,
    )
    statements = [
        f"{x} owns a {biz} called {y}.",
        f"{x} owns a small {biz} named {y}.",
        f"{y} is the {biz} that {x} owns.",
        f"{x} has owned a {biz} called {y} since 2015.",
        f"The {biz} {y} is owned by {x}.",
    ]
    return (
        statements,
        y,
        f"What is the name of {x}'s {biz}?",
        [
            f"What is {x}'s {biz} called?",
            f"Which {biz} belongs to {x}?",
            f"What {biz} does {x} own?",
        ],
    )


def _runs_shop(rng, n, i, st):
    x, y = n.person(), n.shop()
    kind = _pick(
        [
            "shop",
            "market stall",
            "corner shop",
            "gift shop",
            "record shop",
            "hardware store",
            "toy shop",
        ],
        st,
        "shop",
        rng,
    )
    statements = [
        f"{x} runs a {kind} called {y}.",
        f"{x} runs the {kind} {y} on the high street.",
        f"{y} is a {kind} run by {x}.",
        f"These days {x} runs a little {kind} named {y}.",
    ]
    return (
        statements,
        y,
        f"What {kind} does {x} run?",
        [
            f"What is the name of the {kind} {x} runs?",
            f"Which {kind} is run by {x}?",
            f"What is {x}'s {kind} called?",
        ],
    )


def _pet_name(rng, n, i, st):
    pet = _pick(
        [
            "cat",
            "dog",
            "parrot",
            "hamster",
            "rabbit",
            "tortoise",
            "goldfish",
            "horse",
            "guinea pig",
            "ferret",
        ],
        st,
        "pet",
        rng,
    )
    x = n.word()
    statements = [
        f"My {pet} is named {x}.",
        f"My {pet} is called {x}.",
        f"{x} is the name of my {pet}.",
        f"I have a {pet} called {x}.",
        f"I named my {pet} {x}.",
    ]
    return (
        statements,
        x,
        f"What is my {pet}'s name?",
        [
            f"What is my {pet} called?",
            f"What name did I give my {pet}?",
            f"What do I call my {pet}?",
        ],
    )


def _other_pet(rng, n, i, st):
    x = n.person()
    pet = rng.choice(["dog", "cat", "pony", "parrot", "iguana", "rabbit"])
    y = n.word()
    statements = [
        f"{x} has a {pet} named {y}.",
        f"{x}'s {pet} is called {y}.",
        f"{y} is {x}'s {pet}.",
        f"{x} adopted a {pet} and called it {y}.",
    ]
    return (
        statements,
        y,
        f"What is the name of {x}'s {pet}?",
        [
            f"What is {x}'s {pet} called?",
            f"What did {x} name the {pet}?",
            f"What name does {x}'s {pet} answer to?",
        ],
    )


def _lives_in(rng, n, i, st):
    x, y = n.person(), n.place()
    statements = [
        f"{x} lives in {y}.",
        f"{x} lives in {y} now.",
        f"{y} is where {x} lives.",
        f"These days {x} is living in {y}.",
        f"{x} lives in a small flat in {y}.",
    ]
    return (
        statements,
        y,
        f"Where does {x} live?",
        [
            f"In which town does {x} live?",
            f"Which town is {x} living in these days?",
            f"Where is {x}'s home?",
        ],
    )


def _moved_to(rng, n, i, st):
    x, y = n.person(), n.place()
    statements = [
        f"{x} moved to {y} last year.",
        f"Last year {x} moved to {y}.",
        f"{x} relocated to {y} last year.",
        f"{x} packed up and moved to {y} last year.",
    ]
    return (
        statements,
        y,
        f"Where did {x} move to last year?",
        [
            f"Which town did {x} relocate to last year?",
            f"Where has {x} been living since last year's move?",
            f"To what place did {x} move last year?",
        ],
    )


def _grew_up_in(rng, n, i, st):
    x, y = n.person(), n.place()
    statements = [
        f"{x} grew up in {y}.",
        f"{x} spent their childhood in {y}.",
        f"{y} is where {x} grew up.",
        f"{x} was raised in {y}.",
    ]
    return (
        statements,
        y,
        f"Where did {x} grow up?",
        [
            f"In which town did {x} spend their childhood?",
            f"Where was {x} raised as a child?",
            f"What is {x}'s home town?",
        ],
    )


def _code_name(rng, n, i, st):
    slot = _pick(
        [
            "the project",
            "the new app",
            "the merger",
            "our spring campaign",
            "the warehouse migration",
            "the secret launch",
            "the redesign",
        ],
        st,
        "code",
        rng,
    )
    x = rng.choice([n.word(), f"{_pick(_ADJECTIVES, st, 'code_adj', rng)} {n.word()}"])
    statements = [
        f"The code name of {slot} is {x}.",
        f"{x} is the code name for {slot}.",
        f"We call {slot} {x} internally.",
        f"Internally, {slot} goes by the code name {x}.",
    ]
    if slot == "the project":  # the plain "project code name" phrasings
        statements = [
            f"The project code name is {x}.",
            f"Our project's code name is {x}.",
            f"The code name of the project is {x}.",
        ]
    return (
        statements,
        x,
        f"What is the code name of {slot}?",
        [
            f"What do we call {slot} internally?",
            f"Which code name was chosen for {slot}?",
            f"By what code name is {slot} known?",
        ],
    )


def _teaches(rng, n, i, st):
    x = n.person()
    # Disjoint from _studied's fields, so no two facts share an answer.
    y = _pick(
        [
            "chemistry",
            "pottery",
            "Latin",
            "geography",
            "yoga",
            "ceramics",
            "economics",
            "fencing",
            "calligraphy",
            "woodwork",
            "welding",
        ],
        st,
        "teach",
        rng,
    )
    statements = [
        f"{x} teaches {y}.",
        f"{x} teaches {y} at the local college.",
        f"{x} teaches {y} to teenagers on weekday evenings.",
        f"{y} is taught by {x}.",
        f"{x} has been teaching {y} for many years.",
    ]
    return (
        statements,
        y,
        f"What does {x} teach?",
        [
            f"What subject does {x} teach?",
            f"What are {x}'s classes about?",
            f"Which subject is {x} a teacher of?",
        ],
    )


def _favourite(rng, n, i, st):
    slot = _pick(
        ["colour", "food", "film", "song", "flower", "number", "season", "board game"],
        st,
        "fav",
        rng,
    )
    x = {
        "colour": lambda: rng.choice(
            ["teal", "maroon", "lavender", "ochre", "turquoise"]
        ),
        "food": lambda: rng.choice(["lamb tagine", "mushroom risotto", "pumpkin soup"]),
        "film": lambda: n.title(),
        "song": lambda: n.title(),
        "flower": lambda: rng.choice(["peonies", "tulips", "marigolds", "foxgloves"]),
        "number": lambda: _number([17, 23, 37, 41, 64], st, rng),
        "season": lambda: rng.choice(["autumn", "winter"]),
        "board game": lambda: n.title(),
    }[slot]()  # only the chosen value draws names and numbers
    statements = [
        f"My favourite {slot} is {x}.",
        f"{x} is my favourite {slot}.",
        f"My all-time favourite {slot} is {x}.",
        f"My favorite {slot} is {x}.",
    ]
    return (
        statements,
        x,
        f"What is my favourite {slot}?",
        [
            f"Which {slot} do I like best?",
            f"What {slot} do I prefer above all others?",
            f"What {slot} did I say I love most?",
        ],
    )


def _drives(rng, n, i, st):
    x = n.person()
    y = n.product(
        ["Estrel", "Pika", "Sorrel", "Nimbus", "Aria", "Vento", "Corsa", "Lynx"]
    )
    colour = rng.choice(["red", "grey", "blue", "green", "white"])
    statements = [
        f"{x} drives a {y}.",
        f"{x} drives a {colour} {y}.",
        f"{x}'s car is a {y}.",
        f"{x} bought a {y} and drives it every day.",
        f"{x} drives an old {y} to work.",
    ]
    return (
        statements,
        y,
        f"What car does {x} drive?",
        [
            f"What is {x}'s car?",
            f"Which vehicle does {x} get around in?",
            f"What kind of car is {x}'s?",
        ],
    )


def _works_for(rng, n, i, st):
    x, y = n.person(), n.org()
    statements = [
        f"{x} works for {y}.",
        f"{x} works at {y}.",
        f"{x} has a job at {y}.",
        f"{x} is employed by {y}.",
        f"{x} has worked for {y} since 2019.",
    ]
    return (
        statements,
        y,
        f"Who does {x} work for?",
        [
            f"Which company employs {x}?",
            f"Where does {x} have a job?",
            f"What is the name of {x}'s employer?",
        ],
    )


def _ceo_of(rng, n, i, st):
    x, y = n.person(), n.org()
    statements = [
        f"{x} is the CEO of {y}.",
        f"The CEO of {y} is {x}.",
        f"{x} runs {y} as its chief executive.",
        f"{x} became CEO of {y} in 2021.",
    ]
    return (
        statements,
        y,
        f"Which company is {x} the CEO of?",
        [
            f"What company does {x} lead?",
            f"Where is {x} the chief executive?",
            f"What organisation is headed by {x}?",
        ],
    )


def _founded_year(rng, n, i, st):
    x = n.society() if rng.random() < 0.5 else n.org()
    y = _number(range(1820, 2016), st, rng)
    statements = [
        f"{x} was founded in {y}.",
        f"{x} was established in {y}.",
        f"In {y}, {x} was founded.",
        f"{x}, founded in {y}, has a small office by the river.",
        f"{x} has existed since {y}.",
    ]
    return (
        statements,
        y,
        f"When was {x} founded?",
        [
            f"In what year was {x} established?",
            f"What year did {x} start?",
            f"Since which year has {x} existed?",
        ],
    )


def _allergic_to(rng, n, i, st):
    x = n.person()
    y = _pick(
        [
            "peanuts",
            "shellfish",
            "penicillin",
            "pollen",
            "latex",
            "strawberries",
            "sesame",
            "wasp stings",
            "horses",
            "kiwi fruit",
        ],
        st,
        "allergy",
        rng,
    )
    statements = [
        f"{x} is allergic to {y}.",
        f"{x} has an allergy to {y}.",
        f"{x} is badly allergic to {y}.",
        f"{x} can't go near {y} because of an allergy.",
    ]
    return (
        statements,
        y,
        f"What is {x} allergic to?",
        [
            f"What does {x} have an allergy to?",
            f"What should {x} avoid because of an allergy?",
            f"What gives {x} an allergic reaction?",
        ],
    )


def _my_attribute(rng, n, i, st):
    slot = _pick(
        [
            "middle name",
            "blood type",
            "star sign",
            "shoe size",
            "employee number",
            "nickname",
            "home postcode",
        ],
        st,
        "attr",
        rng,
    )
    x = {
        "middle name": lambda: n.word(),
        "blood type": lambda: rng.choice(["O negative", "AB positive", "B negative"]),
        "star sign": lambda: rng.choice(["Capricorn", "Scorpio", "Aquarius", "Libra"]),
        "shoe size": lambda: _number([38, 39, 43, 45], st, rng),
        "employee number": lambda: _number(range(40000, 90000), st, rng),
        "nickname": lambda: n.word(),
        "home postcode": lambda: _postcode(rng),
    }[slot]()  # only the chosen value draws names and numbers
    statements = [
        f"My {slot} is {x}.",
        f"{x} is my {slot}.",
        f"For the record, my {slot} is {x}.",
        f"My {slot} is {x}, in case you need it.",
    ]
    return (
        statements,
        x,
        f"What is my {slot}?",
        [
            f"Which {slot} do I have?",
            f"Can you remind me what my {slot} is?",
            f"What did I tell you my {slot} was?",
        ],
    )


def _plays(rng, n, i, st):
    x = n.person()
    y = _pick(
        [
            "cello",
            "oboe",
            "saxophone",
            "harp",
            "trombone",
            "accordion",
            "clarinet",
            "banjo",
            "double bass",
            "harpsichord",
        ],
        st,
        "instr",
        rng,
    )
    statements = [
        f"{x} plays the {y}.",
        f"{x} plays the {y} in an amateur orchestra.",
        f"{x} has played the {y} since childhood.",
        f"The {y} is the instrument {x} plays.",
    ]
    return (
        statements,
        y,
        f"What instrument does {x} play?",
        [
            f"Which musical instrument can {x} play?",
            f"What instrument is {x} a player of?",
            f"What would {x} bring to a music rehearsal?",
        ],
    )


def _speaks(rng, n, i, st):
    x = n.person()
    y = _pick(
        [
            "Finnish",
            "Welsh",
            "Icelandic",
            "Swahili",
            "Tagalog",
            "Basque",
            "Portuguese",
            "Hungarian",
            "Estonian",
            "Maltese",
        ],
        st,
        "lang",
        rng,
    )
    statements = [
        f"{x} speaks {y}.",
        f"{x} speaks {y} fluently.",
        f"{x} speaks {y} at home with the family.",
        f"{y} is the language {x} speaks.",
    ]
    return (
        statements,
        y,
        f"What language does {x} speak?",
        [
            f"Which language can {x} hold a conversation in?",
            f"In what language does {x} talk?",
            f"What is {x}'s spoken language?",
        ],
    )


def _born_on(rng, n, i, st):
    x, y = n.person(), _date(rng, year=True)
    statements = [
        f"{x} was born on {y}.",
        f"{x} was born on {y} in a small hospital.",
        f"{y} is the day {x} was born.",
        f"{x}'s date of birth is {y}.",
    ]
    return (
        statements,
        y,
        f"When was {x} born?",
        [
            f"What is {x}'s date of birth?",
            f"On what date did {x} come into the world?",
            f"What day was {x} born on?",
        ],
    )


def _birthday(rng, n, i, st):
    x, y = n.person(), _date(rng, year=False)
    statements = [
        f"{x}'s birthday is {y}.",
        f"{x}'s birthday is on {y}.",
        f"{x} celebrates their birthday on {y}.",
        f"{y} is {x}'s birthday.",
    ]
    return (
        statements,
        y,
        f"When is {x}'s birthday?",
        [
            f"On what date does {x} celebrate their birthday?",
            f"What day of the year is {x}'s birthday?",
            f"When should I wish {x} a happy birthday?",
        ],
    )


def _children(rng, n, i, st):
    x = n.person()
    y = _COUNT_WORDS[i % len(_COUNT_WORDS)]
    statements = [
        f"{x} has {y} children.",
        f"{x} has {y} kids.",
        f"{x} is a parent of {y} children.",
        f"{x} has {y} children, all at school.",
    ]
    return (
        statements,
        y,
        f"How many children does {x} have?",
        [
            f"What is the number of kids {x} has?",
            f"How many sons and daughters does {x} have?",
            f"How big is {x}'s family in terms of children?",
        ],
    )


def _departure_time(rng, n, i, st):
    slot = _pick(
        [
            "flight",
            "train",
            "ferry",
            "bus",
            "coach",
            "night train",
            "connecting flight",
        ],
        st,
        "depart",
        rng,
    )
    y = _time(rng)
    statements = [
        f"My {slot} leaves at {y}.",
        f"My {slot} departs at {y} tomorrow.",
        f"My {slot} is at {y}.",
        f"Tomorrow my {slot} leaves at {y} sharp.",
    ]
    return (
        statements,
        y,
        f"When does my {slot} leave?",
        [
            f"What time is my {slot}?",
            f"At what hour is my {slot} scheduled to go?",
            f"What time do I need to catch my {slot}?",
        ],
    )


def _studied(rng, n, i, st):
    x = n.person()
    field = _pick(
        [
            "marine biology",
            "architecture",
            "philosophy",
            "astronomy",
            "linguistics",
            "veterinary medicine",
            "art history",
            "geology",
        ],
        st,
        "field",
        rng,
    )
    uni = n.place()
    school = f"the University of {uni}"
    statements = [
        f"{x} studied {field} at {school}.",
        f"{x} studied {field} at {school} in the nineties.",
        f"At {school}, {x} studied {field}.",
        f"{x} has a degree in {field} from {school}.",
    ]
    if i % 2 == 0:
        return (
            statements,
            field,
            f"What did {x} study?",
            [
                f"What subject did {x} study at university?",
                f"What is {x}'s degree in?",
                f"Which field did {x} study?",
            ],
        )
    return (
        statements,
        uni,
        f"Where did {x} study?",
        [
            f"Which university did {x} attend?",
            f"At which university did {x} get a degree?",
            f"Where did {x} go to university?",
        ],
    )


def _married_to(rng, n, i, st):
    x, y = n.person(), n.person()
    statements = [
        f"{x} is married to {y}.",
        f"{x} married {y} in 2016.",
        f"{x} has been married to {y} for ten years.",
        f"{x}'s spouse is {y}.",
    ]
    return (
        statements,
        y,
        f"Who is {x} married to?",
        [
            f"Who is {x}'s spouse?",
            f"Whom did {x} marry?",
            f"What is the name of {x}'s husband or wife?",
        ],
    )


def _collects(rng, n, i, st):
    x = n.person()
    y = _pick(
        [
            "stamps",
            "old coins",
            "vinyl records",
            "seashells",
            "antique clocks",
            "comic books",
            "teapots",
            "postcards",
            "fountain pens",
        ],
        st,
        "coll",
        rng,
    )
    statements = [
        f"{x} collects {y}.",
        f"{x} has collected {y} for decades.",
        f"{x} collects {y} and keeps them in the attic.",
        f"{y} are what {x} collects.",
    ]
    return (
        statements,
        y,
        f"What does {x} collect?",
        [
            f"What items does {x} have a collection of?",
            f"What is {x}'s collection made up of?",
            f"What kind of things does {x} keep collecting?",
        ],
    )


def _password_hint(rng, n, i, st):
    slot = _pick(
        [
            "the password hint",
            "the hint for the wifi password",
            "the hint for the office safe",
            "the hint for my laptop password",
            "the hint for the alarm code",
            "the hint for the shared drive password",
        ],
        st,
        "hint",
        rng,
    )
    a = rng.choice(
        ["purple", "sleepy", "frozen", "tiny", "dancing", "rusty", "lucky", "velvet"]
    )
    b = _pick(
        ["giraffe", "teapot", "bicycle", "lighthouse", "pancake", "walrus", "umbrella"],
        st,
        "hint_noun",
        rng,
    )
    x = f"{a} {b}"
    cap = slot[0].upper() + slot[1:]
    statements = [
        f"{cap} is {x}.",
        f"{cap} is '{x}'.",
        f"I set {slot} to {x}.",
        f"Remember that {slot} is {x}.",
    ]
    thing = slot.replace("the hint for ", "").replace(
        "the password hint", "the password"
    )
    return (
        statements,
        x,
        f"What is {slot}?",
        [
            f"Which phrase did I choose as the hint for {thing}?",
            f"What words remind me of {thing}?",
            f"What clue did I set for {thing}?",
        ],
    )


def _number_of_mine(rng, n, i, st):
    slot = _pick(
        [
            "locker number",
            "desk number",
            "parking space",
            "seat number",
            "hotel room number",
            "gym membership number",
            "library card number",
        ],
        st,
        "num",
        rng,
    )
    long = "card" in slot or "membership" in slot
    y = _number(range(10000, 100000) if long else range(100, 1000), st, rng)
    statements = [
        f"My {slot} is {y}.",
        f"My {slot} is {y}, in case I forget.",
        f"{y} is my {slot}.",
        f"Note that my {slot} is {y}.",
    ]
    return (
        statements,
        y,
        f"What is my {slot}?",
        [
            f"Which number is my {slot}?",
            f"What number did I say my {slot} was?",
            f"Can you tell me my {slot}?",
        ],
    )


def _meets_on(rng, n, i, st):
    slot = _pick(
        [
            "our team",
            "my book club",
            "the choir",
            "the chess club",
            "my running group",
            "the parents' committee",
            "our study group",
        ],
        st,
        "meet",
        rng,
    )
    y = _pick(_WEEKDAYS, st, "weekday", rng)
    cap = slot[0].upper() + slot[1:]
    statements = [
        f"{cap} meets on {y}.",
        f"{cap} meets on {y}s.",
        f"{cap} meets every {y} evening.",
        f"Every {y}, {slot} gets together.",
    ]
    return (
        statements,
        y,
        f"What day does {slot} meet?",
        [
            f"On which day of the week does {slot} get together?",
            f"When in the week does {slot} meet?",
            f"Which weekday is {slot}'s meeting day?",
        ],
    )


def _my_role_name(rng, n, i, st):
    role = _pick(
        [
            "doctor",
            "vet",
            "driving instructor",
            "therapist",
            "mechanic",
            "optician",
            "babysitter",
            "piano teacher",
            "personal trainer",
        ],
        st,
        "myrole",
        rng,
    )
    x = n.person()
    statements = [
        f"My {role}'s name is {x}.",
        f"My {role} is named {x}.",
        f"The name of my {role} is {x}.",
        f"I go to a {role} named {x}."
        if role[0] not in "aeiou"
        else f"I go to an {role} named {x}.",
    ]
    return (
        statements,
        x,
        f"What is my {role}'s name?",
        [
            f"Who is my {role}?",
            f"What's the name of the {role} I go to?",
            f"What is my {role} called?",
        ],
    )


def _wrote_book(rng, n, i, st):
    x, y = n.person(), n.title()
    statements = [
        f"{x} wrote a book called {y}.",
        f"{x} wrote the novel {y}.",
        f"{y} is a book written by {x}.",
        f"{x} has written a book titled {y}.",
    ]
    return (
        statements,
        y,
        f"What book did {x} write?",
        [
            f"What is the title of {x}'s book?",
            f"Which book is {x} the author of?",
            f"What is the name of the book by {x}?",
        ],
    )


def _age(rng, n, i, st):
    x = n.person()
    y = _number(range(23, 89), st, rng)
    statements = [
        f"{x} is {y} years old.",
        f"{x} is {y}.",
        f"{x} turned {y} this year.",
        f"{x} is {y} years old and still cycles to work.",
    ]
    return (
        statements,
        y,
        f"How old is {x}?",
        [
            f"What is {x}'s age?",
            f"What age did {x} turn on their last birthday?",
            f"How many years has {x} been alive?",
        ],
    )


def _hobby(rng, n, i, st):
    x = n.person()
    y = _pick(
        [
            "birdwatching",
            "rock climbing",
            "beekeeping",
            "origami",
            "kayaking",
            "knitting",
            "archery",
            "woodcarving",
            "bouldering",
        ],
        st,
        "hobby",
        rng,
    )
    statements = [
        f"{x}'s hobby is {y}.",
        f"{x} spends every weekend {y}."
        if y.endswith("ing")
        else f"{x} spends every weekend on {y}.",
        f"Lately {x}'s favourite hobby has been {y}.",
        f"In their free time, {x} loves {y}.",
    ]
    return (
        statements,
        y,
        f"What is {x}'s hobby?",
        [
            f"What does {x} do in their free time?",
            f"How does {x} like to spend spare time?",
            f"What pastime is {x} into?",
        ],
    )


def _works_as(rng, n, i, st):
    x = n.person()
    y = _pick(
        [
            "marine biologist",
            "locksmith",
            "pastry chef",
            "air traffic controller",
            "beekeeper",
            "stonemason",
            "translator",
            "lighthouse keeper",
            "midwife",
        ],
        st,
        "job",
        rng,
    )
    art = "an" if y[0] in "aeiou" else "a"
    statements = [
        f"{x} works as {art} {y}.",
        f"{x} is {art} {y}.",
        f"{x} is {art} {y} by profession.",
        f"{x} has worked as {art} {y} for twenty years.",
    ]
    return (
        statements,
        y,
        f"What does {x} do for a living?",
        [
            f"What is {x}'s job?",
            f"What is {x}'s occupation?",
            f"How does {x} earn a living?",
        ],
    )


def _designed(rng, n, i, st):
    x = n.person()
    y = n.product(
        ["Lamp", "Chair", "Kettle", "Backpack", "Bicycle", "Clock", "Stool", "Speaker"]
    )
    statements = [
        f"{x} designed the {y}.",
        f"The {y} was designed by {x}.",
        f"{x} is the designer of the {y}.",
        f"{x} designed a product called the {y}.",
    ]
    return (
        statements,
        y,
        f"What did {x} design?",
        [
            f"Which product was designed by {x}?",
            f"What is {x} known for designing?",
            f"What is the name of the product {x} designed?",
        ],
    )


def _located_in(rng, n, i, st):
    x = n.society()
    y = n.place()
    statements = [
        f"The {x} is located in {y}.",
        f"The {x} is in {y}.",
        f"You can find the {x} in {y}.",
        f"The {x} has its home in {y}.",
    ]
    return (
        statements,
        y,
        f"Where is the {x}?",
        [
            f"In which town is the {x} located?",
            f"Where would I find the {x}?",
            f"Which town is home to the {x}?",
        ],
    )


def _event_date(rng, n, i, st):
    slot = _pick(
        [
            "the wedding",
            "my sister's graduation",
            "the company picnic",
            "the concert",
            "my job interview",
            "the school play",
            "the housewarming party",
        ],
        st,
        "event",
        rng,
    )
    y = _date(rng, year=False)
    cap = slot[0].upper() + slot[1:]
    statements = [
        f"{cap} is on {y}.",
        f"{cap} will be on {y}.",
        f"{cap} takes place on {y}.",
        f"{cap} has been moved to {y}.",
    ]
    return (
        statements,
        y,
        f"When is {slot}?",
        [
            f"What date is {slot} on?",
            f"On which day is {slot} happening?",
            f"What day should I keep free for {slot}?",
        ],
    )


KINDS = {
    "service_role": _service_role,
    "family": _family,
    "work_role": _work_role,
    "owns_business": _owns_business,
    "runs_shop": _runs_shop,
    "pet_name": _pet_name,
    "other_pet": _other_pet,
    "lives_in": _lives_in,
    "moved_to": _moved_to,
    "grew_up_in": _grew_up_in,
    "code_name": _code_name,
    "teaches": _teaches,
    "favourite": _favourite,
    "drives": _drives,
    "works_for": _works_for,
    "ceo_of": _ceo_of,
    "founded_year": _founded_year,
    "allergic_to": _allergic_to,
    "my_attribute": _my_attribute,
    "plays": _plays,
    "speaks": _speaks,
    "born_on": _born_on,
    "birthday": _birthday,
    "children": _children,
    "departure_time": _departure_time,
    "studied": _studied,
    "married_to": _married_to,
    "collects": _collects,
    "password_hint": _password_hint,
    "number_of_mine": _number_of_mine,
    "meets_on": _meets_on,
    "my_role_name": _my_role_name,
    "wrote_book": _wrote_book,
    "age": _age,
    "hobby": _hobby,
    "works_as": _works_as,
    "designed": _designed,
    "located_in": _located_in,
    "event_date": _event_date,
}

# Sentence openers that keep a statement a statement; "my"/"the" after them is
# lower-cased. Names are never lower-cased.
_PREFIXES = ["By the way, ", "Just so you know, ", "FYI, ", "Oh, and ", "For context, "]
_LOWER_FIRST = ("My", "The", "Our", "We")
# Statements that already open with a phrase of their own get no second one.
_OPENERS = (
    "At",
    "In",
    "Every",
    "Last",
    "These",
    "Tomorrow",
    "Internally",
    "For",
    "Note",
    "Remember",
    "Lately",
    "I",
)


def _decorate(statement: str, answer: str, rng: random.Random) -> str:
    """Punctuation and opener variants of one statement.

    A statement that starts with a lower-case answer ("teal is my favourite
    colour") always gets an opener, so the answer stays verbatim and the
    sentence still starts with a capital.
    """
    r = rng.random()
    first = statement.split(" ", 1)[0].rstrip(",")
    if (r < 0.2 and first not in _OPENERS) or statement[0].islower():
        if first in _LOWER_FIRST and not statement.startswith(answer):
            statement = statement[0].lower() + statement[1:]
        statement = rng.choice(_PREFIXES) + statement
    end = rng.random()
    if statement.endswith("."):
        if end < 0.12:
            statement = statement[:-1]
        elif end < 0.22:
            statement = statement[:-1] + "!"
    return statement


def build(seed: int = SEED) -> list[tuple[str, dict]]:
    """``(kind, fact)`` pairs: FACTS_PER_KIND facts of every kind, interleaved."""
    rng = random.Random(seed)
    names = Names(rng)
    state: dict = {}
    out: list[tuple[str, dict]] = []
    for i in range(FACTS_PER_KIND):
        for j, (kind, make) in enumerate(KINDS.items()):
            statements, answer, question, paraphrases = make(rng, names, i, state)
            # The phrasing cycles with i (offset by kind) so every phrasing occurs.
            k = (i + j) % len(statements)
            statement = _decorate(statements[k], answer, rng)
            paraphrases = list(paraphrases)
            rng.shuffle(paraphrases)
            fact = {
                "statement": statement,
                "question": question,
                "paraphrase": paraphrases[0],
                "paraphrases": paraphrases,
                "answer": answer,
            }
            _check_fact(kind, fact)
            out.append((kind, fact))
    return out


def _check_fact(kind: str, fact: dict) -> None:
    a = fact["answer"]
    if a not in fact["statement"]:
        raise AssertionError(
            f"{kind}: answer {a!r} not in statement {fact['statement']!r}"
        )
    if not 1 <= len(a.split()) <= 3:
        raise AssertionError(f"{kind}: answer {a!r} must have 1-3 words")
    for q in [fact["question"], *fact["paraphrases"]]:
        if a.casefold() in q.casefold():
            raise AssertionError(f"{kind}: question {q!r} contains the answer {a!r}")
        if not q.endswith("?"):
            raise AssertionError(f"{kind}: question {q!r} must end with '?'")
    if (
        len(set(fact["paraphrases"]) | {fact["question"]})
        != len(fact["paraphrases"]) + 1
    ):
        raise AssertionError(f"{kind}: paraphrases repeat the question: {fact}")


def _sample10(pairs: list[tuple[str, dict]]) -> list[dict]:
    """The first fact of each of SAMPLE_KINDS, in SAMPLE_KINDS order."""
    first: dict[str, dict] = {}
    for kind, fact in pairs:
        first.setdefault(kind, fact)
    return [first[k] for k in SAMPLE_KINDS]


def _neighbours(seed: int) -> list[dict]:
    """NEIGHBOURS in a seeded order (its own generator: the facts do not move)."""
    rows = [{"question": q, "answer": a} for q, a in NEIGHBOURS]
    random.Random(seed + 1).shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    pairs = build(args.seed)
    facts = [f for _, f in pairs]
    if len({f["statement"] for f in facts}) != len(facts):
        raise AssertionError("two facts have the same statement")
    answers = Counter(f["answer"].casefold() for f in facts)
    if max(answers.values()) > 1:
        raise AssertionError(f"answers shared by two facts: {answers.most_common(3)}")
    base = {
        "neighbours": _neighbours(args.seed),
        "distractor_chat": list(DISTRACTOR_CHAT),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fs in (("dev.json", facts), ("dev_sample10.json", _sample10(pairs))):
        with open(args.out / name, "w", encoding="utf-8") as fh:
            json.dump({"facts": fs, **base}, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
    kinds = Counter(k for k, _ in pairs)
    print(
        f"facts={len(facts)} relation_kinds={len(kinds)} "
        f"neighbours={len(base['neighbours'])} distractor_chat={len(DISTRACTOR_CHAT)} "
        f"sample10_kinds={len(set(SAMPLE_KINDS))} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
