"""ResNet backbones of He et al. 2015: the model family, feature extraction and torchvision weights.

The lowest layer, so the pieces every package shares live here, each in its module: `weights`
(CheckpointError, read_state_dict, load_checked), `files` (write_atomically), `preprocessing`
(IMAGENET_MEAN/STD, ClassifierPreprocessing), `pretrained` (the one backbone-weight loader) and
`devices` (resolve_device).
"""

from backbone.lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "create_model": "backbone.registry",
        "list_models": "backbone.registry",
        "FeatureInfo": "backbone.resnet",
        "ResNet": "backbone.resnet",
        "convert_to_frozen_batchnorm": "backbone.resnet",
    },
)

__all__ = ["FeatureInfo", "ResNet", "convert_to_frozen_batchnorm", "create_model", "list_models"]
