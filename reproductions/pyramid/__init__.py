"""The deformable registration pyramid (Gunnarsson et al., Learn2Reg 2020)."""
