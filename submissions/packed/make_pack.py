"""Rebuild the packed fixtures from their plain source (golf-audit's own code).

    python submissions/packed/make_pack.py

writes
- submissions/packed/train_gpt.py: train_gpt_source.py.txt as LZMA2 (raw format) + base85
  behind `exec(...)`, the one-layer pack many Parameter Golf records use;
- submissions/unpackable/train_gpt.py: the same pack with its first LZMA2 control byte
  replaced by an invalid one, so the payload cannot be decompressed (a fixture for
  "not auditable").
The output is deterministic, so a rerun leaves both files byte-identical.
"""
from __future__ import annotations

import base64
import lzma
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "train_gpt_source.py.txt"
FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
# LZMA2 control bytes 0x03..0x7F are invalid: the decoder stops at the first byte.
INVALID_CONTROL_BYTE = 0x05


def pack(source: str) -> bytes:
    return lzma.compress(source.encode("utf-8"), format=lzma.FORMAT_RAW, filters=FILTERS)


def packed_script(payload: bytes) -> str:
    # Aliased imports, as in the real packed records.
    text = base64.b85encode(payload).decode("ascii")
    return ("import lzma as L,base64 as B\n"
            f'exec(L.decompress(B.b85decode("{text}"),format=L.FORMAT_RAW,filters=[{{"id":L.FILTER_LZMA2}}]))\n')


def corrupt_script(payload: bytes) -> str:
    # Plain module names this time, so the fixtures cover both spellings.
    broken = bytes([INVALID_CONTROL_BYTE]) + payload[1:]
    text = base64.b85encode(broken).decode("ascii")
    return ("import base64, lzma\n"
            f'exec(lzma.decompress(base64.b85decode("{text}"), format=lzma.FORMAT_RAW, '
            'filters=[{"id": lzma.FILTER_LZMA2}]))\n')


def main() -> None:
    source = SOURCE.read_text(encoding="utf-8")
    payload = pack(source)
    roundtrip = lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert roundtrip.decode("utf-8") == source
    (HERE / "train_gpt.py").write_text(packed_script(payload), encoding="utf-8")
    target = HERE.parent / "unpackable" / "train_gpt.py"
    target.parent.mkdir(exist_ok=True)
    target.write_text(corrupt_script(payload), encoding="utf-8")
    try:
        lzma.decompress(bytes([INVALID_CONTROL_BYTE]) + payload[1:], format=lzma.FORMAT_RAW,
                        filters=[{"id": lzma.FILTER_LZMA2}])
    except lzma.LZMAError:
        pass
    else:
        raise AssertionError("the corrupted payload still decompresses")
    print(f"packed {len(source)} source bytes into {len(packed_script(payload))} bytes")


if __name__ == "__main__":
    main()
