"""The fusion model: pure torch, no I/O, no Ray, one job per module.

fusion         FusionSettings (hyperparameters), FusionConfig, FusionOutput, DynamicFusion
losses         fusion_losses (paper Eq. 1-6), LOSS_TERMS (its keys), gate_similarity
likelihoods    the reconstruction loss of each value kind (binary: Bernoulli, count: Poisson,
               continuous: squared error), decoder outputs in the modality's own units
masking        MaskSchedule (the progressive curriculum), sample_training_mask
normalization  the one statistics code: Moments, batch_moments, array_moments, scale_of,
               normalization_stats
metrics        the one reconstruction cosine: reconstruction_cosine, row_cosine, mean_cosine
finetune       Head, FinetunedModel, fit_finetuned: a head trained on task labels with masking on
validation     ConfigModel: every typed config validated one way, all problems in one message
"""

from dmf_ray.model.fusion import DynamicFusion, FusionConfig, FusionOutput, FusionSettings
from dmf_ray.model.likelihoods import VALUE_KINDS
from dmf_ray.model.losses import LOSS_TERMS, fusion_losses, gate_similarity
from dmf_ray.model.masking import MASK_SCHEDULE_KINDS, MaskSchedule, sample_training_mask
from dmf_ray.model.metrics import ReconstructionCosine, mean_cosine, reconstruction_cosine, row_cosine
from dmf_ray.model.normalization import Moments, array_moments, batch_moments, normalization_stats, scale_of
from dmf_ray.model.validation import ConfigError, ConfigModel

__all__ = [
    "LOSS_TERMS", "MASK_SCHEDULE_KINDS", "VALUE_KINDS", "ConfigError", "ConfigModel", "DynamicFusion", "FusionConfig", "FusionOutput",
    "FusionSettings", "MaskSchedule", "Moments", "ReconstructionCosine", "array_moments", "batch_moments",
    "fusion_losses", "gate_similarity", "mean_cosine", "normalization_stats", "reconstruction_cosine",
    "row_cosine", "sample_training_mask", "scale_of",
]
