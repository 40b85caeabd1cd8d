"""Demo client: replays committed Duckietown drives into the monitor node with `vae_ood_replay`
and prints the node's verdicts live (with several detectors, the combined verdict and each
detector's state; score, p-value and CUSUM are then on ~/<detector>/), then a summary per drive.

Drives (data/sample, see data/README.md): a clear in-distribution test drive, then OOD test
drives (brightness and rain in the middle half, sensor noise throughout). Labels come from each
drive's meta.json; verdicts are matched to frames by header stamp.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from std_srvs.srv import Trigger

ROOT = pathlib.Path(__file__).resolve().parent.parent
DRIVES = ["id_loop_empty_s4", "ood_brightness_small_loop_s5", "ood_rain_udem1_s6", "ood_noise_small_loop_s8"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--monitor", default="vae_ood_monitor")
    ap.add_argument("--replay", default=str(ROOT / "target" / "debug" / "vae_ood_replay"),
                    help="the ROS package's replay executable (what `vae-ood replay` runs)")
    ap.add_argument("--rate", type=float, default=1.0, help="replay speed (1 = recorded 15 fps)")
    ap.add_argument("--json", type=pathlib.Path, help="also write per-drive verdicts and labels here")
    ap.add_argument("--lockstep", action="store_true",
                    help="publish each frame only after the previous one's verdict (lossless under any load)")
    args = ap.parse_args()

    rclpy.init()
    node = rclpy.create_node("vae_ood_demo_listener")
    verdicts = {}
    lock = threading.Lock()

    def on_verdict(msg):
        rec = {kv.key: kv.value for kv in msg.status[0].values}
        with lock:
            verdicts[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = rec

    sub = node.create_subscription(DiagnosticArray, f"/{args.monitor}/verdict", on_verdict, 100)
    reset = node.create_client(Trigger, f"/{args.monitor}/reset")
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [rclpy.spin_once(node, timeout_sec=0.05) for _ in iter(stop.is_set, True)])
    spinner.start()

    # The first frames' verdicts are lost unless this reader has matched the node's writer, and
    # the writer this reader (verdicts are volatile): wait for the one, then let the other settle.
    deadline = time.monotonic() + 30.0
    while sub.get_publisher_count() == 0:
        if time.monotonic() > deadline:
            sys.exit(f"no monitor publishes /{args.monitor}/verdict (30 s)")
        time.sleep(0.05)
    time.sleep(1.0)

    summary = []
    results = []
    print(f"{'drive':<30} {'frame':>5} {'label':<5} {'score':>8} {'p-value':>8} {'CUSUM':>9}  verdict")
    try:
        for n, drive in enumerate(DRIVES):
            if n > 0:
                # Each drive starts fresh, as after an operator's reset: an alarm latched at the
                # end of one drive says nothing about the next.
                if not reset.wait_for_service(timeout_sec=10.0):
                    sys.exit("the monitor's ~/reset service did not appear")
                # A reset is idempotent: a request whose response DDS lost under load is resent
                # every 3 s rather than failing the demo.
                futs, deadline = [], time.monotonic() + 30.0
                while time.monotonic() < deadline and not any(f.done() for f in futs):
                    futs.append(reset.call_async(Trigger.Request()))
                    resend = time.monotonic() + 3.0
                    while time.monotonic() < min(resend, deadline) and not any(f.done() for f in futs):
                        time.sleep(0.02)
                done = next((f for f in futs if f.done()), None)
                if not (done and done.result().success):
                    sys.exit(f"~/reset failed: {done.result().message if done else 'no answer after 30 s'}")
            meta = json.loads((ROOT / "data" / "sample" / drive / "meta.json").read_text())
            ood = set(meta["ood_frames"])
            seen = set()
            with lock:
                before = set(verdicts)
            cmd = [args.replay, str(ROOT / "data" / "sample" / drive / "bag"), "--rate", str(args.rate)]
            if args.lockstep:
                cmd += ["--lockstep", f"/{args.monitor}/verdict"]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            t0 = None
            while proc.poll() is None or len(seen) < meta["frames"]:
                with lock:
                    new = sorted(set(verdicts) - before - seen)
                for stamp in new:
                    seen.add(stamp)
                    t0 = t0 or stamp
                    i = round((stamp - t0) * meta["fps"] / 1e9)
                    v = verdicts[stamp]
                    if i % 15 == 0 or i == meta["frames"] - 1:
                        label = "OOD" if i in ood else "ID"
                        # With several detectors the node's record has each one's state.
                        each = ", ".join(f"{k[len('detector.'):]} {s}" for k, s in v.items() if k.startswith("detector."))
                        print(f"{drive:<30} {i:5d} {label:<5} {float(v['score']):8.2f} {float(v.get('p_value', 'nan')):8.4f} {float(v.get('cusum', 'nan')):9.2f}  {v['state']}"
                              + (f" ({each})" if each else ""))
                if proc.poll() is not None and not new:
                    if time.monotonic() - getattr(proc, "_done", time.monotonic()) > 2.0:
                        break
                    proc._done = getattr(proc, "_done", time.monotonic())
                time.sleep(0.05)
            if proc.returncode != 0:
                sys.exit(f"replay of {drive} failed: {proc.stderr.read()}")
            with lock:
                rows = [verdicts[s] for s in sorted(seen)]
            if len(rows) != meta["frames"]:
                print(f"{drive}: {len(rows)} verdicts for {meta['frames']} frames", file=sys.stderr)
            flags = [r["state"] == "OOD" for r in rows]
            idx = sorted(ood)
            delay = next((k - idx[0] for k in range(idx[0], len(flags)) if flags[k] and k in ood), None) if idx else None
            fa = sum(1 for k, f in enumerate(flags) if f and k not in ood)
            summary.append((drive, len(rows), len(ood), sum(flags), delay, fa, [float(r["total_ms"]) for r in rows]))
            results.append({"drive": drive, "ood_frames": sorted(ood), "states": [r["state"] for r in rows]})
    finally:
        stop.set()
        spinner.join()

    print("\nsummary (verdict OOD = CUSUM alarm; 'ID flagged' counts in-distribution frames under an alarm,")
    print("including an alarm still latched after an OOD segment ends)")
    print(f"  {'drive':<30} {'frames':>6} {'OOD':>4} {'flagged':>7} {'delay':>6} {'ID flagged':>10} {'p50 latency':>11}")
    for drive, n, n_ood, flagged, delay, fa, lat in summary:
        lat.sort()
        d = "-" if not n_ood else ("missed" if delay is None else f"{delay}")
        print(f"  {drive:<30} {n:6d} {n_ood:4d} {flagged:7d} {d:>6} {fa:10d} {lat[len(lat) // 2]:9.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(results))
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
