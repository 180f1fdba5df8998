"""Published numbers of Bouabid et al., "Diffeomorphic Unet for Lung CT scans Deformable
Registration" (LUNA16 atlas registration; 98 training, 33 test scans), Tables 1-3.

Every table has a train and a test block of four rows: MSE, CC, Dice, Hausdorff, averaged over
the scans. As computed by the authors' released code (see the README, "Metrics"): MSE = mean
squared intensity difference of the normalised volumes, CC = squared global Pearson correlation,
"Dice" = the fraction of voxels whose mask labels agree (background included; not a Dice),
Hausdorff = maximum surface distance in voxels of the 256³ grid. The paper prints no standard
deviations. The epochs at which early stopping ended each run are printed in the column headers.
"""

METRICS = ["MSE", "CC", "Dice", "Hausdorff"]
SETS = ["train", "test"]

#: configuration key -> (label in the paper's header, epochs at which the run stopped)
CONFIGS = {
    "a1e-4": ("α = 1e-4", 150),
    "a1e-5": ("α = 1e-5", 125),
    "a1e-6": ("α = 1e-6", 90),
    "cc_a1e-5": ("CC, α = 1e-5", 140),
    "a1e-4_b1e-7": ("α, β = 1e-4, 1e-7", 200),
    "a1e-4_b1e-6": ("α, β = 1e-4, 1e-6", 160),
    "a1e-5_b1e-7": ("α, β = 1e-5, 1e-7", 140),
}

#: Table 1 (no segmentation, MSE loss): {config: {set: {metric: value}}}
TABLE1 = {
    "a1e-4": {"train": {"MSE": 0.274, "CC": 0.658, "Dice": 0.819, "Hausdorff": 75.2},
              "test": {"MSE": 0.264, "CC": 0.670, "Dice": 0.829, "Hausdorff": 71.9}},
    "a1e-5": {"train": {"MSE": 0.239, "CC": 0.689, "Dice": 0.870, "Hausdorff": 65.9},
              "test": {"MSE": 0.223, "CC": 0.711, "Dice": 0.872, "Hausdorff": 65.8}},
    "a1e-6": {"train": {"MSE": 0.269, "CC": 0.546, "Dice": 0.896, "Hausdorff": 95.9},
              "test": {"MSE": 0.263, "CC": 0.560, "Dice": 0.899, "Hausdorff": 95.5}},
}

#: Table 2 (alpha = 1e-5): MSE (the Table 1 run) against CC
TABLE2 = {
    "a1e-5": TABLE1["a1e-5"],
    "cc_a1e-5": {"train": {"MSE": 0.267, "CC": 0.644, "Dice": 0.816, "Hausdorff": 79.7},
                 "test": {"MSE": 0.251, "CC": 0.664, "Dice": 0.819, "Hausdorff": 77.3}},
}

#: Table 3 (with segmentation, MSE loss)
TABLE3 = {
    "a1e-4_b1e-7": {"train": {"MSE": 0.291, "CC": 0.600, "Dice": 0.951, "Hausdorff": 71.6},
                    "test": {"MSE": 0.300, "CC": 0.587, "Dice": 0.950, "Hausdorff": 70.5}},
    "a1e-4_b1e-6": {"train": {"MSE": 0.353, "CC": 0.532, "Dice": 0.944, "Hausdorff": 64.0},
                    "test": {"MSE": 0.327, "CC": 0.595, "Dice": 0.955, "Hausdorff": 62.4}},
    "a1e-5_b1e-7": {"train": {"MSE": 0.239, "CC": 0.651, "Dice": 0.954, "Hausdorff": 65.0},
                    "test": {"MSE": 0.213, "CC": 0.686, "Dice": 0.958, "Hausdorff": 61.0}},
}
