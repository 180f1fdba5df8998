#!/usr/bin/env python
"""Reproduce DeepAtlas (Xu & Niethammer, MICCAI 2019), Tables 1 and 2.

    python reproductions/deepatlas/run.py                          # quick: MSD hippocampus
    python reproductions/deepatlas/run.py --preset quick-brain     # Mindboggle-101 at 2 mm
    python reproductions/deepatlas/run.py --preset paper-knee --data-root /data  # OAI-ZIB
    python reproductions/deepatlas/run.py --describe               # the two networks

See reproductions/deepatlas/README.md (presets, fidelity table) and --help.
"""

import sys

from regseg.reproductions.deepatlas.reproduction import REPRODUCTION

if __name__ == "__main__":
    sys.exit(REPRODUCTION.main())
