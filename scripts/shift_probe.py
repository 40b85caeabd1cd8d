"""Ten shifts this project never generates, applied to clear drives (docs/detector-experiments.md,
"The detail channel per region"): colour cast, over-exposure, low contrast, greyscale, hue shift,
defocus, vignetting, lens smudge, JPEG at quality 4 and a 12-degree tilt. Writes OUT/<shift>/<drive>/
image folders of every 2nd frame (and OUT/clear/<drive>) for `vae-ood eval --fps 7.5 --id
OUT/clear/* --ood OUT/<shift>/<drive>=<shift> ...`. An exploration aid: what it shows is a design
figure, never an unseen one.

    .venv/bin/python scripts/shift_probe.py OUT BAG...   (the test venv has OpenCV and rosbags)
"""
import pathlib
import sys

import cv2
import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore


def shifts(img):  # img: RGB uint8
    f = img.astype(np.float32)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / np.sqrt((w / 2) ** 2 + (h / 2) ** 2)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hue = hsv.copy()
    hue[..., 0] = (hue[..., 0].astype(int) + 30) % 180  # OpenCV hue is 0-180: 60 degrees
    smudge = cv2.GaussianBlur(img, (0, 0), 6)
    m = np.exp(-(((xx - w * 0.35) / (w * 0.18)) ** 2 + ((yy - h * 0.45) / (h * 0.22)) ** 2))[..., None]
    _, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 4])
    return {
        "colour_cast": np.clip(f * [1.25, 1.0, 0.7], 0, 255),
        "overexposure": np.clip(f * 1.7 + 20, 0, 255),
        "low_contrast": f * 0.45 + f.mean() * 0.55,
        "greyscale": np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, 2).astype(np.float32),
        "hue_shift": cv2.cvtColor(hue, cv2.COLOR_HSV2RGB).astype(np.float32),
        "defocus": cv2.GaussianBlur(img, (0, 0), 2.0).astype(np.float32),
        "vignette": f * np.clip(1.15 - 1.1 * r ** 2, 0, 1)[..., None],
        "lens_smudge": f * (1 - m) + smudge * m,
        "jpeg": cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32),
        "tilt": cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 12, 1.15), (w, h), borderMode=cv2.BORDER_REFLECT).astype(np.float32),
    }
def main():
    ts = get_typestore(Stores.ROS2_JAZZY)
    out = pathlib.Path(sys.argv[1])
    for d in sys.argv[2:]:
        name = pathlib.Path(d).parent.name
        with Reader(d) as r:
            conns = [c for c in r.connections if "Image" in c.msgtype]
            for k, (c, _, raw) in enumerate(r.messages(connections=conns)):
                msg = ts.deserialize_cdr(raw, c.msgtype)
                if "Compressed" in c.msgtype:
                    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                else:
                    img = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
                if k % 2:
                    continue  # every 2nd frame is plenty for per-frame AUROC
                for kind, s in {"clear": img.astype(np.float32), **shifts(img)}.items():
                    p = out / kind / name
                    p.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(p / f"{k:05d}.png"), cv2.cvtColor(np.clip(s, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        print(name, file=sys.stderr)


if __name__ == "__main__":
    main()
