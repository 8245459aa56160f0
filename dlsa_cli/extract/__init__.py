"""Images to features with a pretrained backbone, offline (`dlsa extract`).

The pieces, in the order `dlsa extract` uses them:

- `images`: `read_image_list`, an image folder, a `path,label` CSV or a list file;
- `preprocess`: `Preprocess`, resize, centre crop and normalise, and the decoding dataset;
- `backbones`: `load_backbone`, the built-in efficientnet-lite0, TorchScript, torchvision or timm;
- `loop`: `extract_features`, the backbone over the images batch by batch;
- `chunks`: finished chunks of images as files, so an interrupted run resumes;
- `shard`: each torchrun rank's share of the images, written by rank 0 as one file;
- `config`: `ExtractConfig`, every setting of a run;
- `run`: `extract_file`, the file `dlsa extract` writes (checks, provenance, resume, clean-up).

Nothing here prints; progress goes through callbacks. Nothing here touches the network.
"""

from typing import TYPE_CHECKING

from dlsa_cli.runtime.lazy import lazy_exports

# What a type checker sees; at run time each name loads its module on first use, so the
# settings (`extract.config`) load without torch.
if TYPE_CHECKING:
    from dlsa_cli.extract.backbones import (
        BUILTIN_BACKBONES,
        Backbone,
        backbone_choices,
        load_backbone,
    )
    from dlsa_cli.extract.config import ExtractConfig
    from dlsa_cli.extract.images import IMAGE_EXTENSIONS, ImageList, read_image_list
    from dlsa_cli.extract.loop import default_workers, extract_features
    from dlsa_cli.extract.preprocess import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        INTERPOLATIONS,
        ImageDataset,
        Preprocess,
    )
    from dlsa_cli.extract.run import ExtractReport, ExtractStart, extract_file
    from dlsa_cli.extract.shard import (
        Extracted,
        extract_sharded,
        shard_images,
        write_extracted,
    )

__all__ = [
    "BUILTIN_BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "Backbone",
    "ExtractConfig",
    "ExtractReport",
    "ExtractStart",
    "Extracted",
    "ImageDataset",
    "ImageList",
    "Preprocess",
    "backbone_choices",
    "default_workers",
    "extract_features",
    "extract_file",
    "extract_sharded",
    "load_backbone",
    "read_image_list",
    "shard_images",
    "write_extracted",
]
__getattr__ = lazy_exports(__name__)
