"""ResNet backbones of He et al. 2015: the model family, feature extraction and torchvision weights.

Also the project's lowest layer. backbone/ imports no other package of the project and every other package
imports it, so the few pieces that all of them share live here rather than in a fourth package that would
sit under it for a handful of small modules: `weights` (CheckpointError, read_state_dict, load_checked),
`serving_checkpoint` (the .safetensors + manifest format of classifiers and detectors), `files`
(write_atomically), `devices` (resolve_device, the native-bf16 probe), `flags` (flags from dataclasses),
`command_logging` and `progress` (every command's logging and progress), `lazy_exports` (package exports
on first use), `preprocessing` and `pretrained` (the one backbone-weight loader), `bn_folding`
(optimize_for_inference).
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
