"""Several cameras on one monitor node (issue 19): N cameras' 640x480 rgb8 frames at RATE Hz
each over real DDS (loopback) for SECONDS per configuration, with the node's `batching` always
and never (on the CPU `auto` is never), reporting per configuration the node's CPU, the frames
answered, dropped for a newer frame (the node fell behind) and the round-trip percentiles
(publish to ~/<camera>/verdict). The configurations alternate in blocks so that both see the
same machine. Run it through scripts/bench_cameras.sh.

    scripts/bench_cameras.sh 600 --cameras 4      # 10 minutes per configuration
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
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from conftest import NodeProcess, make_frames, wait_for  # noqa: E402
from ros_helpers import raw_image  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    f = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK  # utime + stime


def run(batching, a, w, h):
    name = f"bench_cameras_{batching}_{os.getpid()}"
    cams = [f"c{k}" for k in range(a.cameras)]
    params = {"cameras": "[" + ", ".join(cams) + "]", "batching": batching, "max_frame_age": "0.0",
              "input_timeout": "0.0", "image_qos": "reliable", "image_qos_depth": "2"}
    params |= {f"{c}.image_topic": f"/{name}/{c}" for c in cams}
    node = NodeProcess(name, params, bundle=ROOT / a.bundle)
    client = rclpy.create_node(f"bench_cameras_client_{os.getpid()}")
    pubs = {c: client.create_publisher(Image, f"/{name}/{c}", 2) for c in cams}
    arrived, diags = {}, {}

    def on_verdict(m, c):
        arrived[(c, m.header.stamp.sec, m.header.stamp.nanosec)] = time.monotonic()

    for c in cams:
        client.create_subscription(DiagnosticArray, f"/{name}/{c}/verdict", lambda m, c=c: on_verdict(m, c), 50)

    def on_diag(m):
        for st in m.status:
            if st.name.startswith(f"/{name}: camera "):
                diags[st.name.rsplit(" ", 1)[1]] = {kv.key: kv.value for kv in st.values}

    client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    sent = {}
    try:
        spin = lambda: rclpy.spin_once(client, timeout_sec=0.01)  # noqa: E731
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 60, spin, "the cameras")
        msgs = [raw_image(f) for f in make_frames(8, width=w, height=h)]
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            spin()
        period, i = 1.0 / a.rate, 0
        t0 = time.monotonic()
        cpu0 = cpu_s(node.proc.pid)
        next_pub, end = t0, t0 + a.seconds
        while (now := time.monotonic()) < end:
            if now >= next_pub:
                stamp = client.get_clock().now().to_msg()
                for k, c in enumerate(cams):
                    msg = msgs[(i + 3 * k) % len(msgs)]
                    msg.header.stamp = stamp
                    pubs[c].publish(msg)
                    sent[(c, stamp.sec, stamp.nanosec)] = time.monotonic()
                i += 1
                next_pub += period
            rclpy.spin_once(client, timeout_sec=max(0.0, next_pub - time.monotonic()))
        cpu = (cpu_s(node.proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        drain = time.monotonic() + 2 * a.diagnostics_period + 1
        while time.monotonic() < drain:
            spin()
    finally:
        client.destroy_node()
        rc = node.stop()
    rtt = np.array([(arrived[k] - sent[k]) * 1e3 for k in sent if k in arrived])
    dropped = sum(int(d.get("frames_dropped", 0)) + int(d.get("frames_lost_in_queue", 0)) for d in diags.values())
    return {
        "batching": batching, "frames_sent": len(sent), "verdicts": int(len(rtt)),
        "dropped_for_newer_or_in_queue": dropped, "node_cpu_percent": cpu, "node_exit_code": rc,
        "round_trip_ms_p50": float(np.percentile(rtt, 50)) if len(rtt) else None,
        "round_trip_ms_p99": float(np.percentile(rtt, 99)) if len(rtt) else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seconds", type=float, help="per configuration")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--bundle", default="models/compressed")
    ap.add_argument("--blocks", type=int, default=2, help="alternating blocks per configuration")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench_cameras")
    a = ap.parse_args()
    a.diagnostics_period = 1.0
    w, h = map(int, a.size.split("x"))
    total = a.seconds
    a.seconds = total / a.blocks
    rclpy.init()
    runs = []
    try:
        for b in range(a.blocks):
            for batching in (["never", "always"] if b % 2 == 0 else ["always", "never"]):
                r = run(batching, a, w, h)
                print(json.dumps(r), flush=True)
                runs.append(r)
    finally:
        rclpy.shutdown()
    summary = {}
    for batching in ("never", "always"):
        rs = [r for r in runs if r["batching"] == batching]
        summary[batching] = {
            "frames_sent": sum(r["frames_sent"] for r in rs), "verdicts": sum(r["verdicts"] for r in rs),
            "dropped": sum(r["dropped_for_newer_or_in_queue"] for r in rs),
            "node_cpu_percent": float(np.mean([r["node_cpu_percent"] for r in rs])),
            "round_trip_ms_p50": float(np.mean([r["round_trip_ms_p50"] for r in rs])),
            "round_trip_ms_p99": float(np.max([r["round_trip_ms_p99"] for r in rs])),
        }
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cameras": a.cameras, "rate_hz": a.rate, "size": a.size, "bundle": a.bundle,
              "seconds_per_configuration": total, "runs": runs, "summary": summary}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"cameras-{report['date'][:19].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\n{a.cameras} cameras x {a.rate:g} Hz, {a.size}, {a.bundle}, {total:g} s per configuration")
    print("| batching | frames sent | answered | dropped (newer frame or queue) | node CPU | round trip p50 | p99 (worst block) |")
    print("|---|---|---|---|---|---|---|")
    for k, s in summary.items():
        print(f"| {k} | {s['frames_sent']} | {s['verdicts']} | {s['dropped']} | {s['node_cpu_percent']:.0f} % | "
              f"{s['round_trip_ms_p50']:.2f} ms | {s['round_trip_ms_p99']:.2f} ms |")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
