#!/usr/bin/env python
"""Reproduce the diffeomorphic U-Net for lung CT (Bouabid et al.), Tables 1-3.

    python reproductions/diffeomorphic_unet/run.py                    # quick preset: ixi10 + lung CT pair
    python reproductions/diffeomorphic_unet/run.py --preset paper --data-root /data/luna16
    python reproductions/diffeomorphic_unet/run.py --describe         # model summary

See reproductions/diffeomorphic_unet/README.md (presets, fidelity table) and --help.
"""

import sys

from regseg.reproductions.diffeomorphic_unet.reproduction import REPRODUCTION

if __name__ == "__main__":
    sys.exit(REPRODUCTION.main())
