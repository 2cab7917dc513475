"""Evaluation against the ground truth the synthetic data provides: where each factor is, what the classifier uses."""
from stylexlib.evaluate.benchmark import (COLUMNS, benchmark_metrics, explanation_maps, saliency_by_image, score_maps,
                                          stylex_map)
from stylexlib.evaluate.ground_truth import CONCEPT_FACTORS, factor_masks, factor_sensitivity
from stylexlib.evaluate.scores import (bootstrap_interval, cout, deletion_insertion_auc, factor_identification,
                                       map_factor_scores, paired_bootstrap_interval, pointing_game, relevance_mass,
                                       relevance_rank_accuracy)

__all__ = ["COLUMNS", "benchmark_metrics", "explanation_maps", "saliency_by_image", "score_maps", "stylex_map", "CONCEPT_FACTORS", "bootstrap_interval", "cout", "deletion_insertion_auc", "factor_identification", "factor_masks",
           "factor_sensitivity", "map_factor_scores", "paired_bootstrap_interval", "pointing_game", "relevance_mass",
           "relevance_rank_accuracy"]
