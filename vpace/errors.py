"""The one base class of errors a user can fix by changing their input.

Why a class of its own: the CLI prints these as one line (`vpace X: error: ...`) and shows a traceback for
everything else, which is then a bug in vpace (or in a library under it). A plain `ValueError` raised deep in
the code is not assumed to be the user's fault. Subclasses: `ConfigError` (a config field), `IndexFormatError`
(an annotation file), `CheckpointError` (a checkpoint that cannot be loaded). It imports nothing, so every
layer can raise it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (config, file, data, checkpoint); the message names what is wrong and where."""
