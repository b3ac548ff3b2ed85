"""The federation runtime, still without Flower: the run config, the world every process derives
from it, the simulated phone, fault injection and the run directory. The Flower adapters
(`strategies/`, `simulations/`) sit on top of this package; the method (`chord_fl` outside this
package) never imports it."""
