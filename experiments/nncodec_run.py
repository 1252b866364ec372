"""Code integer tensors with NNCodec (DeepCABAC) and check the round trip; for bench_codec.py.

Runs in a separate Python that has ``nncodec==2.1.3`` (which needs numpy < 2, so it must not be
the project's environment), with experiments/nncodec_stubs on PYTHONPATH in place of torchvision
and cv2. Input: an .npz of int32 tensors. Output, one JSON line: ``{"bytes": int, "roundtrip": bool}``.
The int32 path is lossless ("skip" approximation): DeepCABAC codes each value as given.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile

import numpy as np
from nncodec import nnc


def main(path: str) -> int:
    arrays = {name: value.astype(np.int32) for name, value in np.load(path).items()}
    with tempfile.TemporaryDirectory() as tmp:
        stream = os.path.join(tmp, "levels.nnc")
        with contextlib.redirect_stdout(io.StringIO()):  # NNCodec prints progress unasked
            nnc.compress(arrays, bitstream_path=stream, use_dq=False, verbose=False)
            decoded = nnc.decompress(stream, verbose=False)
        size = os.path.getsize(stream)
    same = all(np.array_equal(np.asarray(decoded[name]).astype(np.int64), value.astype(np.int64)) for name, value in arrays.items())
    print(json.dumps({"bytes": size, "roundtrip": bool(same)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
