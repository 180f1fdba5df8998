"""Published numbers of DeepAtlas (Xu & Niethammer, MICCAI 2019), Tables 1 and 2.

Dice scores in %, ``(mean, std)``; ``None`` where the paper prints "-".  Rows are keyed by
``(N, model)`` with ``N`` the number of manually labeled training images (200 = all knee
training images, 65 = all brain training images).
"""

#: Table 1 (OAI knee MRI, N of 200 training images labeled): segmentation and registration
#: Dice (%) for Bones (femur, tibia), Cartilages (femoral, tibial) and All.
TABLE1_GROUPS = ("Bones", "Cartilages", "All")
TABLE1 = {
    (0, "Baseline"): {"seg": None,
                      "reg": {"Bones": (95.32, 1.13), "Cartilages": (65.71, 5.86),
                              "All": (80.52, 3.24)}},
    (1, "Semi-DA"): {"seg": {"Bones": (96.43, 0.85), "Cartilages": (76.67, 3.24),
                             "All": (86.55, 1.86)},
                     "reg": None},
    (1, "DA"): {"seg": {"Bones": (96.80, 0.81), "Cartilages": (77.63, 3.22), "All": (87.21, 1.84)},
                "reg": {"Bones": (95.76, 1.01), "Cartilages": (70.77, 5.68), "All": (83.27, 3.14)}},
    (5, "Baseline"): {"seg": {"Bones": (96.51, 1.69), "Cartilages": (78.95, 3.91),
                              "All": (87.73, 2.37)},
                      "reg": {"Bones": (95.60, 1.08), "Cartilages": (68.13, 5.98),
                              "All": (81.87, 3.31)}},
    (5, "Semi-DA"): {"seg": {"Bones": (96.97, 1.26), "Cartilages": (79.73, 3.84),
                             "All": (88.35, 2.22)},
                     "reg": {"Bones": (96.38, 0.81), "Cartilages": (73.48, 5.26),
                             "All": (84.93, 2.89)}},
    (5, "DA"): {"seg": {"Bones": (97.49, 0.67), "Cartilages": (80.35, 3.64), "All": (88.92, 2.01)},
                "reg": {"Bones": (96.35, 0.82), "Cartilages": (73.67, 5.22), "All": (85.01, 2.86)}},
    (10, "Baseline"): {"seg": {"Bones": (97.29, 1.03), "Cartilages": (80.59, 3.67),
                               "All": (88.94, 2.07)},
                       "reg": {"Bones": (95.77, 1.02), "Cartilages": (69.45, 5.93),
                               "All": (82.61, 3.27)}},
    (10, "Semi-DA"): {"seg": {"Bones": (97.60, 0.76), "Cartilages": (81.21, 3.58),
                              "All": (89.40, 1.99)},
                      "reg": {"Bones": (96.66, 0.72), "Cartilages": (74.67, 5.01),
                              "All": (85.66, 2.73)}},
    (10, "DA"): {"seg": {"Bones": (97.70, 0.65), "Cartilages": (81.19, 3.47), "All": (89.45, 1.91)},
                 "reg": {"Bones": (96.62, 0.75), "Cartilages": (74.69, 5.03),
                         "All": (85.66, 2.75)}},
    (200, "Baseline"): {"seg": {"Bones": (98.24, 0.34), "Cartilages": (83.54, 2.93),
                                "All": (90.89, 1.56)},
                        "reg": {"Bones": (96.98, 0.56), "Cartilages": (77.33, 4.34),
                                "All": (87.16, 2.35)}},
}

#: Table 2 (Mindboggle-101 brain MRI, N of 65 training images labeled): Dice (%) over the 31
#: cortical regions.
TABLE2 = {
    (0, "Baseline"): {"seg": None, "reg": (54.75, 2.37)},
    (1, "Semi-DA"): {"seg": (61.19, 1.49), "reg": None},
    (1, "DA"): {"seg": (61.22, 1.40), "reg": (56.54, 2.32)},
    (21, "Baseline"): {"seg": (73.48, 2.58), "reg": (59.47, 2.34)},
    (21, "Semi-DA"): {"seg": (75.63, 1.66), "reg": (62.92, 2.14)},
    (21, "DA"): {"seg": (76.06, 1.50), "reg": (62.92, 2.13)},
    (65, "Baseline"): {"seg": (81.31, 1.21), "reg": (63.25, 2.07)},
}

#: Training images of each paper experiment (N = M rows).
TABLE1_M, TABLE2_M = 200, 65

#: §3 text claims, with the paper's numbers.
CLAIMS = {
    "semi-da boosts": "Semi-DA ... boosts performance compared to separately trained baseline "
                      "networks (both datasets, every N)",
    "da better": "DA ... achieves even better Dice scores in most cases",
    "significance": "DA/Semi-DA significantly larger Dice than the baselines for all experiments "
                    "(Mann-Whitney U, alpha 0.05, FDR 0.05)",
    "one-shot": "one-shot (N = 1): reasonable segmentation; DA increases registration Dice over "
                "the unsupervised network by about 2.7 (knee) and 1.8 (brain)",
}


def published_row(table: str, n: int, model: str) -> dict | None:
    """The published entry of ``table`` ("table1" or "table2") for ``(n, model)``, or ``None``."""
    return (TABLE1 if table == "table1" else TABLE2).get((n, model))
