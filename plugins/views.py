"""Built-in anagram views: the Visual Anagrams release's set (flips, rotations, negation, skew, inner circle,
square hinge, patch and pixel permutations, a procedural jigsaw, permutations from files) and transpose."""

from diffkit.hookspecs import hookimpl
from diffkit.views import BUILTIN, View


@hookimpl
def diffkit_views() -> list[View]:
    return list(BUILTIN)
