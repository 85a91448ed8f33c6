"""Does a rewrite keep what the user asked for? A strict, offline reading in about a millisecond.

A rewrite is *faithful* when the subject still does the asked action and nothing it adds
contradicts the prompt: the time of day, the weather, the light, the state of things, where it
is, and who is there. `read_faithfulness(prompt, text)` checks the sentences a rewrite adds (for
the default booster, everything after the prompt it starts with) for:

- invented beings: people or animals the prompt has no place for (an owner beside "dog");
  WordNet says what a word is, so "woman" is a person and fits "a person", "labrador" a dog;
- contradicted conditions: night and sunlit, stormy and calm, frozen and flowing, a green screen
  and a cityscape behind it, a sofa and a kitchen counter, blonde and brunette;
- a replaced posture: the prompt runs, the rewrite walks; it sits on a sofa, the rewrite walks;
- a dropped action: the added sentences never come back to the action or what it acts on
  ("grooming dog" and then a woman at a table, no dog).

MiniLM intent similarity cannot see these: every variant of one prompt scores 0.75-0.84 with it.
Word knowledge comes from WordNet 3.0 (`lexicon/`); the condition tables are ours, short and
meant to be read. It is conservative by design: a rewrite it passes can still be wrong in ways
only a reader sees (an apple "slicing through Parmesan"); its agreement with strict human
readings is measured by `bench/faithfulness_agreement.py`.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_LEXICON = Path(__file__).parent / "lexicon" / "wordnet.json.gz"
_WORD = re.compile(r"[a-z]+")

# Each group lists classes that cannot hold at once; a prompt that states one class is
# contradicted by an added sentence that states another class of the same group.
CONDITIONS: dict[str, dict[str, set[str]]] = {
    "time of day": {
        "night": {"night", "nighttime", "midnight", "moonlit", "moonlight", "nocturnal", "starry"},
        "day": {"daytime", "daylight", "midday", "noon", "afternoon"},
        "dusk": {"dusk", "twilight", "sunset", "sundown"},
        "dawn": {"dawn", "sunrise", "daybreak", "morning"},
    },
    "sun at night": {
        "night": {"night", "nighttime", "midnight", "moonlit", "moonlight", "nocturnal"},
        "sun": {"sunlit", "sunlight", "sunshine", "sunny", "daylight", "midday"},
    },
    "weather": {
        "storm": {
            "storm",
            "stormy",
            "thunderstorm",
            "thunder",
            "lightning",
            "tempest",
            "gale",
            "hurricane",
            "typhoon",
        },
        "rain": {"rain", "raining", "rainy", "drizzle", "downpour", "raindrops", "rainfall"},
        "clear": {"sunny", "sunshine", "cloudless", "sunlit", "sunlight"},
        "fog": {"fog", "foggy", "mist", "misty", "haze", "hazy"},
    },
    "sea": {
        "rough": {"stormy", "turbulent", "rough", "choppy", "raging", "crashing"},
        "calm": {"calm", "tranquil", "placid", "still", "glassy", "serene"},
    },
    "state": {
        "frozen": {"frozen", "ice", "icy", "frost", "frosted"},
        "flowing": {"flowing", "swirling", "swirls", "rippling", "ripples", "melting", "splashing", "flows"},
    },
    "light": {
        "dark": {"dark", "darkness", "dim", "dimly", "unlit", "gloomy"},
        "bright": {"bright", "brightly", "sunlit", "sunlight", "sunshine"},
    },
    "season": {
        "winter": {"winter", "wintry", "snowy", "snow"},
        "summer": {"summer", "summery"},
        "autumn": {"autumn", "fall"},
        "spring": {"spring", "springtime"},
    },
    "hair": {
        "blonde": {"blonde", "blond"},
        "brunette": {"brunette", "brown-haired", "dark-haired"},
        "redhead": {"redhead", "auburn", "ginger"},
    },
    "crowd": {
        "empty": {"empty", "deserted", "abandoned", "alone", "solitary", "lonely", "quiet"},
        "busy": {"bustling", "crowded", "busy", "packed", "thronged", "traffic"},
    },
    "vegetation": {
        "barren": {"desert", "arid", "barren", "dead", "withered", "wilted", "dunes", "parched"},
        "lush": {"lush", "verdant", "wildflowers", "blooming", "greenery", "meadow", "meadows"},
    },
    "cold": {
        "snow": {"snowy", "snow", "snowfall", "frozen", "icy", "wintry"},
        "bloom": {"wildflowers", "blooming", "blossoms", "blossoming", "summery"},
    },
    "backdrop": {
        # a plain backdrop against a place behind the subject
        "plain": {"chroma", "greenscreen", "backdrop-plain"},
        "place": {
            "cityscape",
            "skyline",
            "street",
            "streets",
            "office",
            "kitchen",
            "forest",
            "landscape",
            "room",
            "window",
            "buildings",
            "park",
            "garden",
            "lake",
            "table",
            "canvas",
            "meadow",
            "beach",
            "desk",
            "city",
            "village",
            "countryside",
            "mountains",
            "trees",
        },
    },
}
# Words that name a condition only next to another word ("green screen", "white background").
_PHRASES = {
    ("green", "screen"): "greenscreen",
    ("chroma", "key"): "chroma",
    ("white", "background"): "backdrop-plain",
    ("black", "background"): "backdrop-plain",
    ("alpha", "channel"): "backdrop-plain",
    ("transparent", "background"): "backdrop-plain",
    ("copy", "space"): "backdrop-plain",
    ("isolated", "on"): "backdrop-plain",
    ("abstract", "background"): "backdrop-plain",
    ("yellow", "background"): "backdrop-plain",
    ("blue", "background"): "backdrop-plain",
    ("red", "background"): "backdrop-plain",
}
# "the sun is setting" says sunset as surely as "sunset" does
_SUN = [
    (re.compile(r"\bsun (?:is |begins to |starts to )?(?:setting|sets)\b|\bsetting sun\b"), " sunset "),
    (re.compile(r"\bsun (?:is |begins to |starts to )?(?:rising|rises)\b|\brising sun\b"), " sunrise "),
]
# Things a person sits or lies on, and the rooms of a home: a prompt's one is not another's.
PLACES = {
    "seat": {"sofa", "couch", "bed", "bench", "armchair", "chair", "stool", "counter", "desk", "floor"},
    "room": {"kitchen", "bedroom", "bathroom", "office", "studio", "gym", "salon", "garage", "classroom"},
}
POSTURES = {
    "sit": {"sit", "sitting", "sits", "seated", "sat"},
    "lie": {"lie", "lying", "lies", "lay"},
    "stand": {"stand", "standing", "stands", "stood"},
    "walk": {
        "walk",
        "walking",
        "walks",
        "walked",
        "stroll",
        "strolling",
        "strolls",
        "stride",
        "strides",
        "striding",
        "amble",
        "ambles",
        "ambling",
        "pace",
        "paces",
        "pacing",
        "trudge",
        "trudges",
        "trudging",
    },
    "run": {"run", "running", "runs", "ran", "jog", "jogging", "jogs", "sprint", "sprinting", "sprints"},
    "hang": {"hang", "hanging", "hangs", "hung", "dangle", "dangling", "dangles"},
    "parked": {"parked", "stationary", "motionless"},
}
# Postures an added sentence may not give a subject the prompt puts in another.
_POSTURE_CLASH = {
    "sit": {"walk", "run"},
    "lie": {"walk", "run", "stand"},
    "walk": {"run", "sit", "lie"},
    "run": {"walk", "sit", "lie"},
    "stand": {"sit", "lie", "walk", "run"},
    "hang": {"sit", "lie", "stand"},
}
# A subject the prompt has on the move cannot be parked or stationary.
_MOVING = {"move", "drive", "slow", "sail", "ride", "travel", "fly", "roll", "cruise"}
# Being words that name a group (their members are people the prompt has room for).
GROUPS = {
    "people",
    "crowd",
    "crowds",
    "audience",
    "family",
    "families",
    "couple",
    "team",
    "group",
    "crew",
    "friends",
    "spectators",
    "onlookers",
    "passersby",
    "pedestrians",
    "others",
    "guests",
    "players",
    "fans",
    "dancers",
    "workers",
    "parents",
    "kids",
    "children",
    "tourists",
    "shoppers",
    "commuters",
}
MALE = {
    "man",
    "men",
    "boy",
    "boys",
    "gentleman",
    "husband",
    "father",
    "son",
    "brother",
    "guy",
    "he",
    "his",
    "him",
}
FEMALE = {
    "woman",
    "women",
    "girl",
    "girls",
    "lady",
    "wife",
    "mother",
    "daughter",
    "sister",
    "she",
    "her",
    "hers",
}
# Actions that bring a second person or animal with them: a hug, a handshake, a fight, a haircut.
INTERACTIONS = {
    "hug",
    "shake",
    "fight",
    "kiss",
    "talk",
    "greet",
    "dance",
    "argue",
    "chase",
    "embrace",
    "wrestle",
    "box",
    "meet",
    "pet",
    "feed",
    "groom",
    "haircut",
    "interview",
    "teach",
    "serve",
    "play",
}
# Actions done on one's feet: a rewrite that sits or lies its subject down has replaced them.
UPRIGHT = {
    "run",
    "walk",
    "dance",
    "skate",
    "ski",
    "surf",
    "jump",
    "fight",
    "squat",
    "sweep",
    "shoot",
    "dunk",
    "climb",
    "hike",
    "jog",
    "skip",
    "kick",
    "throw",
    "march",
    "chi",
    "yoga",
    "box",
    "wrestle",
}
# Actions that go somewhere: only these let a rewrite have its subject walk or run.
LOCOMOTION = {
    "walk",
    "run",
    "ride",
    "drive",
    "skate",
    "ski",
    "surf",
    "swim",
    "fly",
    "march",
    "hike",
    "jog",
    "travel",
    "move",
    "go",
    "cycle",
    "dance",
    "chase",
    "trot",
    "gallop",
    "stroll",
    "wander",
    "roam",
    "cross",
    "climb",
    "leave",
    "come",
    "arrive",
    "pass",
    "race",
    "glide",
    "sail",
    "float",
    "follow",
}
# Words that say an action without its verb ("crying" -> tears), beyond what WordNet relates.
ACTION_SIGNS = {
    "cry": {"tear", "tears", "sob", "sobs", "weep"},
    "laugh": {"laughter", "grin"},
    "smile": {"grin"},
    "shake": {"handshake"},
    "discuss": {"talk", "talking", "talks", "conversation", "debate"},
}
# Opposites WordNet gives that are too loose here ("old" and "new", "fall" the season).
_LOOSE_ANTONYMS = {"old", "new", "oldness", "newness", "fall", "first", "last", "set", "light", "lightness"}
# Body parts that bring a person into a scene that had none ("a hand strokes the cigar").
_PERSON_PARTS = {"hand", "hands", "fingers", "finger", "fingertips"}
# Actions and their reversals: a shuttle launching does not descend, candles blown out are not lit.
OPPOSITES = [
    ({"launch", "rise", "ascend", "lift", "climb", "soar"}, {"descend", "land", "sink", "fall", "plunge"}),
    ({"slow", "stop", "brake", "halt"}, {"speed", "accelerate"}),
    ({"open", "unfold", "unwrap"}, {"close", "shut", "fold"}),
    ({"enter", "arrive", "approach"}, {"leave", "exit", "depart"}),
    ({"blow", "extinguish"}, {"light", "ignite", "kindle"}),
    ({"build", "assemble"}, {"demolish", "destroy", "dismantle"}),
    ({"fill", "pour"}, {"empty", "drain"}),
    ({"freeze"}, {"melt", "thaw"}),
]
# Hands at rest: no use of them can go on ("hands on their hips", "hands resting on her lap").
_IDLE_HANDS = re.compile(
    r"\bhands? (?:(?:are )?(?:rest|rests|resting|folded|placed) )?(?:on|in) (?:\w+ )?(?:hips|laps?|pockets)\b"
    r"|\bhands (?:are )?(?:resting|folded)\b"
)
# Actions the hands need not do (feelings, looks, postures, going somewhere).
_HANDS_FREE = {
    "cry",
    "smile",
    "laugh",
    "look",
    "watch",
    "listen",
    "talk",
    "sing",
    "think",
    "sleep",
    "sit",
    "stand",
    "lie",
    "wait",
    "pose",
    "stare",
    "gaze",
    "walk",
    "run",
    "squat",
    "wear",
    "dance",
    "jump",
    "skate",
    "ride",
    "drive",
    "fly",
    "swim",
    "breathe",
    "hug",
    "kiss",
    "blink",
    "move",
    "go",
    "show",
    "read",
}


def _known_beings() -> set[str]:
    from paav_cli.text.faithful import ANIMALS, PEOPLE

    return PEOPLE | ANIMALS


_KNOWN_BEINGS = _known_beings()
_FIRST_PERSON = {"i", "me", "my", "myself", "we", "us", "our"}
# Verbs too common to show the action is still there ("they make their way in" is not "making bed").
_LIGHT_VERBS = {"make", "get", "do", "have", "take", "go", "give", "use", "put"}
PRONOUNS = {"he", "she", "they", "his", "her", "their", "them", "him", "it", "its", "i", "my", "we", "our"}
# Words WordNet files as beings that in a video prompt are almost always something else.
_NOT_BEINGS = {
    "crane",
    "drone",
    "dolly",
    "jib",
    "model",
    "star",
    "figure",
    "subject",
    "silhouette",
    "host",
    "mouse",
    "bug",
    "fan",
    "tiger",
    "buck",
    "pan",
    "game",
    "pet",
    "bat",
    "seal",
    "ray",
    "monitor",
    "hawk",
    "kite",
    "bass",
    "cardinal",
    "robin",
    "swift",
    "hound",
    "bull",
    "stud",
    "nude",
    "dummy",
    "mannequin",
    "statue",
    "doll",
    "toy",
    "image",
    "portrait",
    "character",
    "cub",
    "vampire",
    "ghost",
    "angel",
    "giant",
    "nymph",
    "creature",
    "cock",
    "viewer",
    "viewers",
    "observer",
    "sentinel",
    "blonde",
    "blond",
    "brunette",
    "redhead",
}
_NEGATIONS = {"no", "not", "without", "nor", "never"}
_PREPOSITIONS = {"in", "on", "with", "of", "at", "by", "from", "into", "onto", "for", "over", "under"}
_DETERMINERS = {
    "a",
    "an",
    "the",
    "two",
    "three",
    "four",
    "several",
    "many",
    "some",
    "few",
    "his",
    "her",
    "their",
    "its",
    "young",
    "old",
    "little",
    "small",
    "large",
    "big",
    "other",
    "another",
    "every",
}
# -ing words that are not actions in a prompt.
_NOT_ACTIONS = {
    "morning",
    "evening",
    "building",
    "buildings",
    "ceiling",
    "clothing",
    "thing",
    "something",
    "nothing",
    "everything",
    "anything",
    "during",
    "ring",
    "spring",
    "string",
    "wing",
    "king",
    "lighting",
    "setting",
    "background",
    "stunning",
    "amazing",
    "inspiring",
    "interesting",
    "beautiful",
    "sing",
    "bring",
    "ping",
    "sling",
    "swing",
    "feeling",
    "being",
}


@dataclass(frozen=True)
class Reading:
    """The scorer's reading of one rewrite: `faithful` when no problem was found; `score` in [0, 1]
    falls by each problem's weight; `anchored` is the share of added sentences that come back to
    the prompt's subject, action or objects (1.0 when nothing was added)."""

    faithful: bool
    score: float
    problems: tuple[str, ...]
    anchored: float


@dataclass(frozen=True)
class _Lexicon:
    nouns: frozenset[str]
    verbs: frozenset[str]
    adjectives: frozenset[str]
    noun_exc: dict[str, str]
    verb_exc: dict[str, str]
    beings: dict[str, dict]
    noun_up: dict[str, list[str]]
    verb_related: dict[str, list[str]]
    antonyms: dict[str, list[str]]
    noun_parent: dict[str, list[str]]


@cache
def _lexicon() -> _Lexicon:
    with gzip.open(_LEXICON, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return _Lexicon(
        frozenset(data["nouns"]),
        frozenset(data["verbs"]),
        frozenset(data["adjectives"]),
        data["noun_exc"],
        data["verb_exc"],
        data["beings"],
        data["noun_up"],
        data["verb_related"],
        data["antonyms"],
        data["noun_parent"],
    )


_NOUN_RULES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
)
_VERB_RULES = (
    ("ies", "y"),
    ("es", "e"),
    ("es", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
    ("s", ""),
)


def noun_lemma(word: str) -> str:
    """WordNet's morphy for nouns: irregular forms, then suffix rules whose result is a noun."""
    lex = _lexicon()
    if word in lex.noun_exc:
        return lex.noun_exc[word]
    # the stem first: "fields" is a field before it is W. C. Fields
    for suffix, ending in _NOUN_RULES:
        if word.endswith(suffix) and (stem := word[: -len(suffix)] + ending) in lex.nouns:
            return stem
    return word


def verb_lemma(word: str) -> str | None:
    """The verb a word is a form of ("trotting" -> "trot"), or None when it is none."""
    lex = _lexicon()
    if word in lex.verb_exc:
        return lex.verb_exc[word]
    if word in lex.verbs:
        return word
    for suffix, ending in _VERB_RULES:
        if word.endswith(suffix):
            stem = word[: -len(suffix)] + ending
            if stem in lex.verbs:
                return stem
            if suffix in ("ing", "ed") and len(stem) > 2 and stem[-1] == stem[-2] and stem[:-1] in lex.verbs:
                return stem[:-1]  # running -> run, when verb.exc lacks it
    return None


def _words(text: str) -> list[str]:
    text = text.lower().replace("-", " ")
    for pattern, word in _SUN:
        text = pattern.sub(word, text)
    words = _WORD.findall(text)
    out = []
    for i, w in enumerate(words):
        phrase = _PHRASES.get((w, words[i + 1])) if i + 1 < len(words) else None
        out.append(phrase or w)
    return out


def _conditions(words: list[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    present = set(words)
    for group, classes in CONDITIONS.items():
        for name, members in classes.items():
            if present & members:
                found.setdefault(group, set()).add(name)
    return found


def _beings(words: list[str], *, added: bool = False) -> list[tuple[str, str, bool]]:
    """(lemma, kind, plural) for each person or animal word; in `added` text, only beings prose
    names (WordNet's tagged uses, or paav's word lists), not its rarest senses ("a rover")."""
    lex = _lexicon()
    found = []
    for i, w in enumerate(words):
        before = words[i - 1] if i else ""
        if set(words[max(0, i - 3) : i]) & _NEGATIONS:
            continue  # "with no buildings or people around"
        if w in GROUPS:
            found.append((noun_lemma(w) if noun_lemma(w) in lex.beings else w, "person", True))
            continue
        lemma = noun_lemma(w)
        entry = lex.beings.get(lemma)
        if entry is None or lemma in _NOT_BEINGS:
            continue
        if added and not entry["uses"] and lemma not in _KNOWN_BEINGS:
            continue
        if entry["adjectival"] and w == lemma:
            continue  # "a young woman", "a white truck", "blonde hair": adjectives in prose
        if entry["verbal"]:
            following = words[i + 1] if i + 1 < len(words) else ""
            if not (i and words[i - 1] in _DETERMINERS) or _is_noun(following) or following in lex.adjectives:
                continue  # "birds fly", "buffs the shoes", "a young woman": a verb or an adjective here
        if w != lemma and verb_lemma(w) and (before in PRONOUNS or noun_lemma(before) in lex.beings):
            continue  # "the person buffs the shoes": a verb after its subject
        found.append((lemma, entry["kind"], w != lemma))
    return found


def _fits(lemma: str, prompt_beings: set[str]) -> bool:
    """A being fits the prompt when the prompt names it, a kind of it, or something it is a kind
    of (a "woman" fits "a person", a "dog" fits "a labrador" and "an animal")."""
    lex = _lexicon()
    up = set(lex.beings.get(lemma, {}).get("up", ()))
    if lemma in prompt_beings or up & prompt_beings:
        return True
    if prompt_beings & GROUPS and "person" in up:
        return True  # "young people": a young adult is one of them
    return any(lemma in lex.beings.get(p, {}).get("up", ()) for p in prompt_beings)


def _added_text(prompt: str, text: str) -> str:
    """What the rewrite adds: the rest after the prompt when it starts with it (the default booster
    always does), after a first sentence that restates it, or the whole rewrite."""
    from paav_cli.text.clean import split_sentences

    src = " ".join(prompt.split()).rstrip(" .,;").lower()
    flat = " ".join(text.split())
    if flat.lower().startswith(src):
        return flat[len(src) :].lstrip(" .,;")
    sentences = split_sentences(flat)
    src_words = set(_WORD.findall(src))
    if sentences and src_words:
        overlap = len(src_words & set(_WORD.findall(sentences[0].lower()))) / len(src_words)
        if overlap >= 0.8:
            return " ".join(sentences[1:])
    return flat


def _is_noun(word: str) -> bool:
    return word not in _DETERMINERS and noun_lemma(word) in _lexicon().nouns


def _is_verb_form(word: str) -> bool:
    """An -ing or -ed form of a verb ("making", "rendered"), which a noun like "bed" is not."""
    return word.endswith(("ing", "ed")) and verb_lemma(word) not in (None, word)


def _is_thing(word: str) -> bool:
    return _is_noun(word) and noun_lemma(word) not in _lexicon().beings and word not in GROUPS


def _actions(words: list[str]) -> list[tuple[str, list[str]]]:
    """(verb lemma, the nouns around it) for each action of a prompt: an -ing verb after "is"/"are",
    after a being or right after a noun ("car driving"), and the word after "is"/"are" ("a person
    is squat"). An -ing word between an adjective and a noun describes it ("flowing dress")."""
    lex = _lexicon()
    being_at = {i for i, w in enumerate(words) if noun_lemma(w) in lex.beings or w in GROUPS}
    found = []
    for i, w in enumerate(words):
        before = words[i - 1] if i else ""
        after_be = before in ("is", "are")
        if w in _NOT_ACTIONS or (lemma := verb_lemma(w)) is None or not (w.endswith("ing") or after_be):
            continue
        following = words[i + 1] if i + 1 < len(words) else ""
        describes = (
            before in _DETERMINERS
            or before in _PREPOSITIONS
            or before in lex.adjectives
            and not _is_noun(before)
            or not being_at & set(range(i - 4, i))
            and _is_noun(following)
        )
        if not after_be and (describes or not (being_at & set(range(i - 4, i)) or _is_noun(before))):
            continue
        # what it acts on: the nouns after it (a dog can be groomed), else the things before it
        # ("clay pottery making"), never its subject
        objects = [noun_lemma(x) for x in words[i + 1 : i + 5] if _is_noun(x) and not _is_verb_form(x)]
        if i + 1 == len(words) or not objects:
            objects += [noun_lemma(x) for x in words[max(0, i - 2) : i] if _is_thing(x)]
        found.append((lemma, objects))
    return found


def _mentions_action(lemma: str, objects: list[str], added: list[str]) -> bool:
    """The added words come back to the action: its verb (or a synonym or derived word), or a
    thing it acts on (or a kind of that thing)."""
    lex = _lexicon()
    said = set(added) | {verb_lemma(w) or w for w in added} | {noun_lemma(w) for w in added}
    same_class = next((forms for forms in POSTURES.values() if lemma in forms), set())
    if (
        lemma not in _LIGHT_VERBS
        and {lemma, *lex.verb_related.get(lemma, ()), *ACTION_SIGNS.get(lemma, ())} & said
    ):
        return True
    if same_class & set(added):
        return True  # "strides" keeps "walking"
    if lemma in LOCOMOTION and set(added) & {"moves", "moving", "movement", "movements", "motion"}:
        return True  # "the camera follows the boat's movements" keeps its sailing
    # the thing itself, a synonym, a kind of it (sandals for shoes, lager for beer) or what it is
    # one step up (the melon, the road)
    return any(
        obj in said
        or set(lex.noun_up.get(obj, ())) & said
        or any(obj in lex.noun_up.get(n, ()) for n in said)
        for obj in objects
    )


def _turned_around(verb: str, objects: list[str], added: list[str]) -> bool:
    """The thing acted on does the action ("the nail as it cuts through the grass")."""
    for i, w in enumerate(added):
        if noun_lemma(w) in objects and "s" not in added[max(0, i - 2) : i]:  # not "the corgi's drum kit"
            window = [x for x in added[i + 1 : i + 4] if x not in ("as", "it", "they", "is", "are")]
            # a finite verb ("cuts"), not a compound noun ("a sword fight")
            if window and window[0].endswith("s") and verb_lemma(window[0]) == verb:
                return True
    return False


COLOURS = {
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "violet",
    "pink",
    "white",
    "black",
    "grey",
    "gray",
    "brown",
    "golden",
    "gold",
    "silver",
    "turquoise",
    "teal",
    "crimson",
    "scarlet",
}
# Parents too general to make two things siblings ("a thing", "an artifact").
_GENERIC_PARENTS = {
    "artifact.n.01",
    "object.n.01",
    "whole.n.02",
    "thing.n.12",
    "matter.n.03",
    "substance.n.01",
    "entity.n.01",
    "abstraction.n.06",
    "attribute.n.02",
    "event.n.01",
    "act.n.02",
    "location.n.01",
    "region.n.03",
    "time_period.n.01",
    "measure.n.02",
    "group.n.01",
    "part.n.01",
    "device.n.01",
    "structure.n.01",
    "instrumentality.n.03",
    "covering.n.02",
    "material.n.01",
    # kin close enough to be the same thing in a video: a hill and a mountain, a
    # bay and an ocean, a cap and a hat, trash and garbage
    "natural_elevation.n.01",
    "body_of_water.n.01",
    "geological_formation.n.01",
    "headdress.n.01",
    "waste.n.01",
    "stream.n.01",
    "land.n.04",
    "vegetation.n.01",
    "plant.n.02",
}
# Words about the video itself, not its contents.
_META = {
    "view",
    "scene",
    "video",
    "footage",
    "shot",
    "background",
    "motion",
    "camera",
    "clip",
    "animation",
    "render",
    "style",
    "concept",
    "image",
    "picture",
    "photo",
    "close",
    "time",
    "lapse",
    "timelapse",
    "macro",
    "aerial",
    "drone",
    "stock",
    "hd",
    "full",
    "quality",
    "slow",
    "top",
    "side",
    "front",
    "angle",
    "zoom",
}


def _modified(words: list[str], adjectives: set[str]) -> list[tuple[str, str]]:
    """(adjective, the noun it describes) pairs, the noun up to two words on ("red contact lenses")."""
    pairs = []
    for i, w in enumerate(words):
        if w in adjectives:
            noun = next((x for x in words[i + 1 : i + 4] if _is_noun(x) and x not in adjectives), None)
            if noun:
                pairs.append((w, noun_lemma(noun)))
    return pairs


def _same_thing(a: str, b: str) -> bool:
    lex = _lexicon()
    return a == b or b in lex.noun_up.get(a, ()) or a in lex.noun_up.get(b, ())


def _attribute_clash(p_words: list[str], a_words: list[str]) -> str | None:
    """The added text gives a prompt's thing the opposite quality or another colour ("a little
    girl" stays little; "red contact lenses" are not "silver-colored contacts")."""
    lex = _lexicon()
    added = _modified(a_words, lex.adjectives)
    for adj, noun in _modified(p_words, lex.adjectives):
        opposites = set(lex.antonyms.get(adj, ())) - _LOOSE_ANTONYMS
        recoloured = adj in COLOURS and adj not in ("gold", "golden")
        for other, other_noun in added:
            clash = other in opposites or recoloured and other in COLOURS and other != adj
            if clash and _same_thing(noun, other_noun) and (adj, other_noun) not in added:
                return f"makes the {noun} {other}, not {adj}"
    return None


def _swapped_thing(p_words: list[str], a_words: list[str], p_beings: set[str]) -> str | None:
    """A thing of the prompt is never named again while a sibling of it is (an envelope becomes a
    box, a guitar a piano): the rewrite has put another thing in its place."""
    lex = _lexicon()
    said = {noun_lemma(w) for w in a_words if _is_noun(w) and verb_lemma(w) is None}
    for w in dict.fromkeys(p_words):
        noun = noun_lemma(w)
        if len(w) < 3 or not _is_thing(w) or noun in _META or _is_verb_form(w):
            continue
        if any(_same_thing(noun, s) for s in said):
            continue
        parents = set(lex.noun_parent.get(noun, ())) - _GENERIC_PARENTS
        for other in sorted(said):
            if other != noun and other not in _META and parents & set(lex.noun_parent.get(other, ())):
                return f"swaps the {noun} for {other}"
    return None


@dataclass
class _Pair:
    """A prompt and what a rewrite adds to it, read into the words the checks share."""

    prompt: list[str]
    added: list[str]
    sentences: list[str]
    beings: list[tuple[str, str, bool]]  # the prompt's
    added_beings: list[tuple[str, str, bool]]
    lemmas: set[str]  # the prompt's beings, "person" for a prompt in the first person
    actions: list[tuple[str, list[str]]]
    verbs: set[str]  # the prompt's action verbs
    many: bool  # the prompt has room for several people
    postures: set[str]
    added_postures: set[str]

    @classmethod
    def read(cls, prompt: str, added: str) -> _Pair:
        from paav_cli.text.clean import split_sentences

        p_words, a_words = _words(prompt), _words(added)
        beings = _beings(p_words)
        lemmas = {lemma for lemma, _, _ in beings} | ({"person"} if set(p_words) & _FIRST_PERSON else set())
        actions = _actions(p_words)
        verbs = {v for v, _ in actions}
        nouns = {noun_lemma(w) for w in p_words}
        many = (
            any(plural for _, _, plural in beings)
            or bool(set(p_words) & GROUPS)
            or bool((verbs | nouns) & INTERACTIONS)
        )
        return cls(
            p_words,
            a_words,
            split_sentences(added),
            beings,
            _beings(a_words, added=True),
            lemmas,
            actions,
            verbs,
            many,
            _postures(p_words),
            _postures(a_words),
        )


def _postures(words: list[str]) -> set[str]:
    return {name for name, forms in POSTURES.items() if set(words) & forms}


def _check_beings(t: _Pair) -> list[tuple[str, float]]:
    """People and animals the prompt has no place for."""
    found = []
    for lemma, kind, plural in dict.fromkeys(t.added_beings):
        if kind == "person" and (lemma in GROUPS or plural):
            if not t.many and lemma not in t.lemmas:
                found.append((f"adds people ('{lemma}')", 0.35))
        elif not _fits(lemma, t.lemmas):
            found.append((f"adds {'a person' if kind == 'person' else 'an animal'} ('{lemma}')", 0.35))
    one_person = len([b for b in t.beings if b[1] == "person"]) == 1 and not set(t.prompt) & (MALE | FEMALE)
    said = set(t.added)
    if (
        not t.many
        and one_person
        and said & {"man", "boy", "gentleman", "husband"}
        and said & {"woman", "girl", "lady", "wife"}
    ):
        found.append(("adds a second person (a man and a woman)", 0.35))
    if (
        not any(k == "person" for _, k, _ in t.beings)
        and "person" not in t.lemmas
        and (parts := said & _PERSON_PARTS - set(t.prompt))
    ):
        found.append((f"adds a person ('{min(parts)}')", 0.35))
    singular = {lemma for lemma, _, plural in t.beings if not plural} - {
        lemma for lemma, _, plural in t.beings if plural
    }
    if not set(t.prompt) & {"two", "three", "several", "many", "some"}:
        many = next((lemma for lemma, _, plural in t.added_beings if plural and lemma in singular), None)
        if many:
            found.append((f"makes one {many} many", 0.35))
    return found


def _check_opposites(t: _Pair) -> list[tuple[str, float]]:
    """WordNet's opposites of the prompt's words, a thing's opposite quality or another colour, a
    thing swapped for its sibling."""
    lex = _lexicon()
    found = []
    said = set(t.added) | {noun_lemma(w) for w in t.added} | {verb_lemma(w) for w in t.added if verb_lemma(w)}
    for w in dict.fromkeys(t.prompt):
        if w.endswith("ing") or w in lex.adjectives and not _is_noun(w):
            continue  # participles and adjectives are read with their nouns (_attribute_clash)
        lemma = verb_lemma(w) or noun_lemma(w)
        opposites = (set(lex.antonyms.get(w, ())) | set(lex.antonyms.get(lemma, ()))) - _LOOSE_ANTONYMS
        clash = {c for c in opposites & said if c not in lex.adjectives} - {w, lemma}
        if clash and not {w, lemma} & said:
            found.append((f"says {min(clash)}, the opposite of {w}", 0.5))
            break
    for problem in (_attribute_clash(t.prompt, t.added), _swapped_thing(t.prompt, t.added, t.lemmas)):
        if problem:
            found.append((problem, 0.5))
    return found


def _check_conditions(t: _Pair) -> list[tuple[str, float]]:
    """Time of day, weather, state, backdrop...; the seat or room; the posture."""
    found = []
    said = _conditions(t.added)
    for group, stated in _conditions(t.prompt).items():
        if clash := said.get(group, set()) - stated:
            found.append(
                (f"contradicts the {group}: {'/'.join(sorted(clash))}, not {'/'.join(sorted(stated))}", 0.5)
            )
    for kind, members in PLACES.items():
        stated, there = set(t.prompt) & members, set(t.added) & members
        if stated and there and not there & stated:
            found.append(
                (f"moves the {kind}: {'/'.join(sorted(there))}, not {'/'.join(sorted(stated))}", 0.5)
            )
    if t.verbs & _MOVING and "parked" in t.added_postures - t.postures:
        found.append(("parks a subject that is moving", 0.5))
    for stated in t.postures:
        if clash := (t.added_postures - t.postures) & _POSTURE_CLASH.get(stated, set()):
            found.append((f"replaces '{stated}' with '{'/'.join(sorted(clash))}'", 0.5))
    return found


def _check_action(t: _Pair) -> list[tuple[str, float]]:
    """The action dropped, replaced by walking or sitting, reversed, turned around, or hands at rest."""
    found = []
    upright = (t.verbs | {noun_lemma(w) for w in t.prompt}) & UPRIGHT  # "a person is tai chi" too
    if upright and not t.postures & {"sit", "lie"} and t.added_postures & {"sit", "lie"}:
        found.append((f"sits down a subject that is {'/'.join(sorted(upright))}ing", 0.5))
    if not t.actions:
        return found
    first = t.actions[0][0]
    if len(t.sentences) >= 2 and not any(_mentions_action(v, objs, t.added) for v, objs in t.actions):
        found.append((f"drops the action ('{first}')", 0.5))
    moving = t.verbs & LOCOMOTION or t.postures & {"walk", "run"}
    if not moving and (going := t.added_postures & {"walk", "run"}):
        found.append((f"has the subject {'/'.join(sorted(going))} instead of {first}ing", 0.5))
    turned = next((objs for v, objs in t.actions if _turned_around(v, objs, t.added)), None)
    if turned:
        found.append((f"has the {'/'.join(turned)} do what the subject does", 0.5))
    a_verbs = {verb_lemma(w) for w in t.added} - {None}
    for forward, backward in OPPOSITES:
        for stated, done in ((forward, backward), (backward, forward)):
            if t.verbs & stated and a_verbs & done and not t.verbs & done:
                found.append(
                    (
                        (
                            f"reverses the action: {'/'.join(sorted(a_verbs & done))}, "
                            f"not {'/'.join(sorted(t.verbs & stated))}"
                        ),
                        0.5,
                    )
                )
    if (busy := t.verbs - _HANDS_FREE) and _IDLE_HANDS.search(" ".join(t.added)):
        found.append((f"rests the hands of a subject that is {min(busy)}ing", 0.5))
    return found


def _check_subject(t: _Pair) -> list[tuple[str, float]]:
    """Three or more added sentences that never come back to the prompt's leading being. The
    subject leads a prompt ("a person is ...", "young people - pizza party"); a being further on is
    often a place's name ("a beach in dominican republic")."""
    leading = {b for b, _, _ in _beings(t.prompt[:6])} | (
        {"person"} if set(t.prompt) & _FIRST_PERSON else set()
    )
    if not leading or len(t.sentences) < 3:
        return []
    kinds = {k for _, k, _ in t.beings} | ({"person"} if set(t.prompt) & _FIRST_PERSON else set())
    refer_back = PRONOUNS - ({"it", "its"} if kinds == {"person"} else set())
    if set(t.added) & refer_back or any(_fits(b, t.lemmas) for b, _, _ in t.added_beings):
        return []
    return [(f"drops the subject ('{min(leading)}')", 0.5)]


_CHECKS = (_check_beings, _check_opposites, _check_conditions, _check_action, _check_subject)


def _anchored(t: _Pair) -> float:
    """The share of added sentences that name one of the prompt's things, its action or a pronoun."""
    content = {noun_lemma(w) for w in t.prompt if noun_lemma(w) in _lexicon().nouns and len(w) > 2}
    refer = content | t.verbs | PRONOUNS
    hits = sum(
        bool(refer & ({noun_lemma(w) for w in _words(s)} | {verb_lemma(w) for w in _words(s)}))
        for s in t.sentences
    )
    return hits / max(len(t.sentences), 1)


def read_faithfulness(prompt: str, text: str) -> Reading:
    """Read `text`, a rewrite of `prompt`, strictly: see the module docstring for what counts."""
    added = _added_text(prompt, text)
    if not _words(added):
        return Reading(True, 1.0, (), 1.0)
    pair = _Pair.read(prompt, added)
    problems = [problem for check in _CHECKS for problem in check(pair)]
    score = max(0.0, 1.0 - sum(weight for _, weight in problems))
    return Reading(not problems, round(score, 3), tuple(p for p, _ in problems), round(_anchored(pair), 3))
