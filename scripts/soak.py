"""Soak benchmark (issue 15): drives the monitor node with 640x480 rgb8 frames at 30 Hz over
real DDS (loopback) for a given duration, sampling the node's RSS and CPU every few seconds and
each frame's round trip (publish to its ~/verdict), then reports the RSS slope and the p99
round trip of the first and last 10 % of frames. Run it through scripts/soak.sh.

    scripts/soak.sh 1200            # 20 minutes; writes out/soak/soak-<date>.json
"""

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "test"))
import rclpy  # noqa: E402

from conftest import DEFAULT_BUNDLE, NodeProcess, make_frames  # noqa: E402
from ros_helpers import Client, raw_image  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    return int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def cpu_s(pid):
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def p99(xs):
    return float(np.percentile(xs, 99)) if len(xs) else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", type=float)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the RSS slope")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "soak")
    a = ap.parse_args()
    w, h = map(int, a.size.split("x"))
    rclpy.init()
    name = f"soak_{os.getpid()}"
    node = NodeProcess(name, bundle=DEFAULT_BUNDLE)
    client = Client(name, compressed=False)
    sent, samples = {}, []
    try:
        client.wait_matched()
        msgs = [raw_image(f) for f in make_frames(8, width=w, height=h)]
        period = 1.0 / a.rate
        t0 = time.monotonic()
        next_pub, next_sample, i = t0, t0, 0
        end = t0 + a.seconds
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                if node.proc.poll() is not None:
                    print(f"the node exited (code {node.proc.returncode}) after {now - t0:.0f} s; see {node.log_path}")
                    break
                samples.append((now - t0, rss_mib(node.proc.pid), cpu_s(node.proc.pid)))
                next_sample += a.sample_every
            if now >= next_pub:
                msg = msgs[i % len(msgs)]
                ns = client.stamp()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
                client.pub.publish(msg)
                sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (i, time.monotonic())
                i += 1
                next_pub += period
            rclpy.spin_once(client.node, timeout_sec=max(0.0, min(next_pub, next_sample) - time.monotonic()))
        drain = time.monotonic() + 2
        while time.monotonic() < drain:
            client.spin()
    finally:
        arrivals = {k: v["arrived"] for k, v in client.verdicts.items()}
        client.close()
        rc = node.stop()
        rclpy.shutdown()
    rtt = sorted((sent[k][0], (arrivals[k] - sent[k][1]) * 1e3) for k in arrivals if k in sent)
    n = len(sent)
    tenth = max(1, n // 10)
    first = [r for j, r in rtt if j < tenth]
    last = [r for j, r in rtt if j >= n - tenth]
    t, rss, cpu = map(np.array, zip(*samples))
    keep = t >= a.warmup
    slope_per_h = float(np.polyfit(t[keep], rss[keep], 1)[0] * 3600) if keep.sum() >= 2 else float("nan")
    # A leak grows all along; a high-water step (one more frame buffer in flight) does not. The
    # last half's slope tells them apart; the floor is checked on the fit above.
    half = t >= t[-1] / 2
    slope_half = float(np.polyfit(t[half], rss[half], 1)[0] * 3600) if half.sum() >= 2 else float("nan")
    cpu_pct = float((cpu[-1] - cpu[0]) / (t[-1] - t[0]) * 100) if len(t) > 1 else float("nan")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": a.seconds, "rate_hz": a.rate, "size": a.size, "frames_sent": n,
        "verdicts_received": len(rtt), "node_exit_code": rc,
        "rss_mib_first": float(rss[0]), "rss_mib_last": float(rss[-1]),
        "rss_slope_mib_per_hour": slope_per_h, "rss_slope_after_s": a.warmup,
        "rss_slope_last_half_mib_per_hour": slope_half,
        "node_cpu_percent_mean": cpu_pct,
        "round_trip_p99_ms_first_10pct": p99(first), "round_trip_p99_ms_last_10pct": p99(last),
        "round_trip_p50_ms": float(np.median([r for _, r in rtt])) if rtt else float("nan"),
        "samples": [{"t_s": round(x, 1), "rss_mib": round(y, 2), "cpu_s": round(z, 2)} for x, y, z in samples],
    }
    ratio = report["round_trip_p99_ms_last_10pct"] / report["round_trip_p99_ms_first_10pct"]
    report["p99_last_over_first"] = ratio
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"soak-{report['date'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"{n} frames sent, {len(rtt)} verdicts; RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB, slope after "
          f"{a.warmup:.0f} s {slope_per_h:+.2f} MiB/h (floor < 1), over the last half {slope_half:+.2f} MiB/h; node CPU {cpu_pct:.0f} %; round-trip p99 "
          f"first 10 % {report['round_trip_p99_ms_first_10pct']:.2f} ms, last 10 % "
          f"{report['round_trip_p99_ms_last_10pct']:.2f} ms (ratio {ratio:.3f}; floor within 10 %); -> {path}")
    # Exit 1 when the run misses issue 15's floors (or the node died), so scripts can tell.
    met = rc in (0, None) and slope_per_h < 1.0 and ratio <= 1.10 and len(rtt) == n
    if not met:
        print("floors missed (RSS slope < 1 MiB/h, last p99 within 10 % of the first, every frame answered, clean exit)")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
