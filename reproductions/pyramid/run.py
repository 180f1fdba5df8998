#!/usr/bin/env python
"""Reproduce the deformable registration pyramid (Gunnarsson et al., Learn2Reg 2020), Tables 1-2.

    REGSEG_DATA_ROOT=../shared/data python reproductions/pyramid/run.py   # quick, stand-ins
    python reproductions/pyramid/run.py --preset paper --data-root /data/learn2reg2020
    python reproductions/pyramid/run.py --describe                         # model summary

See reproductions/pyramid/README.md (presets, fidelity table) and --help.
"""

import sys

from regseg.reproductions.pyramid.reproduction import REPRODUCTION

if __name__ == "__main__":
    sys.exit(REPRODUCTION.main())
