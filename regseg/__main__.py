"""``python -m regseg <command>``: commands for users of trained runs.

* ``register`` — apply a trained run to your own moving/fixed images (see
  :mod:`regseg.register`).
"""

import sys


def main(argv=None) -> int:
    """Dispatch ``python -m regseg <command> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"register": "regseg.register"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m regseg {{{','.join(commands)}}} ... (--help for each)",
              file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
