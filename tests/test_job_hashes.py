"""Job identity is stable: every shipped protocol, expanded on the same fixture data, gives the
job hashes recorded in tests/data/job_hashes.json. A moved module or a refactor must not change
which jobs a store already holds as FINISHED; a change that means to (new hyperparameter, new
pipeline version) rewrites the file with `python -m tests.test_job_hashes --record` and says why.

The fixture data root holds every reader's real format (tiny images written by Pillow, whose
encoded sizes enter the fingerprints) and stand-in weight files (their bytes enter the digests);
synth5's domains are drawn by the code itself. So the recorded hashes hold for this project's
pinned environment, not across Pillow releases that encode PNG/JPEG differently.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

RECORD = Path(__file__).parent / "data" / "job_hashes.json"


def build_data_root(root: Path) -> dict[str, str]:
    """All nine readers' datasets under `root`; the --set overrides that point at stand-in weights."""
    from .fsdata import write_image
    from .test_readers import make_affectnet, make_ferplus_folders, make_rafdb, make_sfew
    from .test_readers_cdfer import fer2013_csv, make_ckplus, make_expw

    make_rafdb(root / "RAF-DB")
    make_ferplus_folders(root / "FERPlus")
    make_affectnet(root / "AffectNet", [0, 1, 2, 3, 4, 5, 6, 7])
    make_sfew(root / "SFEW2.0")
    for split in ("train", "valid", "test"):
        for cls in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"):
            write_image(root / f"MMA/{split}/{cls}/1.jpg", grey=True)
    make_ckplus(root / "CK+")
    for name in ("KA.AN1.39.tiff", "NA.SU2.223.tiff", "TM.HA1.180.tiff"):
        write_image(root / "JAFFE" / "jaffedbase" / name)
    fer2013_csv(root / "FER2013" / "fer2013.csv", [(3, 20, "Training"), (0, 10, "PrivateTest"), (6, 30, "PrivateTest")])
    make_expw(root / "ExpW")
    weights = root / "weights"
    weights.mkdir()
    (weights / "resnet18_msceleb.pth").write_bytes(b"stand-in msceleb weights")
    (weights / "clip.safetensors").write_bytes(b"stand-in clip weights")
    (weights / "mae_visualize_vit_large.pth").write_bytes(b"stand-in mae weights")
    return {"backbone.path": str(weights / "resnet18_msceleb.pth"), "encoder.path": str(weights / "clip.safetensors"),
            "encoders.ofer.path": str(weights / "mae_visualize_vit_large.pth")}


def protocol_hashes(root: Path) -> dict[str, list[str]]:
    """Protocol name -> sorted "method source seed [sweep] hash" lines of its expanded grid."""
    from benchmark.jobs.plan import expand, plan_from
    from benchmark.jobs.protocol import load_protocol
    from benchmark.jobs.protocol_files import protocol_rows

    weights = build_data_root(root)
    out = {}
    for row in protocol_rows():
        name = row[0]
        protocol = load_protocol(name)
        overrides = {}
        if protocol.backbone.weights == "msceleb":
            overrides["backbone.path"] = json.dumps(weights["backbone.path"])
        if protocol.encoder is not None and protocol.encoder.id.startswith("openclip:"):
            overrides["encoder.path"] = json.dumps(weights["encoder.path"])
        if "ofer" in protocol.methods:
            overrides["encoders.ofer.path"] = json.dumps(weights["encoders.ofer.path"])
        if any(b.name.startswith("openclip:") for b in protocol.backbones):  # the tower: the encoder's file
            overrides["backbones"] = "[" + ", ".join(
                f'{{name = "{b.name}", weights = "{b.weights}", path = {json.dumps(weights["encoder.path"])}}}'
                if b.name.startswith("openclip:") else json.dumps(b.id) for b in protocol.backbones) + "]"
        protocol = load_protocol(name, overrides)
        jobs = expand(protocol, protocol.methods, plan_from(protocol, root, {}))
        out[name] = sorted(f"{j.method} {j.source} {j.seed} {json.dumps(j.sweep, sort_keys=True)} {j.hash}"
                           for j in jobs)
    return out


def test_every_shipped_protocol_keeps_its_recorded_job_hashes(tmp_path):
    recorded = json.loads(RECORD.read_text())
    now = protocol_hashes(tmp_path / "data")
    assert sorted(now) == sorted(recorded), "a protocol was added or removed: record again"
    for name in recorded:
        assert now[name] == recorded[name], f"protocol {name}: job hashes changed"
    assert sum(len(v) for v in now.values()) > 100  # the grids were expanded, not empty


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        RECORD.write_text(json.dumps(protocol_hashes(Path(tmp) / "data"), indent=1) + "\n")
    print(f"wrote {RECORD}")
