"""`python -m swarm.sim`: the simulator's scenarios over many seeds, as figures."""

import sys

from swarm.sim.figures import main

sys.exit(main())
