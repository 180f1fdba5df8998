"""Published numbers of the registration pyramid (Gunnarsson et al., Learn2Reg 2020), Table 1.

Test sets of Learn2Reg 2020 Tasks 2, 3 and 4, scored by the challenge (TRE in mm, DSC, HD95 in
the scorer's voxels, SDlogJ with the scorer's "+3"); times per pair in seconds, prediction only
(footnote a: "excluding pre- and post processing"). "–" in the paper = not scored for the task
(``None`` here).
"""

#: Table 1 columns in the paper's order
COLUMNS = ["TRE", "TRE30", "DSC", "DSC30", "HD95", "SDlogJ", "GPU s", "CPU s"]

#: Table 1: task -> method -> column -> value
TABLE1 = {
    "task2": {
        "Ours": {"TRE": 9.00, "TRE30": 12.22, "DSC": None, "DSC30": None, "HD95": None,
                 "SDlogJ": 0.12, "GPU s": 0.31, "CPU s": 4.83},
        "Initial": {"TRE": 10.24, "TRE30": 17.77, "DSC": None, "DSC30": None, "HD95": None,
                    "SDlogJ": 0.00, "GPU s": None, "CPU s": None},
    },
    "task3": {
        "Ours": {"TRE": None, "TRE30": None, "DSC": 0.39, "DSC30": 0.12, "HD95": 43.03,
                 "SDlogJ": 0.13, "GPU s": 0.31, "CPU s": 4.83},
        "Initial": {"TRE": None, "TRE30": None, "DSC": 0.23, "DSC30": 0.01, "HD95": 46.07,
                    "SDlogJ": 0.00, "GPU s": None, "CPU s": None},
    },
    "task4": {
        "Ours": {"TRE": None, "TRE30": None, "DSC": 0.74, "DSC30": 0.67, "HD95": 2.82,
                 "SDlogJ": 0.16, "GPU s": 0.32, "CPU s": 4.83},
        "Initial": {"TRE": None, "TRE30": None, "DSC": 0.55, "DSC30": 0.36, "HD95": 3.91,
                    "SDlogJ": 0.00, "GPU s": None, "CPU s": None},
    },
}

#: §2.1: "The total number of trainable parameters in our model is 8.6 million."
PARAMETERS = 8.6e6
