"""Importance methods behind one interface, registered by name (see :mod:`.base`)."""

from . import activation, attribution, flap, random_attribution, random_scores, smp  # noqa: F401  (register methods)
from .base import (
    ScoreConfig,
    Scorer,
    Scores,
    ScoringJob,
    SMPConfig,
    get_scorer,
    list_scorers,
    load_scores,
    register_scorer,
    save_scores,
    score_metadata,
)

__all__ = ["SMPConfig", "ScoreConfig", "Scorer", "ScoringJob", "Scores", "get_scorer", "list_scorers", "register_scorer", "save_scores", "load_scores", "score_metadata"]
