"""regseg: coupled registration/segmentation reproductions (Keras 3 / TensorFlow)."""
__version__ = "0.1.0"
