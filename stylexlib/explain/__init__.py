"""Explainers of an image classifier, all behind captum's verb ``attribute(inputs, target=None, **options)``."""
from stylexlib.explain.saliency import METHODS, SaliencyExplainer, SaliencyMaps, blur_ig, gaussian_blur, gradcam_layer
from stylexlib.explain.stylex import Attribute, Direction, StylEx, StylexAttribution

__all__ = ["Attribute", "Direction", "StylEx", "StylexAttribution", "METHODS", "SaliencyExplainer", "SaliencyMaps", "blur_ig", "gaussian_blur", "gradcam_layer"]
