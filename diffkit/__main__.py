"""``python -m diffkit``: the same command line as ``diffkit`` (and what torchrun and accelerate launch)."""

from diffkit.cli import main

if __name__ == "__main__":
    main()
