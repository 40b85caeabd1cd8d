#!/usr/bin/env python3
"""Fleet-scale evaluation on Ray (issue 19): one `vae-ood eval` task per input, run on a Ray
cluster's workers, then `vae-ood report` merges the shards into one report whose detection
figures equal one `eval` over all inputs (docs/eval.md, "Many machines").

  python scripts/fleet_eval.py --bundle models/compressed --out fleet/ \\
      --id drives/a/bag drives/b/bag --input drives/c/bag=rain --label-topic /ood_label

Local by default: a Ray instance on this machine, confined to 127.0.0.1, one task per core.
`--address auto` (or ray://head:10001) joins a running cluster instead: every worker then needs
`vae-ood` (--vae-ood) and sees the bundle and the bags at the same paths (shared storage).
Exit code: 0 complete, 2 some shard partial (a damaged input), 1 an error.
"""

import argparse
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


@ray.remote(num_cpus=1)
def eval_shard(cmd):
    """One `vae-ood eval` of one input; its outputs go to the shard's directory."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def shards(a):
    """(label flag, input) per shard, in the order one eval would take them."""
    out = [("--id", p) for p in a.id] + [("--ood", p) for p in a.ood] + [("--input", p) for p in a.input]
    if not out:
        sys.exit("give inputs: --id, --ood or --input")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/compressed")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--id", nargs="*", default=[], help="in-distribution inputs")
    ap.add_argument("--ood", nargs="*", default=[], help="OOD inputs, PATH or PATH=TYPE")
    ap.add_argument("--input", nargs="*", default=[], help="inputs labelled by --label-topic, PATH or PATH=TYPE")
    ap.add_argument("--label-topic", help="std_msgs/Bool topic labelling --input bags")
    ap.add_argument("--backend", default="tract")
    ap.add_argument("--address", help="a running Ray cluster (auto, ray://host:10001); default: a local instance")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="local instance: tasks at once")
    ap.add_argument("--vae-ood", default=str(ROOT / "target" / "debug" / "vae-ood"), help="the vae-ood binary on the workers")
    a = ap.parse_args()

    if a.address:
        ray.init(address=a.address)
    else:
        # Loopback only: no dashboard, no usage report, the node on 127.0.0.1.
        ray.init(num_cpus=a.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)
    out = a.out.resolve()
    dirs, tasks = [], []
    for k, (flag, path) in enumerate(shards(a)):
        d = out / "shards" / f"{k:05d}"
        cmd = [a.vae_ood, "eval", "--bundle", str(pathlib.Path(a.bundle).resolve()), "--backend", a.backend,
               "--out", str(d), "--quiet", flag, path]
        if a.label_topic and flag == "--input":
            cmd += ["--label-topic", a.label_topic]
        dirs.append(d)
        tasks.append(eval_shard.remote(cmd))
    results = ray.get(tasks)
    ray.shutdown()
    partial = False
    for d, (rc, _, err) in zip(dirs, results):
        if rc == 2:
            partial = True
        elif rc != 0:
            sys.exit(f"shard {d} failed (exit {rc}): {err.strip()}")
    r = subprocess.run([a.vae_ood, "report", *map(str, dirs), "--out", str(out / "report")])
    if r.returncode != 0:
        sys.exit(r.returncode)
    print(f"{len(dirs)} shard(s) on Ray, merged into {out / 'report'}")
    sys.exit(2 if partial else 0)


if __name__ == "__main__":
    main()
