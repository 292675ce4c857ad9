#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (small hand-made files) into fuzz/corpus/<reader>/.

The files are checked in; rerun this only to change them. Deterministic output
(gzip mtime 0) so a rerun leaves git clean.
"""
import gzip
import pathlib
import struct

root = pathlib.Path(__file__).resolve().parent / "corpus"


def gz(b: bytes) -> bytes:
    return gzip.compress(b, mtime=0)


def idx(type_code: int, fmt: str, dims, values) -> bytes:
    head = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + b"".join(struct.pack(">" + fmt, v) for v in values)


def cifar(n: int, offset: int) -> bytes:
    out = bytearray()
    for i in range(n):
        out.append((i + offset) % 10)
        out += bytes((i + offset + 7 * (k // 1024) + k) % 251 for k in range(3072))
    return bytes(out)


corpora = {
    "idx": {
        "u8_2x2x3": idx(0x08, "B", [2, 2, 3], range(12)),
        "u8_labels_5": idx(0x08, "B", [5], [0, 1, 9, 3, 4]),
        "u8_empty_0x4x4": idx(0x08, "B", [0, 4, 4], []),
        "i8_3": idx(0x09, "b", [3], [-1, 0, 127]),
        "i16_2x2": idx(0x0B, "h", [2, 2], [-2, 300, 7, -32768]),
        "i32_3": idx(0x0C, "i", [3], [1, -2, 65536]),
        "f32_2": idx(0x0D, "f", [2], [1.5, -0.25]),
        "f64_1x2": idx(0x0E, "d", [1, 2], [3.0, 1e-300]),
        "u8_2x2x3.gz": gz(idx(0x08, "B", [2, 2, 3], range(12))),
        "f32_two_members.gz": gz(idx(0x0D, "f", [2], [1.0, 2.0])[:10]) + gz(idx(0x0D, "f", [2], [1.0, 2.0])[10:]),
    },
    "cifar10": {
        "one_record": cifar(1, 3),
        "two_records.gz": gz(cifar(2, 0)),
        "three_records.gz": gz(cifar(3, 8)),
    },
    "libsvm": {
        "basic": b"+1 1:0.5 3:-2\n-1 2:1e-3 4:7\n",
        "zero_one_labels": b"1 1:1 2:1\n0 3:0.25\n1 5:2.5e+10\n",
        "comments_blank_crlf": b"# header\r\n\r\n-1 2:1 # trailing\r\n+1\t1:3\t10:-0.5\r\n",
        "sparse_wide": b"1 7:1 100:2 1000:3\n-1 1:1\n",
        "label_only_rows": b"-1\n+1 2:4\n",
        "basic.gz": gz(b"+1 1:0.5 3:-2\n-1 2:1e-3 4:7\n"),
    },
}

for reader, files in corpora.items():
    d = root / reader
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
print(f"wrote {sum(len(f) for f in corpora.values())} seed files under {root}")
