import torch

from diffusion_handles.viz import colorize_depth, side_by_side


def test_colorize_depth_near_is_warm_far_is_cool_and_holes_black():
    z = torch.linspace(1, 10, 64).reshape(1, 1, 8, 8)
    z[..., 3, 3] = float("inf")
    rgb = colorize_depth(z)
    assert rgb.shape == (1, 3, 8, 8) and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    near, far = rgb[0, :, 0, 0], rgb[0, :, -1, -1]
    assert near[0] > near[2] and far[2] > far[0]  # red near, blue far
    assert float(rgb[0, :, 3, 3].abs().sum()) == 0.0


def test_side_by_side_keeps_panels_and_adds_labels():
    a = torch.zeros(1, 3, 10, 12)
    b = torch.ones(1, 1, 10, 12)
    strip = side_by_side([("a", a), ("b", b)], label_height=6, min_side=0)
    assert strip.shape == (1, 3, 16, 12 + 4 + 12)
    assert float(strip[0, :, 6:, 16:].min()) == 1.0


def test_side_by_side_enlarges_small_panels_nearest_neighbour():
    a = torch.zeros(1, 3, 10, 12)
    a[..., 0, 0] = 1.0
    strip = side_by_side([("a", a)], label_height=6)  # default: long side at least 256 px
    f = -(-256 // 12)  # 22
    assert strip.shape == (1, 3, 6 + 10 * f, 12 * f)
    block = strip[0, :, 6:6 + f, :f]
    assert float(block.min()) == 1.0 and float(strip[0, :, 6 + f:6 + 2 * f, :f].max()) == 0.0
