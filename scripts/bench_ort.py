"""onnxruntime's latency on bundles' encoders: the yardstick scripts/bench_cpu.sh sets tract
against. Same input as `vae-ood bench-encoders` ((i * 37) % 101 / 100), same warm-up (20),
one JSON list of {bundle, p50_ms, p99_ms} on stdout."""
import argparse, json, time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    out = []
    for b in a.bundles:
        m = yaml.safe_load((Path(b) / "manifest.yaml").read_text())
        inp = m["input"]
        c = 1 if inp.get("channel_order") == "gray" else 3
        shape = [1, c, inp["height"], inp["width"]]
        if inp.get("layout") == "nhwc":
            shape = [1, inp["height"], inp["width"], c]
        n = int(np.prod(shape))
        x = ((np.arange(n) * 37) % 101 / 100).astype(np.float32).reshape(shape)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(str(Path(b) / m["encoder"]["path"]), so,
                                 providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        times = []
        for i in range(20 + a.frames):
            t = time.perf_counter()
            s.run(None, feed)
            if i >= 20:
                times.append((time.perf_counter() - t) * 1e3)
        out.append({"bundle": b, "p50_ms": float(np.percentile(times, 50)),
                    "p99_ms": float(np.percentile(times, 99))})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
