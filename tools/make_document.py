#!/usr/bin/env python3
"""Writes a long, varied document with a few facts hidden in it (for the demo and smoke runs).

The filler is built from several small vocabularies so that no two sentences repeat; the facts
sit at fixed fractions of the document. The demo asks for the northern lighthouse's code word.
"""
import argparse
import random

SUBJECTS = ["The harbour master", "A fisherman", "The baker on Quay Street", "The night ferry",
            "An old sailor", "The town council", "A flock of gulls", "The schoolteacher",
            "The market", "A merchant from the south", "The weather station", "The choir"]
VERBS = ["noticed", "reported", "remembered", "described", "ignored", "celebrated", "repaired",
         "counted", "painted", "argued about", "walked past", "wrote a letter about"]
OBJECTS = ["the broken pier", "the autumn storms", "a crate of oranges", "the tide tables",
           "the red lantern", "the new bridge", "a lost anchor", "the winter festival",
           "the copper bell", "the narrow lanes", "a shipment of timber", "the morning fog"]
TAILS = ["before noon.", "after the rain stopped.", "for the third time that week.",
         "while the bells rang.", "with some reluctance.", "as the tide came in.",
         "during the long evening.", "without telling anyone."]
FACTS = [
    (0.15, "The keeper of the southern lighthouse keeps a ledger bound in green leather."),
    (0.55, "The code word of the northern lighthouse is SILVER HERON."),
    (0.80, "The eastern pier was rebuilt in the spring of the year the river froze."),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=260)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lines = []
    for _ in range(args.lines):
        lines.append(" ".join([rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                               rng.choice(TAILS)]))
    for frac, fact in sorted(FACTS, reverse=True):
        lines.insert(int(frac * len(lines)), fact)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
