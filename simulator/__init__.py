"""Dhan v2 live-feed simulator: a WebSocket server speaking the broker's protocol, with
realistic prices and a control API for faults. ``python -m simulator``."""

from .settings import SimulatorSettings
from .simulator import Simulator

__all__ = ["Simulator", "SimulatorSettings"]
