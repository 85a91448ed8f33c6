"""Training the booster: SFT on evolved pairs, ranking sampled rewrites into DPO triples, DPO, merge.

Each stage reads the files the previous one wrote in the run folder (pairs.jsonl, an adapter,
triples.jsonl) and writes its own: no stage imports a later one.
"""
