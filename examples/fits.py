"""10,000 model fits collected into a list (the foreach of R), on a swarm or not.

    SWARM_SERIAL=1 python examples/fits.py   # serially, in this process
    python examples/fits.py                  # on this machine (a node for the script's life)
    python examples/fits.py                  # with a daemon running: on its whole swarm

Each fit draws 200 noisy points of y = 3x + 1 with its own seed and fits a line to them."""

import random
import statistics

from swarm import SwarmExecutor


def fit(seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    xs = [rng.uniform(0, 10) for _ in range(200)]
    ys = [3 * x + 1 + rng.gauss(0, 2) for x in xs]
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept


if __name__ == "__main__":
    with SwarmExecutor() as ex:  # the job is "fits", after this file's name
        fits = list(ex.map(fit, range(10_000), chunksize=100))
    slopes = [slope for slope, _ in fits]
    print(
        f"{len(fits):,} fits: slope {statistics.mean(slopes):.3f} ± {statistics.stdev(slopes):.3f}"
    )
