"""Writing test bags with an independent tool (PyPI `rosbags`, Jazzy typestore)."""

import hashlib

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from conftest import write_png

TS = get_typestore(Stores.ROS2_JAZZY)
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
Bool = TS.types["std_msgs/msg/Bool"]
Header = TS.types["std_msgs/msg/Header"]
Time = TS.types["builtin_interfaces/msg/Time"]
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
T0 = 1_700_000_000_000_000_000


def header(ns, frame="camera"):
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)


def raw_msg(rgb, ns, encoding="rgb8", pad=0):
    h, w, _ = rgb.shape
    pix = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    rows = pix.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return Image(header=header(ns), height=h, width=w, encoding=encoding, is_bigendian=0, step=rows.shape[1],
                 data=np.ascontiguousarray(rows).reshape(-1))


def write_bag(path, storage, frames, compressed=False, labels=None, dt_ns=66_000_000, tmp=None, topic="/camera/image_raw"):
    """frames: RGB arrays; returns the messages written as (stamp, encoding, step, sha256 of data)."""
    written = []
    with Writer(path, version=9, storage_plugin=STORAGE[storage]) as w:
        ty = CompressedImage if compressed else Image
        conn = w.add_connection(topic, ty.__msgtype__, typestore=TS)
        lconn = w.add_connection("/ood_label", Bool.__msgtype__, typestore=TS) if labels is not None else None
        for i, f in enumerate(frames):
            ns = T0 + i * dt_ns
            if lconn is not None:
                w.write(lconn, ns - 1, TS.serialize_cdr(Bool(data=bool(labels[i])), Bool.__msgtype__))
            if compressed:
                png = write_png(tmp / f"{i}.png", f)
                msg = CompressedImage(header=header(ns), format="png", data=np.frombuffer(png, np.uint8))
                written.append({"stamp_ns": ns, "format": "png", "sha256": hashlib.sha256(png).hexdigest()})
            else:
                enc, pad = [("rgb8", 0), ("bgr8", 0), ("rgb8", 7)][i % 3]
                msg = raw_msg(f, ns, enc, pad)
                written.append({"stamp_ns": ns, "encoding": enc, "step": int(msg.step), "width": f.shape[1], "height": f.shape[0],
                                "sha256": hashlib.sha256(bytes(msg.data)).hexdigest()})
            w.write(conn, ns + 1000, TS.serialize_cdr(msg, ty.__msgtype__))
    return written
