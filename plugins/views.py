"""Built-in anagram views: flips, rotations, negation, transpose, jigsaw patch shuffles."""

from diffkit.hookspecs import hookimpl
from diffkit.views import BUILTIN, View


@hookimpl
def diffkit_views() -> list[View]:
    return list(BUILTIN)
