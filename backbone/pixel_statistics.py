"""The per-channel statistics input pixels are normalised by (RGB, pixels in [0, 1]): plain tuples without
torch, so that configs and every command's `--help` import them at no cost."""

# torchvision's ImageNet channel statistics. Paper: per-pixel mean subtracted, no std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
