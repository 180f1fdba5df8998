#!/usr/bin/env python
"""Reproduce U-ReSNet (Estienne et al., MICCAI 2019), Table 1 and §4.1.

    python reproductions/ureSnet/run.py                      # quick preset, ixi10
    python reproductions/ureSnet/run.py --preset paper --data-root /data/oasis3
    python reproductions/ureSnet/run.py --describe           # model summary

See reproductions/ureSnet/README.md (presets, fidelity table) and --help.
"""

import sys

from regseg.reproductions.ureSnet.reproduction import REPRODUCTION

if __name__ == "__main__":
    sys.exit(REPRODUCTION.main())
