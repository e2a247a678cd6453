"""The colour k-nearest-neighbour labelling behind ``handles world eval``'s per-object IoU.

Which bugs this catches: neighbours that are not the nearest (a wrong metric, an index off by
one), a vote that is not a majority of ``k``, labels read from the wrong reference pixel, and a
tie that does not go to the lowest label.
"""

from __future__ import annotations

import numpy as np

from diffusion_handles.world.evaluate import knn_labels


def _brute(image, reference, labels, k):
    q, r = image.reshape(-1, 3).astype(np.float64), reference.reshape(-1, 3).astype(np.float64)
    d = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    votes = np.eye(int(labels.max()) + 1, dtype=int)[labels.reshape(-1)[nn]].sum(1)
    return votes.argmax(1).reshape(image.shape[:2])


def test_matches_the_brute_force_majority_of_the_k_nearest():
    rng = np.random.default_rng(0)
    reference = rng.random((12, 10, 3)).astype(np.float32)  # distinct colours: no ties
    labels = rng.integers(0, 4, (12, 10))
    image = rng.random((9, 7, 3)).astype(np.float32)
    for k in (1, 3, 5):
        np.testing.assert_array_equal(knn_labels(image, reference, labels, k=k), _brute(image, reference, labels, k))


def test_labels_follow_colour_clusters_and_ties_go_to_the_lowest_label():
    reference = np.zeros((2, 4, 3), np.float32)
    reference[0] = [1.0, 0.0, 0.0]  # red pixels are label 2, blue ones label 0
    reference[1] = [0.0, 0.0, 1.0]
    labels = np.array([[2, 2, 2, 2], [0, 0, 0, 0]])
    image = np.array([[[0.9, 0.1, 0.0], [0.1, 0.0, 0.8]]], np.float32)
    assert knn_labels(image, reference, labels, k=3).tolist() == [[2, 0]]
    both = np.array([[[1.0, 0.0, 0.0]]], np.float32)  # two red neighbours of label 2 and 1
    ref2 = np.array([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)
    assert knn_labels(both, ref2, np.array([[2, 1, 0]]), k=2).tolist() == [[1]]
