"""`python -m swarm.sim`: the simulator's scenarios over many seeds, as figures."""

import sys

from swarm.sim.world import main

sys.exit(main())
