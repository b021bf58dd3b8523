"""Baselines as the CareBot paper reports them (AAAI 2025), for `carebot eval report --baselines paper`.

Table 1: accuracy (%), 0-shot except BioMistral's MedQA / MMLU-Med (3-shot, as its own paper reported),
averaged over three runs. Tables 2 / 3: GPT-4 judge scores (1-5) on CMtMedQA and CMB-Clin.
"""
from __future__ import annotations

_T1 = ["medqa", "mmlu_med", "cmb", "cmmlu_med", "ceval_med"]
_DIMS = ["fluency", "relevance", "completeness", "proficiency", "avg"]
_ROWS = {  # name: (Table 1 row, Table 2 CMtMedQA row, Table 3 CMB-Clin row)
    "ChatGPT": ([52.24, 69.96, 43.26, 50.37, 48.80], [4.94, 4.21, 3.98, 4.04, 4.29], [4.78, 3.75, 3.77, 4.01, 4.08]),
    "HuatuoGPT-7B": ([16.63, 25.62, 19.68, 23.11, 25.66], [4.94, 3.28, 3.22, 4.19, 3.91], [4.69, 3.25, 3.08, 4.00, 3.76]),
    "Zhongjing-13B": ([11.28, 16.90, 20.39, 23.85, 30.09], [2.26, 1.68, 1.62, 2.63, 2.05], [3.14, 2.14, 1.89, 3.11, 2.57]),
    "MedAlpaca-7B": ([49.74, 62.72, 23.29, 25.38, 27.43], [4.35, 2.18, 1.97, 3.29, 2.95], [3.31, 1.69, 1.49, 2.58, 2.27]),
    "BioMistral-7B": ([50.60, 59.08, 23.83, 26.55, 25.67], [4.48, 2.45, 2.17, 3.55, 3.16], [3.79, 2.10, 1.82, 3.09, 2.70]),
    "HuatuoGPT II-7B": ([41.13, 51.44, 60.39, 59.08, 62.40], [4.96, 3.41, 3.47, 4.27, 4.03], [4.75, 3.43, 3.43, 4.22, 3.96]),
    "CareBot-Chat (paper)": ([63.71, 71.53, 52.50, 56.42, 63.72], [4.99, 4.67, 4.20, 4.26, 4.53], [4.82, 4.20, 3.68, 4.16, 4.22]),
    "CareBot-Chat RL (paper)": ([63.63, 71.44, 52.45, 56.58, 62.83], [4.96, 4.70, 4.31, 4.34, 4.58], [4.74, 4.28, 4.01, 4.21, 4.31]),
}

PAPER = {"models": {
    name: {"source": "CareBot paper (AAAI 2025), Tables 1-3", "scores": dict(zip(_T1, t1)),
           "consult": {"cmtmedqa": dict(zip(_DIMS, t2)), "cmb_clin": dict(zip(_DIMS, t3))}}
    for name, (t1, t2, t3) in _ROWS.items()}}
