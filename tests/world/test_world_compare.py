"""``handles world compare``: paired, per-scene comparison of two held-out evals (which model to ship)."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError
from diffusion_handles.world.compare import compare, format_table, load_metrics


def _eval(seeds, vae, colour, iou, recon=None, loss=None) -> dict:
    """A metrics.json of ``handles world eval`` with the given per-scene values."""
    scenes = []
    for i, s in enumerate(seeds):
        row = {"seed": int(s), "vae": {"psnr": float(vae[i])},
               "model": {"psnr": 15.0, "ssim": 0.5, "iou_fg": 0.5, "iou_obj": float(iou[i]), "colour_err": float(colour[i])},
               "denoise_loss": float(loss[i]) if loss is not None else 0.05}
        if recon is not None and i < len(recon):
            row["reconstruction_psnr"] = float(recon[i])
        scenes.append(row)
    return {"figures": {}, "scenes": scenes}


@pytest.fixture()
def pair():
    rng = np.random.default_rng(0)
    n = 24
    seeds = np.arange(1_000_000, 1_000_000 + n)
    vae = 31 + 3 * rng.standard_normal(n)
    colour = 60 + 10 * rng.standard_normal(n)
    iou = 0.4 + 0.1 * rng.standard_normal(n)
    base = _eval(seeds, vae, colour, iou, recon=30 + rng.standard_normal(8))
    # The candidate: VAE +0.5 dB on every scene, colour error 3 higher on every scene (worse),
    # IoU changed by symmetric noise only, reconstruction identical; scenes listed in reverse order.
    noise = 0.05 * rng.standard_normal(n)
    noise -= noise.mean()
    cand = _eval(seeds, vae + 0.5, colour + 3.0, iou + noise,
                 recon=[s["reconstruction_psnr"] + 1e-9 for s in base["scenes"][:8]])  # float noise
    cand["scenes"].reverse()
    return base, cand


def test_verdicts_follow_each_figure_direction(pair):
    base, cand = pair
    res = compare(base, cand)
    f = res["figures"]
    assert res["n_scenes"] == 24
    # Pairing is by seed, not by position: the reversed list still gives exact per-scene differences.
    assert f["vae_psnr"]["diff"] == pytest.approx(0.5) and f["vae_psnr"]["lo"] == pytest.approx(0.5)
    assert f["vae_psnr"]["verdict"] == "better" and f["vae_psnr"]["n_better"] == 24
    # Colour error is lower-is-better: a higher one is "worse", and no scene counts as better.
    assert f["generation_colour_err"]["diff"] == pytest.approx(3.0)
    assert f["generation_colour_err"]["verdict"] == "worse" and f["generation_colour_err"]["n_better"] == 0
    # Zero-mean noise: the interval straddles 0.
    assert f["generation_iou_obj"]["lo"] < 0 < f["generation_iou_obj"]["hi"]
    assert f["generation_iou_obj"]["verdict"] == "unchanged"
    # Differences of float noise: unchanged, and no scene counts as better.
    assert f["reconstruction_psnr"]["n"] == 8 and f["reconstruction_psnr"]["verdict"] == "unchanged"
    assert f["reconstruction_psnr"]["n_better"] == 0


def test_lower_loss_is_better():
    seeds = range(10, 20)
    ones = np.ones(10)
    base = _eval(seeds, 30 * ones, 50 * ones, 0.5 * ones, loss=0.06 * ones)
    cand = _eval(seeds, 30 * ones, 45 * ones, 0.5 * ones, loss=0.05 * ones)
    f = compare(base, cand)["figures"]
    assert f["denoise_loss_heldout"]["verdict"] == "better" and f["denoise_loss_heldout"]["n_better"] == 10
    assert f["generation_colour_err"]["verdict"] == "better"


def test_vae_tail_counts_scenes_below_30_db_on_shared_seeds():
    base = _eval([1, 2, 3, 4], [26.0, 29.9, 30.0, 35.0], [50] * 4, [0.5] * 4)
    cand = _eval([2, 3, 4, 5], [30.5, 29.0, 36.0, 10.0], [50] * 4, [0.5] * 4)
    res = compare(base, cand)
    assert res["n_scenes"] == 3 and res["seeds"] == [2, 4]
    assert res["vae_tail"]["base"] == {"mean": pytest.approx((29.9 + 30 + 35) / 3), "min": 29.9, "below_floor": 1, "n": 3}
    assert res["vae_tail"]["candidate"]["min"] == 29.0 and res["vae_tail"]["candidate"]["below_floor"] == 1
    text = format_table(res, "shipped", "new")
    assert "| vae_psnr ↑ | 31.63 | 31.83 |" in text and "shipped: mean 31.63 dB, worst 29.90 dB, 1 of 3 below 30" in text


def test_no_common_seeds_is_refused():
    a = _eval([1, 2], [30, 30], [50, 50], [0.5, 0.5])
    b = _eval([3, 4], [30, 30], [50, 50], [0.5, 0.5])
    with pytest.raises(HandlesError, match="candidate: expected scenes that base also evaluated.*1..2.*3..4"):
        compare(a, b)


def test_cli_compares_folders_and_writes_json(tmp_path, capsys, pair):
    base, cand = pair
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(cand))
    out = tmp_path / "cmp.json"
    assert main(["world", "compare", str(tmp_path / "a"), str(tmp_path / "b.json"), "--labels", "old", "new",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "difference = new - old" in text and "| generation_colour_err ↓ |" in text
    saved = json.loads(out.read_text())
    assert saved["figures"]["vae_psnr"]["verdict"] == "better"
    # An existing --json file is refused and left as it was.
    assert main(["world", "compare", str(tmp_path / "a"), str(tmp_path / "b.json"), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--json: expected a new file" in err and "Traceback" not in err
    assert json.loads(out.read_text()) == saved


@pytest.mark.parametrize("content, message", [
    (None, "BASE: expected a handles world eval folder or its metrics.json"),
    ("{not json", "BASE: expected JSON"),
    ('{"scenes": [{"caption": "x"}]}', "BASE: expected metrics.json of handles world eval"),
])
def test_cli_bad_base(tmp_path, capsys, pair, content, message):
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    (tmp_path / "c.json").write_text(json.dumps(pair[1]))
    assert main(["world", "compare", str(path), str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_disjoint_seeds_names_the_arguments(tmp_path, capsys):
    for name, seeds in (("a.json", [1, 2]), ("b.json", [3, 4])):
        (tmp_path / name).write_text(json.dumps(_eval(seeds, [30, 30], [50, 50], [0.5, 0.5])))
    assert main(["world", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "CANDIDATE: expected scenes that BASE also evaluated" in capsys.readouterr().err


def test_load_metrics_accepts_a_shipped_result():
    res = load_metrics(Path(__file__).parents[2] / "benchmarks/results/tinyworld_v2_eval_32_enc.json", "x")
    assert len(res["scenes"]) == 32
