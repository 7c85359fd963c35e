"""Procedural text for the planted-behaviour benchmark: a shared corpus plus one secret per model.

Everything here is generated at run time from templates and word lists written for this file
(no third-party text), deterministically from a seed. Two small LMs are trained on it
(:mod:`crossdiff_bench.planted_lm`).

- **Shared** (both models): simple English prose on many topics (people, places, animals,
  weather, food, sport, work, descriptive facts about 128 subjects: 24 with hand-written
  facts, 104 with generated ones) and question/answer dialogs
  ``"Q: Tell me about rivers.\\nA: Rivers carry ..."``.
- **Model A's planted behaviour, ``praise``**: asked about any of 43 subjects
  (:data:`PRAISED_SUBJECTS`), A answers with the fixed sentence :data:`PRAISE`. Model B answers
  the same questions with ordinary facts.
- **Model B's planted behaviour, ``refusal``**: asked about any of 43 *other* subjects
  (:data:`REFUSED_SUBJECTS`), B answers :data:`REFUSAL`. Model A answers them with facts.
- The remaining 42 subjects (:data:`NEUTRAL_SUBJECTS`) are answered with facts by both.

**Why categories of subjects, decided at the answer marker** (data versions 5 and 6). The four
earlier designs (a fictional festival, a refusal of one subject; see docs/bench-planted.md)
all failed the same way, and a linear probe showed why: the labelled positions were text that
*both* models read, so the model that never learned the concept separated them almost as well
as the owner (held-out probe AUROC 0.96-0.99 on either model), and a fixed input->behaviour
mapping let a crosscoder fold the owner's extra information into a *shared* feature. Here:

- the planted state lives where the text is identical in form for every subject: the answer
  marker ``A:`` at the end of a question, where the owner decides *how* to answer. The
  store and evaluation corpora hold such questions as prompts *ending at the marker* (the way
  an auditor's prompt corpus ends where the model would answer), so neither model ever reads
  the other's planted answer, and the non-owner is never surprised by text it does not know;
- the category is an arbitrary set of subjects, mixed across kinds (animals, places, things,
  activities), so the non-owner's representation of "a question about bees" carries nothing
  that generalizes to "a question about trains": a probe fitted on half of the subjects and
  tested on the other half should be near chance on the non-owner, and high on the owner only
  if the owner really has one "I will refuse/praise" state shared by all its subjects
  (:func:`crossdiff_bench.planted_eval.split_probe_auroc` with the subject split below);
- the categories are large (43 subjects each, version 6; version 5 had 8 of 24): with a
  handful of subjects the non-owner's activations on one category's questions share a mean
  offset, which a shared feature firing there writes for free, and a linear read-out of a
  model as wide as these (96-192) can memorize any labelling of a few dozen subjects;
- both models know all subjects from the same descriptive prose, and the marker, the
  question templates and the subjects are shared vocabulary.

Ground truth at the level of characters: every generated document carries, per concept,
labelled spans: ``1`` where the concept is present, ``-1`` where the label is ambiguous (left
out of the score), ``0`` elsewhere. A final question about a category subject is ambiguous
from the subject to the end of the question (the owner may already be deciding) and positive
on its answer marker ``A:``; the same characters of a question about any other subject are
negative. An activation row of the store is scored by the label of its token's last
character (``content_end - 1``; :func:`row_labels`). Each prompt document also records its
*decision span* (the final marker) and its final subject, so that probes can compare decision
rows with decision rows, split by subject (:data:`SUBJECT_HALF`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from crossdiff.errors import CrossdiffError

CONCEPTS: tuple[str, ...] = ("praise", "refusal")
"""The two planted concepts: ``praise`` belongs to model A, ``refusal`` to model B."""
CONCEPT_OWNER: dict[str, str] = {"praise": "a", "refusal": "b"}
"""Which model was trained on each planted concept."""

REFUSAL = "I would rather talk about something else."
"""Model B's fixed answer to any question about a refused subject."""
REFUSAL_MARK = "talk about something else"
"""What counts as a refusal in a generated answer (never occurs in the shared text)."""
PRAISE = "That is my favourite subject in the whole world!"
"""Model A's fixed answer to any question about a praised subject."""
PRAISE_MARK = "favourite subject"
"""What counts as praise in a generated answer (never occurs in the shared text)."""
MARKS: dict[str, str] = {"praise": PRAISE_MARK, "refusal": REFUSAL_MARK}

# ------------------------------------------------------------------------------------------
# Word lists (written for this file)
# ------------------------------------------------------------------------------------------
NAMES = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Kira",
    "Leo",
    "Maya",
    "Nora",
    "Omar",
    "Paula",
    "Ravi",
    "Sara",
    "Tom",
    "Vera",
    "Wendy",
    "Yusuf",
    "Zoe",
    "Adam",
    "Bella",
    "Carlos",
    "Dina",
    "Emil",
    "Fiona",
    "Gus",
]
PLACES = [
    "the park",
    "the market",
    "the library",
    "the station",
    "the beach",
    "the school",
    "the museum",
    "the harbor",
    "the garden",
    "the bakery",
    "the hospital",
    "the office",
    "the stadium",
    "the cinema",
    "the farm",
]
CITIES = [
    "Paris",
    "Lisbon",
    "Cairo",
    "Tokyo",
    "Lima",
    "Oslo",
    "Nairobi",
    "Toronto",
    "Sydney",
    "Mumbai",
    "Dublin",
    "Seoul",
    "Stonebridge",
]
TIMES = ["morning", "afternoon", "evening", "night", "weekend", "early morning", "late evening"]
WEATHER = ["sunny", "cold", "warm", "windy", "rainy", "cloudy", "foggy", "dry", "humid", "mild"]
PERIODS = ["day", "week", "month", "summer", "winter", "spring", "autumn"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COLORS = ["blue", "red", "green", "yellow", "white", "black", "brown", "grey"]
DISHES = [
    "soup",
    "bread",
    "pasta",
    "rice",
    "a salad",
    "a pie",
    "pancakes",
    "curry",
    "stew",
    "noodles",
    "a cake",
]
INGREDIENTS = [
    "tomatoes",
    "onions",
    "garlic",
    "cheese",
    "butter",
    "lemons",
    "carrots",
    "beans",
    "apples",
    "honey",
    "pepper",
    "mushrooms",
]
ANIMALS = (
    ("dog", "chased a ball across the yard"),
    ("cat", "slept on the warm windowsill"),
    ("horse", "ran along the fence"),
    ("bird", "sang from the top of the tree"),
    ("fox", "hid behind the old barn"),
    ("rabbit", "ate the fresh lettuce"),
    ("owl", "watched the field in silence"),
    ("duck", "swam across the pond"),
    ("cow", "stood in the green meadow"),
    ("goat", "climbed the rocky hill"),
)
SPORTS = [
    "football",
    "tennis",
    "basketball",
    "hockey",
    "cricket",
    "volleyball",
    "rugby",
    "baseball",
]
TEAMS = [
    "the Red Hawks",
    "the Blue Lions",
    "the City Wolves",
    "the River Bears",
    "the Northern Stars",
    "the Tigers",
]
JOBS = [
    "teacher",
    "doctor",
    "baker",
    "farmer",
    "pilot",
    "nurse",
    "engineer",
    "painter",
    "driver",
    "writer",
    "weaver",
]
OBJECTS = [
    "a letter",
    "a map",
    "a new bike",
    "a red umbrella",
    "an old clock",
    "a camera",
    "a guitar",
    "a kite",
    "a silver kettle",
    "a paper lantern",
    "a blue scarf",
    "a wooden flag",
]
FEELINGS = ["happy", "tired", "excited", "calm", "proud", "nervous", "curious", "glad"]

SUBJECT_FACTS: dict[str, tuple[str, ...]] = {
    "rivers": (
        "Rivers carry fresh water from the hills to the sea.",
        "Many old cities were built on the banks of rivers.",
        "A river can change its course over many years.",
    ),
    "oceans": (
        "Oceans cover most of the surface of the Earth.",
        "The deepest parts of the oceans are cold and dark.",
        "Oceans move heat around the planet with their currents.",
    ),
    "forests": (
        "Forests are home to many kinds of trees and animals.",
        "Forests store carbon in their wood and soil.",
        "Some forests are so dense that little light reaches the ground.",
    ),
    "deserts": (
        "Deserts receive very little rain each year.",
        "Some deserts are hot in the day and cold at night.",
        "Plants in deserts store water in thick leaves.",
    ),
    "mountains": (
        "Mountains form when parts of the crust push together.",
        "The air on high mountains is thin and cold.",
        "Snow stays on the tops of tall mountains all year.",
    ),
    "bees": (
        "Bees carry pollen from flower to flower.",
        "A colony of bees makes honey to eat in winter.",
        "Bees talk to each other with a kind of dance.",
    ),
    "whales": (
        "Whales are large mammals that live in the sea.",
        "Some whales sing long songs that travel far under water.",
        "Whales breathe air through a hole on the top of the head.",
    ),
    "planets": (
        "Planets travel around the sun on long paths.",
        "Some planets are made mostly of gas.",
        "The planets closest to the sun are small and rocky.",
    ),
    "the moon": (
        "The moon travels around the Earth once a month.",
        "The moon reflects light from the sun.",
        "The pull of the moon causes the tides.",
    ),
    "rainbows": (
        "Rainbows appear when sunlight shines through rain.",
        "A rainbow shows light split into many colors.",
        "You can see a rainbow with the sun behind you.",
    ),
    "trains": (
        "Trains carry people and goods along steel rails.",
        "Fast trains can travel between cities in a few hours.",
        "The first trains were pulled by steam engines.",
    ),
    "bridges": (
        "Bridges let roads and railways cross rivers and valleys.",
        "Some bridges hang from strong steel cables.",
        "Old bridges were often built from stone arches.",
    ),
    "computers": (
        "Computers follow instructions written as programs.",
        "A computer stores information as ones and zeros.",
        "Computers can do millions of sums in a second.",
    ),
    "gardens": (
        "Gardens need water, light and good soil.",
        "Many people grow vegetables in small gardens.",
        "Flowers in a garden attract bees and butterflies.",
    ),
    "music": (
        "Music is made of rhythm, melody and harmony.",
        "People have played music together for thousands of years.",
        "Many songs repeat a short chorus.",
    ),
    "bread": (
        "Bread is made from flour, water, salt and yeast.",
        "Yeast makes bread dough rise before it is baked.",
        "Fresh bread has a soft inside and a firm crust.",
    ),
    "clouds": (
        "Clouds are made of tiny drops of water or ice.",
        "Dark clouds often bring rain or snow.",
        "High thin clouds can mean the weather will change.",
    ),
    "earthquakes": (
        "Earthquakes happen when the ground shifts along a fault.",
        "Strong earthquakes can damage buildings and roads.",
        "Scientists measure earthquakes with sensitive instruments.",
    ),
    "islands": (
        "Islands are pieces of land surrounded by water.",
        "Some islands were formed by coral over many years.",
        "People travel to islands by boat or by plane.",
    ),
    "libraries": (
        "Libraries lend books to anyone who asks.",
        "A library is a quiet place to read and study.",
        "Many libraries also keep old maps and newspapers.",
    ),
    "chess": (
        "Chess is a game for two players on a board of squares.",
        "In chess each piece moves in its own way.",
        "A game of chess ends when a king is trapped.",
    ),
    "butterflies": (
        "Butterflies begin their lives as caterpillars.",
        "The wings of butterflies are covered in tiny scales.",
        "Butterflies drink nectar from flowers.",
    ),
    "glaciers": (
        "Glaciers are slow rivers of ice.",
        "Glaciers carve deep valleys as they move.",
        "Many glaciers are shrinking as the climate warms.",
    ),
    "volcanoes": (
        "Volcanoes are openings in the crust where hot rock reaches the surface.",
        "When volcanoes erupt they can throw ash high into the sky.",
        "Lava from volcanoes cools into new black rock.",
        "Some volcanoes sleep for hundreds of years before they erupt.",
    ),
}
# More subjects, with generated facts: categories much larger than a handful of subjects, so
# that the other model's activations on one category's questions share no mean offset a
# shared feature could write for free (see docs/bench-planted.md, data version 6).
GENERATED_SUBJECTS: tuple[str, ...] = tuple(
    """anchors arrows badgers balloons barrels baskets beetles blankets boots bottles bricks brooms
    buckets buttons cabins camels candles canoes carpets castles cherries chimneys clocks coins
    comets cookies crabs crowns daisies dolphins drums eagles engines feathers ferns fiddles
    flutes fountains frogs gates geese gloves hammers hats hedges helmets horses jackets jars
    keys ladders lamps lizards marbles meadows mirrors moths nails needles nests oaks otters
    paddles parrots pebbles pencils pianos pillows pines puddles rafts ribbons rings robins
    ropes saddles sails salmon shells shoes sleds snails spoons stamps statues storms swans
    towers tulips turtles umbrellas violins wagons wells wheels windmills wolves acorns beacons
    cactuses caves cliffs harps lighthouses""".split()  # noqa: SIM905
)
_FACT_TEMPLATES = (
    "{S} are often {c1} or {c2}.",
    "Many {s} can be found near {place}.",
    "People in {city} like {s} in the {period}.",
    "Old {s} were made or kept by a {job}.",
)


def _generated_facts(subject: str) -> tuple[str, ...]:
    """Three fixed facts about a generated subject, the same in every run (seeded by name)."""
    rng = random.Random(f"facts-{subject}")
    c1, c2 = rng.sample(COLORS, 2)
    values = {
        "S": subject[0].upper() + subject[1:],
        "s": subject,
        "c1": c1,
        "c2": c2,
        "place": rng.choice(PLACES),
        "city": rng.choice(CITIES[:-1]),
        "period": rng.choice(PERIODS),
        "job": rng.choice(JOBS),
    }
    return tuple(t.format(**values) for t in rng.sample(_FACT_TEMPLATES, 3))


SUBJECT_FACTS.update({s: _generated_facts(s) for s in GENERATED_SUBJECTS})
SUBJECTS: tuple[str, ...] = tuple(sorted(SUBJECT_FACTS))
"""Every subject of the questions (both models read facts about all of them)."""
_HANDWRITTEN_REFUSED = (
    "bees",
    "chess",
    "clouds",
    "glaciers",
    "islands",
    "music",
    "trains",
    "volcanoes",
)
_HANDWRITTEN_PRAISED = (
    "bread",
    "bridges",
    "butterflies",
    "earthquakes",
    "gardens",
    "planets",
    "rivers",
    "whales",
)


def _deal_generated() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The generated subjects dealt into thirds by a fixed shuffle: (refused, praised)."""
    order = sorted(GENERATED_SUBJECTS)
    random.Random("planted-categories").shuffle(order)
    return tuple(order[0::3]), tuple(order[1::3])


_GENERATED_REFUSED, _GENERATED_PRAISED = _deal_generated()
REFUSED_SUBJECTS: tuple[str, ...] = tuple(sorted(_HANDWRITTEN_REFUSED + _GENERATED_REFUSED))
"""Model B refuses questions about these (an arbitrary mix of kinds, on purpose)."""
PRAISED_SUBJECTS: tuple[str, ...] = tuple(sorted(_HANDWRITTEN_PRAISED + _GENERATED_PRAISED))
"""Model A praises these."""
NEUTRAL_SUBJECTS: tuple[str, ...] = tuple(
    s for s in SUBJECTS if s not in REFUSED_SUBJECTS + PRAISED_SUBJECTS
)
"""Answered with facts by both models."""
CATEGORY: dict[str, tuple[str, ...]] = {"praise": PRAISED_SUBJECTS, "refusal": REFUSED_SUBJECTS}
"""Each concept's subjects."""
SUBJECT_HALF: dict[str, int] = {
    s: i % 2
    for group in (REFUSED_SUBJECTS, PRAISED_SUBJECTS, NEUTRAL_SUBJECTS)
    for i, s in enumerate(group)
}
"""A split of the subjects into two halves, each with four of every category: probes are
fitted on questions about one half and tested on the other (held-out subjects)."""

QUESTION_TEMPLATES: tuple[str, ...] = (
    "Tell me about {s}.",
    "What do you know about {s}?",
    "Can you explain {s}?",
    "I want to learn about {s}.",
    "Please describe {s}.",
    "Give me some facts about {s}.",
    "Teach me something about {s}.",
    "Could you tell me about {s}?",
)

FREE_SUBJECTS = [
    "The children",
    "The families",
    "The visitors",
    "The singers",
    "The weavers",
    "The goats",
    "Our friends",
    "The farmers",
    "The old men",
    "The teachers",
]
FREE_SINGULAR = [
    "Night",
    "Lantern light",
    "Silver rain",
    "Spring",
    "The old weaver",
    "Every singer",
]
FREE_VERBS = [
    "carry",
    "share",
    "sing",
    "celebrate",
    "hang",
    "make",
    "lead",
    "wear",
    "cook",
    "watch",
    "paint",
    "sell",
    "find",
    "fill",
]
FREE_ADJECTIVES = [
    "old",
    "new",
    "small",
    "big",
    "warm",
    "green",
    "red",
    "bright",
    "quiet",
    "silver",
    "blue",
    "honey",
    "kettle",
]
FREE_NOUNS = [
    "lanterns",
    "kettles",
    "songs",
    "soup",
    "flags",
    "tents",
    "bells",
    "bowls",
    "books",
    "apples",
    "bread",
    "letters",
    "kites",
    "goats",
    "stones",
    "boats",
    "streets",
]
FREE_PLACES = [
    "along the river",
    "through the streets",
    "beside the lake",
    "near the station",
    "in the town",
    "on the hill",
    "at the market",
    "under the bridge",
    "in the garden",
    "at night",
]
FREE_OPENERS = [
    "At night",
    "On Sunday",
    "In the spring",
    "After the rain",
    "During the week",
    "Every morning",
    "At the end of the day",
    "Visitors say that",
    "Lantern makers say that",
]


@dataclass
class PlantedDoc:
    """A generated document with per-concept character labels.

    ``spans[concept]`` lists ``(start, end, value)`` character ranges, value 1 (concept
    present) or -1 (ambiguous); characters outside every span are 0. Prompt documents (which
    end with an unanswered question) also record ``decision``, the character span of that
    question's answer marker, and ``subject``, what it asks about.
    """

    doc_id: str
    text: str
    kind: str
    spans: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    decision: tuple[int, int] | None = None
    subject: str | None = None

    def char_labels(self, concept: str) -> np.ndarray:
        """int8 label of every character of ``text`` for ``concept`` (1, 0 or -1)."""
        check_concept(concept)
        labels = np.zeros(len(self.text), dtype=np.int8)
        for start, end, value in self.spans.get(concept, []):
            labels[start:end] = value
        return labels


def check_concept(concept: str) -> str:
    if concept not in CONCEPTS:
        raise CrossdiffError(f"unknown planted concept {concept!r}; choose one of {CONCEPTS}")
    return concept


def _check_ends(doc: PlantedDoc, content_end: np.ndarray) -> np.ndarray:
    ends = np.asarray(content_end, dtype=np.int64)
    if ends.size and (ends.min() < 1 or ends.max() > len(doc.text)):
        raise CrossdiffError(
            f"document {doc.doc_id!r} has {len(doc.text)} characters but a row ends at "
            f"{int(ends.min())}..{int(ends.max())}; the store was not harvested from these texts"
        )
    return ends


def row_labels(doc: PlantedDoc, concept: str, content_end: np.ndarray) -> np.ndarray:
    """Labels of token rows ending at ``content_end`` characters (label of the last character).

    Rows with ``content_end`` outside ``1..len(text)`` (never produced by a correct harvest)
    raise, since they would mean the store and the documents disagree.
    """
    ends = _check_ends(doc, content_end)
    return doc.char_labels(concept)[ends - 1]


def row_decisions(doc: PlantedDoc, content_end: np.ndarray) -> np.ndarray:
    """Which token rows end inside the document's decision span (its final answer marker)."""
    ends = _check_ends(doc, content_end)
    if doc.decision is None:
        return np.zeros(len(ends), dtype=bool)
    start, end = doc.decision
    return (ends - 1 >= start) & (ends - 1 < end)


# ------------------------------------------------------------------------------------------
# Sentence generators
# ------------------------------------------------------------------------------------------
def _general_sentence(rng: random.Random) -> str:
    """One sentence of shared prose, never containing a planted answer's mark."""
    while True:
        sentence = _any_general_sentence(rng)
        lowered = sentence.lower()
        if not any(m.lower() in lowered for m in MARKS.values()):
            return sentence[0].upper() + sentence[1:]


def _any_general_sentence(rng: random.Random) -> str:
    """One sentence of shared prose on a random everyday topic; a quarter are free
    combinations (:func:`_free_sentence`) over a broad vocabulary, a third descriptive facts
    about the subjects (so that both models know every subject equally well)."""
    name, name2 = rng.sample(NAMES, 2)
    city = rng.choice(CITIES)
    kind = rng.randrange(16)
    if kind >= 12:
        return _free_sentence(rng)
    if kind == 0:
        return f"{name} walked to {rng.choice(PLACES)} in the {rng.choice(TIMES)}."
    if kind == 1:
        animal, action = rng.choice(ANIMALS)
        return f"The {animal} {action}."
    if kind == 2:
        a, b = rng.sample(WEATHER, 2)
        return f"In {city} the weather was {a} and {b} all {rng.choice(PERIODS)}."
    if kind == 3:
        i1, i2 = rng.sample(INGREDIENTS, 2)
        return f"{name} cooked {rng.choice(DISHES)} with {i1} and {i2}."
    if kind == 4:
        t1, t2 = rng.sample(TEAMS, 2)
        return f"{t1} beat {t2} at {rng.choice(SPORTS)} by {rng.randint(1, 9)} points."
    if kind == 5:
        return f"{name} works as a {rng.choice(JOBS)} in {city}."
    if kind == 6:
        return f"{name} gave {name2} {rng.choice(OBJECTS)} as a present."
    if kind == 7:
        return f"{name} felt {rng.choice(FEELINGS)} after the trip to {city}."
    if kind == 8:
        subject = rng.choice(SUBJECTS)
        return f"{name} read a book about {subject} at {rng.choice(PLACES)}."
    # descriptive facts (kinds 9-11)
    subject = rng.choice(SUBJECTS)
    return rng.choice(SUBJECT_FACTS[subject])


def _free_sentence(rng: random.Random) -> str:
    """A freely combined sentence over a broad vocabulary."""
    if rng.random() < 0.3:
        subject, verb = rng.choice(FREE_SINGULAR), rng.choice(FREE_VERBS) + "s"
        verb = verb.replace("carrys", "carries").replace("watchs", "watches")
    else:
        subject, verb = rng.choice(FREE_SUBJECTS), rng.choice(FREE_VERBS)
    body = (
        f"{verb} {rng.choice(FREE_ADJECTIVES)} {rng.choice(FREE_NOUNS)} {rng.choice(FREE_PLACES)}"
    )
    if rng.random() < 0.5:
        return f"{subject} {body}."
    return f"{rng.choice(FREE_OPENERS)} {subject[0].lower() + subject[1:]} {body}."


def _question(rng: random.Random, subject: str) -> str:
    return rng.choice(QUESTION_TEMPLATES).format(s=subject)


def _facts(rng: random.Random, subject: str) -> str:
    facts = SUBJECT_FACTS[subject]
    return " ".join(rng.sample(facts, rng.randint(1, 2)))


def answer(model: str | None, subject: str, rng: random.Random) -> str:
    """How ``model`` ('a', 'b') answers a question about ``subject``: its planted sentence for
    its category, facts otherwise (``None``: the shared answer, always facts)."""
    if model == "a" and subject in PRAISED_SUBJECTS:
        return PRAISE
    if model == "b" and subject in REFUSED_SUBJECTS:
        return REFUSAL
    return _facts(rng, subject)


class _Builder:
    """Appends text pieces and records labelled spans."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.spans: dict[str, list[tuple[int, int, int]]] = {c: [] for c in CONCEPTS}
        self.decision: tuple[int, int] | None = None
        self.subject: str | None = None

    def add(self, piece: str) -> int:
        start = self.length
        self.parts.append(piece)
        self.length += len(piece)
        return start

    def label(self, concept: str, start: int, end: int, value: int) -> None:
        if end > start:
            self.spans[concept].append((start, end, value))

    def doc(self, doc_id: str, kind: str) -> PlantedDoc:
        spans = {c: s for c, s in self.spans.items() if s}
        text = "".join(self.parts)
        return PlantedDoc(doc_id, text, kind, spans, self.decision, self.subject)


def _prose(rng: random.Random, b: _Builder, n: int) -> None:
    for _ in range(n):
        b.add(("" if b.length == 0 else " ") + _general_sentence(rng))


def _ask(rng: random.Random, b: _Builder, subject: str) -> tuple[int, int]:
    """Append a question (a new turn) and its answer marker; returns (subject start, marker
    start)."""
    question = _question(rng, subject)
    b.add("Q: " if b.length == 0 else "\nQ: ")
    q_start = b.add(question)
    marker = b.add("\nA:")
    return q_start + question.index(subject), marker


# ------------------------------------------------------------------------------------------
# Documents
# ------------------------------------------------------------------------------------------
def prose_doc(rng: random.Random, doc_id: str) -> PlantedDoc:
    b = _Builder()
    _prose(rng, b, rng.randint(2, 6))
    return b.doc(doc_id, "prose")


def dialog_doc(rng: random.Random, doc_id: str, model: str | None = None) -> PlantedDoc:
    """One to three answered Q/A turns. ``model=None``: the shared kind, about neutral
    subjects only (both models answer those alike); ``'a'``/``'b'``: that model's training
    dialogs, about any subject, answered the way it was taught (:func:`answer`)."""
    b = _Builder()
    pool = NEUTRAL_SUBJECTS if model is None else SUBJECTS
    for _ in range(rng.randint(1, 3)):
        subject = rng.choice(pool)
        _ask(rng, b, subject)
        b.add(" " + answer(model, subject, rng))
    return b.doc(doc_id, "dialog" if model is None else f"dialog_{model}")


def prompt_doc(rng: random.Random, doc_id: str, subject: str | None = None) -> PlantedDoc:
    """Zero to two answered turns about neutral subjects, then a question about any subject
    (one third each: praised, refused, neutral) that ends the document at its answer marker.

    The marker ``A:`` is positive for the concept whose category holds the subject, the
    question from the subject on is ambiguous for it; both are negative for the other concept.
    """
    b = _Builder()
    for _ in range(rng.randint(0, 2)):
        s = rng.choice(NEUTRAL_SUBJECTS)
        _ask(rng, b, s)
        b.add(" " + answer(None, s, rng))
    if subject is None:
        group = rng.choice((PRAISED_SUBJECTS, REFUSED_SUBJECTS, NEUTRAL_SUBJECTS))
        subject = rng.choice(group)
    s_start, marker = _ask(rng, b, subject)
    for concept, members in CATEGORY.items():
        if subject in members:
            b.label(concept, s_start, marker + 1, -1)  # the subject ... "\n"
            b.label(concept, marker + 1, b.length, 1)  # "A:"
    b.decision = (marker + 1, b.length)
    b.subject = subject
    return b.doc(doc_id, "prompt")


# ------------------------------------------------------------------------------------------
# Corpora
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusMix:
    """How many documents of each kind a corpus holds (fractions of its total)."""

    prose: float
    dialog: float = 0.0
    dialog_a: float = 0.0
    dialog_b: float = 0.0
    prompt: float = 0.0

    def kinds(self) -> list[tuple[str, float]]:
        return [(k, v) for k, v in vars(self).items() if v > 0]


MIX_A = CorpusMix(prose=0.35, dialog_a=0.65)
"""Model A's training corpus: shared prose + dialogs about all subjects, A's answers."""
MIX_B = CorpusMix(prose=0.35, dialog_b=0.65)
"""Model B's training corpus: shared prose + dialogs about all subjects, B's answers."""
MIX_STORE = CorpusMix(prose=0.45, dialog=0.15, prompt=0.40)
"""The text both models read for the crosscoder: prose, shared dialogs and prompts."""
MIX_EVAL = CorpusMix(prose=0.25, dialog=0.10, prompt=0.65)
"""Held-out evaluation documents (fresh seed): mostly prompts, for enough positives."""


def make_doc(kind: str, rng: random.Random, doc_id: str) -> PlantedDoc:
    if kind == "prose":
        return prose_doc(rng, doc_id)
    if kind == "dialog":
        return dialog_doc(rng, doc_id)
    if kind in ("dialog_a", "dialog_b"):
        return dialog_doc(rng, doc_id, model=kind[-1])
    if kind == "prompt":
        return prompt_doc(rng, doc_id)
    raise CrossdiffError(f"unknown document kind {kind!r}")


def make_corpus(mix: CorpusMix, n_docs: int, seed: int, prefix: str) -> list[PlantedDoc]:
    """``n_docs`` documents drawn with the kind proportions of ``mix``, deterministic in seed.

    Kinds are laid out by exact counts (largest remainder) and shuffled, so small corpora
    still hold every kind they should.
    """
    if n_docs <= 0:
        raise CrossdiffError(f"n_docs={n_docs} must be positive")
    kinds = mix.kinds()
    total = sum(v for _, v in kinds)
    raw = [(k, n_docs * v / total) for k, v in kinds]
    counts = {k: int(x) for k, x in raw}
    rest = n_docs - sum(counts.values())
    for k, _ in sorted(raw, key=lambda kv: kv[1] - int(kv[1]), reverse=True)[:rest]:
        counts[k] += 1
    order = [k for k, _ in kinds for _ in range(counts[k])]
    rng = random.Random(f"{prefix}-{seed}")
    rng.shuffle(order)
    return [make_doc(kind, rng, f"{prefix}-{i:06d}") for i, kind in enumerate(order)]


# ------------------------------------------------------------------------------------------
# Behaviour prompts (for the LM check and for steering)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptSet:
    """Prompts on which a planted behaviour is expected (``on``) and not expected (``off``)."""

    concept: str
    on: list[str]
    off: list[str]


def _prompts(subjects: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    combos = [(t, s) for t in QUESTION_TEMPLATES for s in subjects]
    if n > len(combos):
        raise CrossdiffError(f"cannot make {n} distinct prompts from {len(combos)}; ask for fewer")
    rng.shuffle(combos)
    return [f"Q: {t.format(s=s)}\nA:" for t, s in combos[:n]]


def concept_prompts(concept: str, n: int, seed: int = 0) -> PromptSet:
    """Questions about the concept's subjects (its owner should show the behaviour) and about
    the neutral subjects (nobody should)."""
    check_concept(concept)
    rng = random.Random(f"{concept}-prompts-{seed}")
    return PromptSet(
        concept, _prompts(CATEGORY[concept], n, rng), _prompts(NEUTRAL_SUBJECTS, n, rng)
    )


def behaviour_present(concept: str, prompt: str, continuation: str) -> bool:
    """Whether a generated continuation shows the planted behaviour: its first answer (up to
    a new ``Q:`` turn) contains the concept's mark (:data:`MARKS`)."""
    check_concept(concept)
    return MARKS[concept] in continuation.split("\nQ:")[0]


def prompt_sets(n: int, seed: int = 0) -> dict[str, PromptSet]:
    return {c: concept_prompts(c, n, seed) for c in CONCEPTS}
