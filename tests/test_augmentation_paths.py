"""The batched (device) augmentations against torchvision's per-image pipelines on real photographs.

The images are 32 x 32 patches of the two photographs scikit-learn bundles (`load_sample_images`). For PICA's
perturbed view and IIC's tf2, the batched pipeline and a per-image torchvision reference of the official
pipeline make many views of the same patches; their statistics must agree within the stated tolerances. The
behaviour the batched path copies from torchvision is tested directly as well: a random order of the colour
jitter's four factors per image, and IIC's nearest-neighbour rotation of the whole image before the crop.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from datasets.batch_augment import (AugmentSpec, BatchAugmenter, _colour, _rotate_nearest, draw_params, iic_specs,
                                    pica_specs)

pytestmark = pytest.mark.usefixtures("one_thread")

SIDE, PATCHES, VIEWS = 32, 256, 8


def photo_patches() -> np.ndarray:
    """(PATCHES, 32, 32, 3) uint8: 96-px patches of the two bundled photographs, resized to 32 px (PIL bilinear)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    out = []
    for photo in load_sample_images().images:
        for _ in range(PATCHES // 2):
            top, left = rng.integers(0, photo.shape[0] - 96), rng.integers(0, photo.shape[1] - 96)
            patch = Image.fromarray(photo[top:top + 96, left:left + 96]).resize((SIDE, SIDE), Image.BILINEAR)
            out.append(np.asarray(patch))
    return np.stack(out)


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return photo_patches()


def batched_views(spec: AugmentSpec, images: np.ndarray, views: int, seed: int = 0) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    augmenter = BatchAugmenter(spec, 3, views)
    return torch.cat(augmenter(x, torch.Generator().manual_seed(seed)))


def torchvision_views(pipeline, images: np.ndarray, views: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    pil = [Image.fromarray(image) for image in images]
    return torch.cat([torch.stack([pipeline(image) for image in pil]) for _ in range(views)])


def statistics(views: torch.Tensor) -> dict[str, torch.Tensor]:
    grey = views.mean(dim=1)
    return {"channel mean": views.mean(dim=(0, 2, 3)), "channel std": views.std(dim=(0, 2, 3)),
            "spread of view means": views.mean(dim=(2, 3)).std(dim=0),
            "saturation": (views.max(dim=1).values - views.min(dim=1).values).mean(),
            "edge energy": (grey[:, :, 1:] - grey[:, :, :-1]).abs().mean()}


def assert_close_statistics(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> None:
    for name, value in statistics(ours).items():
        reference = statistics(theirs)[name]
        assert (value - reference).abs().max() < tolerance, (name, value, reference)


def test_pica_perturbed_view_matches_torchvision_on_photographs(patches):
    # Official PICA: RandomResizedCrop(32, (0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.4) -> RandomGrayscale(0.2)
    # -> RandomHorizontalFlip.
    _, perturbed = pica_specs(SIDE, resize=SIDE, crop_scale=(0.2, 1.0))
    reference = T.Compose([T.RandomResizedCrop(SIDE, scale=(0.2, 1.0)), T.ColorJitter(0.4, 0.4, 0.4, 0.4),
                           T.RandomGrayscale(0.2), T.RandomHorizontalFlip(), T.ToTensor()])
    ours, theirs = batched_views(perturbed, patches, VIEWS), torchvision_views(reference, patches, VIEWS)
    assert ours.shape == theirs.shape == (PATCHES * VIEWS, 3, SIDE, SIDE)
    # Measured (scratch study, these patches): batched vs torchvision 0.0026 at most; torchvision against itself
    # with other seeds up to 0.0035; a grayscale rate of 0.4 instead of 0.2 moves the saturation by 0.041, a
    # jitter of 0.8 instead of 0.4 the channel mean by 0.023. (The jitter order and the rotation's interpolation
    # move these statistics by less than the seed noise: the tests below check them directly.)
    assert_close_statistics(ours, theirs, tolerance=0.008)


def test_iic_tf2_matches_torchvision_on_photographs(patches):
    # Official IIC tf2 (CIFAR-10 with the MNIST rotation): RandomApply([RandomRotation(25)], p=0.5) ->
    # RandomCrop(20) -> Resize(32) -> RandomHorizontalFlip -> ColorJitter(0.4, 0.4, 0.4, 0.125).
    _, tf2 = iic_specs(SIDE, crop=20 / SIDE, rotation=25.0, flip=True)
    reference = T.Compose([T.RandomApply([T.RandomRotation(25)], p=0.5), T.RandomCrop(20), T.Resize(SIDE),
                           T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4, 0.125), T.ToTensor()])
    ours, theirs = batched_views(tf2, patches, VIEWS), torchvision_views(reference, patches, VIEWS)
    # Measured: batched vs torchvision 0.0039 at most, torchvision against itself with another seed 0.0033.
    assert_close_statistics(ours, theirs, tolerance=0.008)


def test_jitter_order_is_drawn_per_image_as_torchvision():
    spec = AugmentSpec(SIDE, jitter_p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4)
    params = draw_params(spec, 4000, torch.Generator().manual_seed(0))
    order = torch.stack([params[f"jitter_op{slot}"] for slot in range(4)], dim=1).long()
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(4000, 4))   # a permutation per image
    first = torch.bincount(order[:, 0], minlength=4).float() / 4000
    assert (first - 0.25).abs().max() < 0.03                     # every operation first about a quarter of the time
    assert "jitter_op0" not in draw_params(AugmentSpec(SIDE, jitter_order="fixed"), 8, torch.Generator())
    # the order matters: hue after a strong saturation change is not hue before it
    image = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    fixed = {"jitter": torch.ones(2, dtype=torch.bool), "brightness": torch.ones(2), "contrast": torch.ones(2),
             "saturation": torch.full((2,), 1.4), "hue": torch.full((2,), 0.3), "gray": torch.zeros(2, dtype=torch.bool)}
    hue_last = _colour(image, dict(fixed, **{f"jitter_op{k}": torch.full((2,), float(k)) for k in range(4)}), spec)
    hue_first = _colour(image, dict(fixed, **{f"jitter_op{k}": torch.full((2,), float((k + 3) % 4))
                                              for k in range(4)}), spec)
    assert (hue_last - hue_first).abs().max() > 0.01


def test_iic_rotates_the_whole_image_with_nearest_neighbour_sampling():
    image = torch.randint(0, 256, (3, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(2)).float() / 255
    rotated = _rotate_nearest(image, torch.tensor([0.0, 0.3, -0.4]))
    assert torch.equal(rotated[0], image[0])                            # no rotation: the image itself
    values = set(image.flatten().tolist()) | {0.0}
    assert set(rotated.flatten().tolist()) <= values                    # nearest: no new (interpolated) values
    _, tf2 = iic_specs(SIDE, crop=20 / SIDE, rotation=25.0)
    assert tf2.rotation_interpolation == "nearest" and tf2.jitter_order == "random"
