"""A small Monte Carlo estimate of pi: one parameter-sweep point per seed.

Run by examples/sweep.jsonl as `python3 sweep.py --seed N --samples S`; writes results/seed-N.json
in its working directory and prints a one-line summary.
"""

import argparse
import json
import os
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    inside = sum(1 for _ in range(args.samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    estimate = 4 * inside / args.samples
    result = {
        "seed": args.seed,
        "samples": args.samples,
        "pi_estimate": estimate,
        "seconds": round(time.perf_counter() - started, 4),
        "attempt": int(os.environ.get("SWARM_ATTEMPT", "1")),
    }
    Path("results").mkdir(exist_ok=True)
    Path(f"results/seed-{args.seed}.json").write_text(json.dumps(result) + "\n")
    print(f"seed {args.seed}: pi ~ {estimate:.5f}")


if __name__ == "__main__":
    main()
