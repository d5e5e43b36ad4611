"""The agent side: the local hierarchical memory, its embedder, search and context building."""

from hivemem.agents.agent import Agent
from hivemem.agents.context import BuiltContext
from hivemem.agents.inputs import MemoryInput
from hivemem.agents.integration import MemoryClient, with_memory
from hivemem.agents.memory import HierarchicalMemory
from hivemem.agents.ranking import SearchHit
from hivemem.agents.search_config import PRESETS, SearchConfig
from hivemem.agents.stats import MemoryStats

__all__ = [
    "PRESETS",
    "Agent",
    "BuiltContext",
    "HierarchicalMemory",
    "MemoryClient",
    "MemoryInput",
    "MemoryStats",
    "SearchConfig",
    "SearchHit",
    "with_memory",
]
