"""P(label | input), per model kind: how a model reads an input and scores a label (:mod:`.kinds`)."""

from .chat import use_chat_template
from .kinds import (
    KINDS,
    ModelKind,
    Seq2SeqKind,
    TeacherForced,
    label_space,
    model_kind,
    target_logp,
    teacher_forced_logits,
)

__all__ = ["KINDS", "ModelKind", "Seq2SeqKind", "TeacherForced", "label_space", "model_kind", "target_logp",
           "teacher_forced_logits", "use_chat_template"]
