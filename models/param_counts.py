"""Parameter counts of the networks at their default widths, against the public CoCosNet v2.

Run ``python -m models.param_counts``. The public model (DeepFashionHD, 512x512, label_nc 20)
has about 9.6M parameters in the correspondence, 36.8M in the SPADE generator and 6.4M in the
discriminator; the counts here must stay within 15%. The public discriminator's 6.4M include a
segmentation decoder (0.79M) that its forward never runs; this one has no such branch.
"""

from __future__ import annotations

import sys

from torch import nn

from .cocosnet import CoCosNet, CoCosNetOptions
from .generator import Pix2PixHDGenerator

PUBLIC_COUNTS = {"correspondence": 9.6e6, "generator": 36.8e6, "discriminator": 6.4e6}
TOLERANCE = 0.15


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> int:
    options = CoCosNetOptions()
    # Shapes of parameters do not depend on the image size; 512x512 is the public model's size.
    model = CoCosNet(options)
    ok = True
    print("network               parameters      public   difference")
    for name, public in PUBLIC_COUNTS.items():
        count = count_parameters(getattr(model, name))
        difference = count / public - 1
        ok &= abs(difference) <= TOLERANCE
        print(f"{name:<20} {count:>11,}  {public / 1e6:>8.1f}M   {difference:+8.1%}")
    gru = model.correspondence.update
    print(f"{'  of which ConvGRU':<20} {count_parameters(gru):>11,}")
    pix2pixhd = Pix2PixHDGenerator(4 * 3 + options.label_nc, ngf=options.pix2pixhd_ngf)
    print(f"{'pix2pixHD G+local':<20} {count_parameters(pix2pixhd):>11,}")
    print(f"all within {TOLERANCE:.0%} of the public counts: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
