"""A local stand-in for AEMO's WEM DER Register: OAuth, Installation v2 and NMI v1 APIs.

It is the default server the tool runs against, the server every test talks to, and the
ground for benchmarks, so it behaves like the documented API, awkward parts included
(misspelt token key, 411 for chunked bodies, an exact sliding-window quota, second-level
exceptions on success) and can misbehave on purpose (`FaultProfile`).

    async with Simulator(SimulatorSettings(client_secret="s")) as sim:
        ...  # sim.token_url, sim.installation_url, sim.nmi_url, sim.stats()
"""

from wem_der.simulator.server import Simulator, serve
from wem_der.simulator.settings import FaultProfile, SimulatorSettings

__all__ = ["FaultProfile", "Simulator", "SimulatorSettings", "serve"]
