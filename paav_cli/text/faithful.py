"""A conservative check that a rewrite adds no new people, animals or actions to a prompt.

Used to choose training pairs for the default booster: a small model learns its targets' habits,
and public rewrites often embellish (a fox "glides through the water" of a frozen lake). A word
list is crude but predictable: a target may only name people, animals and actions the source
names (or their plural / -ing forms), and must begin with the user's words.
"""

from __future__ import annotations

import re

PEOPLE = set("""
man men woman women person people child children kid kids boy boys girl girls baby babies toddler
teenager teen adult adults crowd family couple friend friends player players worker workers chef
dancer dancers musician musicians singer student students teacher doctor nurse farmer soldier
police officer driver rider riders surfer skier skater swimmer runner athlete athletes audience
tourist tourists passerby pedestrians pedestrian mother father son daughter brother sister
grandmother grandfather wife husband bride groom lady ladies gentleman guy guys spectators fans
vendor vendors shopper shoppers customer customers sailor sailors commuter commuters individual
individuals figure figures team group staff passenger passengers hiker hikers climber climbers
fisherman fishermen diver divers pilot pilots artist artists performer performers waiter waitress
astronaut astronauts
""".split())

ANIMALS = set("""
dog dogs puppy puppies cat cats kitten kittens bird birds horse horses cow cows sheep goat goats pig
pigs chicken chickens duck ducks goose geese fish fishes shark sharks whale whales dolphin dolphins
bear bears lion lions tiger tigers elephant elephants giraffe giraffes zebra zebras monkey monkeys
fox foxes wolf wolves deer rabbit rabbits squirrel squirrels mouse mice rat rats owl owls eagle
eagles parrot parrots penguin penguins frog frogs snake snakes turtle turtles butterfly butterflies
bee bees ant ants spider spiders insect insects camel camels kangaroo panda pandas otter otters seal
seals swan swans pigeon pigeons crow crows hawk bat bats crab crabs octopus jellyfish lizard
""".split())

ACTIONS = set("""
walking running jumping dancing singing playing eating drinking talking laughing smiling crying
swimming flying climbing riding driving cooking reading writing painting fighting kissing hugging
chasing hunting fishing surfing skiing skating cycling sleeping sitting standing waving clapping
throwing catching kicking pushing pulling carrying holding lifting opening closing cutting
feeding watching looking grazing galloping leaping hopping crawling diving splashing barking
pouncing shouting typing texting shopping sweeping cleaning washing brushing combing dressing
""".split())

_WORD = re.compile(r"[a-z]+")


def _forms(word: str) -> set[str]:
    """A word and the forms that count as the same word (plurals, -ing, simple past/present)."""
    forms = {word, word + "s", word + "es", word + "ing", word + "ed"}
    if word.endswith("ing"):
        stem = word[:-3]
        forms |= {stem, stem + "e", stem + "s", stem + "es", stem[:-1] if stem[-1:] == stem[-2:-1] else stem}
    if word.endswith("s"):
        forms.add(word[:-1])
    return forms


def added_words(source: str, target: str) -> set[str]:
    """People, animal and action words in the target that the source does not contain (in any form)."""
    source_words = set(_WORD.findall(source.lower()))
    source_forms = set().union(*(_forms(w) for w in source_words)) if source_words else set()
    watched = PEOPLE | ANIMALS | ACTIONS
    return {w for w in _WORD.findall(target.lower()) if w in watched and w not in source_forms}


def keeps_subjects(source: str, target: str) -> bool:
    return not added_words(source, target)


def start_with_source(source: str, target: str) -> str:
    """The target, made to begin with the user's words: unchanged when it already does; its first
    sentence replaced by the source when that sentence restates it; else the source put in front."""
    from paav_cli.text.clean import split_sentences

    src = " ".join(source.split()).rstrip(" .,;")
    if target.lower().startswith(src.lower()):
        return target
    first = src[:1].upper() + src[1:]
    sentences = split_sentences(target)
    source_words = set(_WORD.findall(src.lower()))
    if sentences and source_words:
        overlap = len(source_words & set(_WORD.findall(sentences[0].lower()))) / len(source_words)
        if overlap >= 0.8:  # the first sentence says the source again, in other words
            return " ".join([f"{first}.", *sentences[1:]])
    return f"{first}. {target}"


def trim_words(text: str, max_words: int) -> str:
    """Whole sentences up to max_words (at least the first two): later sentences of public rewrites are
    where they embellish most, and a shorter target is a faster booster."""
    from paav_cli.text.clean import split_sentences

    kept: list[str] = []
    for sentence in split_sentences(text):
        if len(kept) >= 2 and len(" ".join([*kept, sentence]).split()) > max_words:
            break
        kept.append(sentence)
    return " ".join(kept)


def _key(prompt: str) -> str:
    return " ".join(prompt.lower().split()).rstrip(" .")


def conservative_pairs(
    rows: list[dict], max_source_words: int = 30, max_target_words: int = 80, exclude: set[str] = frozenset()
) -> list[dict]:
    """Short sources whose rewrite adds no subject or action, each target starting with the source and
    trimmed to whole sentences; sources in `exclude` (held-out benchmark prompts) are left out."""
    excluded = {_key(p) for p in exclude}
    return [
        {**r, "target": trim_words(start_with_source(r["source"], r["target"]), max_target_words)}
        for r in rows
        if len(r["source"].split()) <= max_source_words
        and keeps_subjects(r["source"], r["target"])
        and _key(r["source"]) not in excluded
    ]


def main(argv: list[str] | None = None) -> None:
    """python -m paav_cli.text.faithful SRC DEST [HELD_OUT.txt ...]"""
    import json
    import sys

    src, dest, *held_out = argv or sys.argv[1:]
    rows = [json.loads(line) for line in open(src, encoding="utf-8") if line.strip()]
    exclude = {line.strip() for path in held_out for line in open(path, encoding="utf-8") if line.strip()}
    kept = conservative_pairs(rows, exclude=exclude)
    with open(dest, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    print(f"{len(kept)} of {len(rows)} pairs kept ({len(exclude)} held-out prompts excluded)")


if __name__ == "__main__":
    main()
