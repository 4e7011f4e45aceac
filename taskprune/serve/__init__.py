"""Serving many tasks from one base model (the paper's Algorithm 2): cut each task's sub-network on first use,
keep it in a byte-bounded LRU cache, batch concurrent requests, expose it over HTTP (FastAPI)."""

from .cache import ByteLRU
from .service import Prediction, ServeError, ServeLimits, TaskService

__all__ = ["ByteLRU", "Prediction", "ServeError", "ServeLimits", "TaskService"]
