"""One exception type for every mistake a user can make.

The CLI catches :class:`TaskpruneError` and prints its message as one line (exit code 2), so every
check on user input raises it with a message that names the problem and, where possible, the fix.
"""


class TaskpruneError(ValueError):
    """A problem with the user's input: unknown task, missing column, bad rate, foreign plan, ..."""


def library_message(err: BaseException, limit: int = 400) -> str:
    """The whole useful part of another library's error message, as one line.

    Libraries often put the cause after a first line that only says where (safetensors, tokenizers, YAML, PEFT):
    every non-empty line is kept, joined with " | ", whitespace collapsed, cut at ``limit`` characters; an empty
    message becomes the exception's type name.
    """
    lines = [" ".join(ln.split()) for ln in str(err).splitlines()]
    text = " | ".join(ln for ln in lines if ln and not ln.startswith("Traceback"))
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
