"""Contamination guard: refuse (or loudly warn) when the model's training data overlapped a benchmark.

Reads the decontamination manifest that `data_tools.curate.decontam` writes for a training corpus. Accepted shape
(the agreed minimum; extra fields are ignored):

    {"benchmarks": {"medqa_usmle_4opt_test": {"n": 3, ...}, "cmb_clin": {"n": 0}, ...}}

`n` = number of benchmark items found overlapping the training data (after removal it should be 0; a
non-zero `n` means the overlap was reported, not removed). Keys may be our benchmark names, the paper's
titles or the data file stems; the longest matching alias wins ("cmb_clin" is CMB-Clin, not CMB).
Where: `--decontam-manifest PATH`, else `<model_dir>/decontam_manifest.json` when present.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from carebot.errors import CareBotError, ConfigError, InputError

log = logging.getLogger(__name__)

# Consultation benchmarks (eval.judge) besides the seven MCQ sets.
EXTRA_ALIASES = {"cmb_clin": ["cmb_clin", "CMB-Clin"], "cmtmedqa": ["cmtmedqa", "CMtMedQA"],
                 "huatuo26m": ["huatuo26m", "Huatuo26M-test", "huatuo26m_test"]}


SKIPPED = ("contamination check skipped: no decontamination manifest (pass --decontam-manifest, or put "
           "decontam_manifest.json in the model dir)")


class ContaminationError(CareBotError):
    """The model was trained on data overlapping a benchmark being run."""


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _aliases() -> dict[str, str]:
    from eval.benchmarks import BENCHMARKS

    out = {}
    for name, spec in BENCHMARKS.items():
        for a in (name, spec.title, Path(spec.path).stem if spec.path else ""):
            if a:
                out[_norm(a)] = name
    for name, al in EXTRA_ALIASES.items():
        for a in al:
            out[_norm(a)] = name
    return out


def manifest_benchmark(key: str) -> str | None:
    """Our benchmark name for a manifest key: the longest alias that prefixes the normalised key."""
    k = _norm(key)
    best = max((a for a in _aliases() if k.startswith(a)), key=len, default=None)
    return _aliases()[best] if best else None


def overlaps(manifest_path: str | Path) -> dict[str, int]:
    """benchmark name -> overlapping item count, from a decontamination manifest."""
    p = Path(manifest_path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: cannot read the decontamination manifest ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), dict):
        raise InputError(f'{p}: expected {{"benchmarks": {{name: {{"n": int}}}}}} (see eval/contamination.py)')
    out: dict[str, int] = {}
    for key, v in doc["benchmarks"].items():
        n = v.get("n", 0) if isinstance(v, dict) else v
        if not isinstance(n, int):
            raise InputError(f"{p}: benchmarks.{key}.n must be an int, got {n!r}")
        name = manifest_benchmark(key)
        if name is None:
            log.info("decontam manifest key %r matches no benchmark; ignored", key)
            continue
        out[name] = out.get(name, 0) + n
    return out


def check_contamination(model_dir: str | Path, benchmarks: tuple[str, ...] | list[str], policy: str = "error",
                        manifest: str | Path | None = None) -> dict:
    """Return {"manifest", "overlap": {bench: n}, "policy", "checked"} (+ "skipped": why, when nothing was checked);
    raise ContaminationError under policy 'error'. With no manifest the check cannot run, and says so."""
    if policy not in ("error", "warn", "off"):
        raise ConfigError(f"contamination policy must be error|warn|off, got {policy!r}")
    if manifest is None:
        cand = Path(model_dir) / "decontam_manifest.json"
        manifest = cand if cand.exists() else None
    if policy == "off" or manifest is None:
        why = "policy off" if policy == "off" else "no manifest"
        if why == "no manifest":
            print(SKIPPED)
        return {"manifest": str(manifest) if manifest else None, "overlap": {}, "policy": policy, "checked": False,
                "skipped": why}
    ov = {b: n for b, n in overlaps(manifest).items() if b in benchmarks and n > 0}
    if ov:
        msg = (f"CONTAMINATION: {manifest} lists training-data overlap with "
               + ", ".join(f"{b} ({n} items)" for b, n in sorted(ov.items()))
               + ". Scores on these benchmarks are not clean.")
        if policy == "error":
            raise ContaminationError(msg + " Refusing to run (use --contamination warn to run anyway).")
        log.warning(msg)
        print("\n" + "!" * 80 + f"\n{msg}\n" + "!" * 80 + "\n")
    return {"manifest": str(manifest), "overlap": ov, "policy": policy, "checked": True}
