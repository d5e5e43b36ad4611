"""The demonstration scenario behind ``make demo`` / ``hivemem demo``."""

from hivemem.demo.scenario import run_demo

__all__ = ["run_demo"]
