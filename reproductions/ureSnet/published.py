"""Published numbers of U-ReSNet (Estienne et al., MICCAI 2019), OASIS-3 test set.

Table 1: mean and standard deviation of the registration Dice per structure
for the three methods, in the paper's row order.  §4.1 "Evaluation of the
Segmentation": Dice of the segmentation branch for CeblWM, CeblC and LV.
"""

STRUCTURES = ["BS", "CSF", "CblmC", "CblmWM", "CeblWM", "Pu", "VDC", "Pa", "Ca", "LV",
              "Hi", "3V", "4V", "Am", "CeblC"]

METHODS = ["Rigid", "Christodoulidis et al.", "U-ReSNet"]

#: Table 1, (mean, std) per structure and method
TABLE1 = {
    "Rigid": {
        "BS": (0.574, 0.17), "CSF": (0.393, 0.11), "CblmC": (0.459, 0.15),
        "CblmWM": (0.504, 0.06), "CeblWM": (0.403, 0.18), "Pu": (0.428, 0.16),
        "VDC": (0.465, 0.14), "Pa": (0.329, 0.18), "Ca": (0.258, 0.21), "LV": (0.384, 0.15),
        "Hi": (0.345, 0.18), "3V": (0.345, 0.18), "4V": (0.162, 0.17), "Am": (0.238, 0.22),
        "CeblC": (0.361, 0.04),
    },
    "Christodoulidis et al.": {
        "BS": (0.708, 0.146), "CSF": (0.431, 0.111), "CblmC": (0.581, 0.146),
        "CblmWM": (0.528, 0.178), "CeblWM": (0.674, 0.0567), "Pu": (0.464, 0.183),
        "VDC": (0.538, 0.128), "Pa": (0.379, 0.192), "Ca": (0.331, 0.219), "LV": (0.598, 0.162),
        "Hi": (0.409, 0.177), "3V": (0.503, 0.173), "4V": (0.33, 0.257), "Am": (0.281, 0.229),
        "CeblC": (0.489, 0.0571),
    },
    "U-ReSNet": {
        "BS": (0.706, 0.141), "CSF": (0.446, 0.12), "CblmC": (0.603, 0.126),
        "CblmWM": (0.553, 0.151), "CeblWM": (0.714, 0.0539), "Pu": (0.479, 0.168),
        "VDC": (0.537, 0.132), "Pa": (0.391, 0.196), "Ca": (0.435, 0.199), "LV": (0.704, 0.141),
        "Hi": (0.406, 0.171), "3V": (0.564, 0.173), "4V": (0.332, 0.256), "Am": (0.291, 0.226),
        "CeblC": (0.536, 0.0665),
    },
}

#: §4.1, segmentation Dice (mean, std) of U-ReSNet's segmentation branch
SEGMENTATION = {"CeblWM": (0.80, 0.02), "CeblC": (0.87, 0.04), "LV": (0.70, 0.02)}


def mean_row(method):
    """Mean over the 15 structures of the published means (not printed in the paper)."""
    values = [TABLE1[method][s][0] for s in STRUCTURES]
    return sum(values) / len(values)
