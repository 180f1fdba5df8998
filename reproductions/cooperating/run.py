#!/usr/bin/env python
"""Reproduce Couteaux et al., cooperating segmentor and registor networks (Fig. 3, §3.2.3).

    python reproductions/cooperating/run.py                         # quick: toy sweep + brain pairs
    python reproductions/cooperating/run.py --preset paper-toy      # the 30 toy models of Fig. 3
    python reproductions/cooperating/run.py --preset paper-liver --data-root DIR   # DIR/pairs.csv
    python reproductions/cooperating/run.py --describe              # network sizes

See reproductions/cooperating/README.md (presets, fidelity table) and --help.
"""

import sys

from regseg.reproductions.cooperating.reproduction import REPRODUCTION

if __name__ == "__main__":
    sys.exit(REPRODUCTION.main())
