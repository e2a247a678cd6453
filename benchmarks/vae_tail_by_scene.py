"""Which held-out scenes the VAE round trip fails (per scene, the issue's target is >= 30 dB).

Groups the per-scene ``vae.psnr`` of ``handles world eval`` results by the scene's floor and by
its number of patterned (not solid) objects, from the scene descriptions of the seeds (nothing is
rendered):

    python benchmarks/vae_tail_by_scene.py benchmarks/results/tinyworld_v2_eval_32_enc.json \
        benchmarks/results/tinyworld_v2_eval_far16_enc.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from diffusion_handles.world.compare import VAE_FLOOR_DB, load_metrics
from diffusion_handles.world.scene import sample_scene


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics.json files (or eval folders) of handles world eval")
    args = p.parse_args()
    rows = []
    for path in args.metrics:
        for s in load_metrics(path, "metrics")["scenes"]:
            sc = sample_scene(s["seed"])
            rows.append((s["vae"]["psnr"], sc.floor, sum(o.pattern != "solid" for o in sc.objects), s["seed"]))
    for title, key in (("floor", lambda r: r[1]), ("patterned objects", lambda r: r[2])):
        groups = defaultdict(list)
        for r in rows:
            groups[key(r)].append(r[0])
        print(f"\n| {title} | scenes | mean dB | worst dB | below {VAE_FLOOR_DB:g} dB |\n|---|---|---|---|---|")
        for k, v in sorted(groups.items(), key=lambda kv: sum(kv[1]) / len(kv[1])):
            print(f"| {k} | {len(v)} | {sum(v) / len(v):.2f} | {min(v):.2f} | {sum(x < VAE_FLOOR_DB for x in v)} |")
    print("\nworst scenes: " + ", ".join(f"{seed} ({floor}, {n} patterned) {db:.2f}" for db, floor, n, seed in sorted(rows)[:6]))


if __name__ == "__main__":
    main()
