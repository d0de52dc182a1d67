"""Print our networks' size and cost next to the paper's Table 1 and Table 6: `python -m backbone.summary`."""

from collections.abc import Sequence

from backbone.flags import FlagParser


def imagenet_rows() -> list[dict]:
    # torch (through the models) only when counting, so that --help answers at once
    from backbone.complexity import PAPER_GMACS, count_macs, count_parameters
    from backbone.registry import create_model

    rows = []
    for name, paper in PAPER_GMACS.items():
        variants = [("paper (stride in 1x1)", True)]
        if create_model(name, num_classes=1000).config["block"] == "bottleneck":
            variants.append(("torchvision v1.5", False))
        for layout, stride_in_1x1 in variants:
            model = create_model(name, stride_in_1x1=stride_in_1x1)
            gmacs = count_macs(model) / 1e9
            rows.append(
                dict(model=name, layout=layout, params_m=count_parameters(model) / 1e6, gmacs=gmacs,
                     paper_gmacs=paper, diff_pct=100 * (gmacs - paper) / paper)
            )  # fmt: skip
    return rows


def cifar_rows() -> list[dict]:
    from backbone.complexity import PAPER_CIFAR_PARAMS_M, count_parameters
    from backbone.registry import create_model

    rows = []
    for name, paper in PAPER_CIFAR_PARAMS_M.items():
        params_m = count_parameters(create_model(name)) / 1e6
        plain_m = count_parameters(create_model(name.replace("resnet", "plain"))) / 1e6
        rows.append(dict(model=name, params_m=params_m, plain_params_m=plain_m, paper_params_m=paper,
                         diff_pct=100 * (params_m - paper) / paper))  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    FlagParser(
        prog="python -m backbone.summary",
        description="Print every ResNet's parameters and multiply-accumulates (ImageNet at 224x224, CIFAR-10 at "
        "32x32) next to the paper's Table 1 and Table 6, with the difference in percent. It takes no settings.",
    ).parse_args(argv)
    print("ImageNet ResNets at 224x224 (shortcut option B) vs the paper's Table 1")
    print(f"{'model':<10} {'layout':<22} {'params (M)':>10} {'GMACs':>7} {'paper':>6} {'diff':>7}")
    for row in imagenet_rows():
        print(f"{row['model']:<10} {row['layout']:<22} {row['params_m']:>10.2f} {row['gmacs']:>7.2f} "
              f"{row['paper_gmacs']:>6.1f} {row['diff_pct']:>+6.1f}%")  # fmt: skip
    print("  (the paper's Table 1 is the stride-in-1x1 layout; v1.5 ResNet-50 is the known 4.1 GMACs)")
    print()
    print("CIFAR-10 ResNets (option A, 6n+2 layers) vs the paper's Table 6")
    print(f"{'model':<18} {'params (M)':>10} {'plain (M)':>10} {'paper':>6} {'diff':>7}")
    for row in cifar_rows():
        print(f"{row['model']:<18} {row['params_m']:>10.3f} {row['plain_params_m']:>10.3f} "
              f"{row['paper_params_m']:>6.2f} {row['diff_pct']:>+6.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
