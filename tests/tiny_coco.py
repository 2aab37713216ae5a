"""A small COCO-2014-style folder and a tiny open_clip model saved to disk, for the COCO-10k tests."""
import json
import random

import numpy as np
import torch
from PIL import Image


def make_coco(root, n_images=12, seed=0):
    """A COCO-2014-style folder: non-square images of random sizes, 2-3 captions each, json in shuffled order."""
    rng = random.Random(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images, annotations = [], []
    ann_ids = rng.sample(range(1000, 9999), 3 * n_images)  # unordered ids: "lowest" differs from "first listed"
    for k in range(n_images):
        image_id = 100 + 7 * k
        w, h = rng.randrange(40, 90), rng.randrange(40, 90)
        name = f"COCO_val2014_{image_id:012d}.jpg"
        pixels = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "val2014" / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for c in range(rng.choice([2, 3])):
            annotations.append({"id": ann_ids.pop(), "image_id": image_id, "caption": f" image {image_id} caption {c}\n"})
    rng.shuffle(images)
    rng.shuffle(annotations)
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}


def save_tiny_clip(root):
    """(config json, weights file) of a randomly initialised tiny open_clip model."""
    import open_clip

    root.mkdir(parents=True, exist_ok=True)
    config = root / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test")
    torch.save(model.state_dict(), root / "tiny.pt")
    return config, root / "tiny.pt"
