"""ResNet backbones of He et al. 2015: the model family, feature extraction and torchvision weights."""

from backbone.registry import create_model, list_models
from backbone.resnet import FeatureInfo, ResNet, convert_to_frozen_batchnorm

__all__ = ["FeatureInfo", "ResNet", "convert_to_frozen_batchnorm", "create_model", "list_models"]
