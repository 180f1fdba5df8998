"""Published results of Couteaux et al. (cooperating segmentor and registor networks).

§3.1 / Fig. 3 (toy dataset): the box plots did not survive the text conversion; only the claim
is in the text: "We can see a large gain in similarity compared to the ground truth for
λ_r = 1 - λ_p < 0.5".

§3.2.3 (liver, T1 and T2-weighted MRI, 12 test pairs): every number printed in the text.
"""

#: §3.1, the claim checked on the toy sweep (Fig. 3's values are not in the text).
TOY_CLAIM = ("a large gain in similarity (D_S of the predictions minus D_S of the ground truth, "
             "relative to translations) for λ_r = 1 - λ_p < 0.5")

#: §3.2.3, quantity -> published value (liver T1 -> T2; first modality T1, second T2).
LIVER = {
    "Dice of the annotations before registration": 0.751,
    "D_S annotations": 0.955,
    "D_S segmentor alone (no registor)": 0.954,
    "D_S ours": 0.965,
    "Wilcoxon p, D_S ours vs annotations": 0.0029,
    "Dice first modality, ours": 0.946,
    "Dice second modality, ours": 0.918,
    "Dice first modality, segmentor alone": 0.942,
    "Dice second modality, segmentor alone": 0.897,
    "Dice first modality, single-input U-Net": 0.961,
    "Dice second modality, single-input U-Net": 0.938,
    "Dice θ(ŝ1) vs s2, ours": 0.917,
}

#: Rows of our §3.2.3 table in the paper's order, then the rows the paper does not print.
LIVER_ROWS = [*LIVER, "D_S single-input U-Net", "Wilcoxon p, D_S ours vs segmentor alone"]
