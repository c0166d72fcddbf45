"""``python -m mixerlab.experiments.cli``: the ``mixerlab`` command."""

from mixerlab.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
