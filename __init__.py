"""hivemem: a distributed memory pool for teams of AI agents.

The public surface lives in the subpackages: :mod:`hivemem.pool` (models, settings, errors,
filters, ports) and :mod:`hivemem.agents` (the agent's local hierarchical memory).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
