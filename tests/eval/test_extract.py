"""Answer extraction: a table of real-style zh/en generations -> the expected letter(s)."""
import pytest

from eval.extract import extract_answer

O4 = {"A": "阿司匹林", "B": "布洛芬", "C": "对乙酰氨基酚", "D": "吗啡"}
E4 = {"A": "Cisplatin", "B": "Methotrexate", "C": "Vincristine", "D": "Cyclophosphamide"}
E5 = {"A": "Anemia", "B": "Hypertension", "C": "Diabetes mellitus", "D": "Asthma", "E": "Gout"}
YN = {"A": "yes", "B": "no", "C": "maybe"}

CASES = [
    # --- bare letters and leading letters
    ("A", O4, False, "A"),
    ("B.", O4, False, "B"),
    ("C。", O4, False, "C"),
    ("(D)", E4, False, "D"),
    ("（Ｂ）", O4, False, "B"),  # full-width
    ("Ｃ", O4, False, "C"),
    (" B) Methotrexate", E4, False, "B"),
    ("A. Cisplatin is the drug responsible for ototoxicity.", E4, False, "A"),
    ("D：吗啡属于阿片类镇痛药", O4, False, "D"),
    ("C、对乙酰氨基酚", O4, False, "C"),
    ("B\n解析：布洛芬是非甾体抗炎药。", O4, False, "B"),
    # --- Chinese answer markers
    ("答案：B", O4, False, "B"),
    ("答案: C", O4, False, "C"),
    ("答案是A", O4, False, "A"),
    ("正确答案是 D。", O4, False, "D"),
    ("正确答案为（B）", O4, False, "B"),
    ("根据题意，答案应为C。", O4, False, "C"),
    ("该患者最可能的诊断是急性阑尾炎，故选B。", O4, False, "B"),
    ("所以选D", O4, False, "D"),
    ("应选择 A 阿司匹林。", O4, False, "A"),
    ("我选C", O4, False, "C"),
    ("选项C正确，对乙酰氨基酚无抗炎作用。", O4, False, "C"),
    ("答：A", O4, False, "A"),
    ("【答案】D", O4, False, "D"),
    ("分析：吗啡是阿片受体激动剂。\n答案：D", O4, False, "D"),
    # --- English answer markers
    ("The answer is (C).", E4, False, "C"),
    ("the answer is B", E4, False, "B"),
    ("Answer: A", E4, False, "A"),
    ("The correct answer is D. Cyclophosphamide", E4, False, "D"),
    ("Correct option: B", E4, False, "B"),
    ("A 67-year-old man on cisplatin... Therefore, the answer is A.", E4, False, "A"),
    ("Based on the audiogram, I would choose C.", E4, False, "C"),
    ("I select option B because methotrexate...", E4, False, "B"),
    ("The best answer would be E: Gout.", E5, False, "E"),
    ("Answer: (E) Gout", E5, False, "E"),
    ("The patient most likely has diabetes; answer is C", E5, False, "C"),
    # --- option text only
    ("布洛芬", O4, False, "B"),
    ("对乙酰氨基酚。", O4, False, "C"),
    ("Vincristine", E4, False, "C"),
    ("The drug is most likely cyclophosphamide.", E4, False, "D"),
    ("yes", YN, False, "A"),
    ("maybe", YN, False, "C"),
    ("Hypertension.", E5, False, "B"),
    # --- multiple answers (CMB 多项选择题)
    ("ABD", O4, True, "ABD"),
    ("答案：A、C", O4, True, "AC"),
    ("答案：BCD", O4, True, "BCD"),
    ("正确答案是A和D", O4, True, "AD"),
    ("A,C,D", O4, True, "ACD"),
    ("The answers are A and C.", E4, True, "AC"),
    ("Answer: B, D", E4, True, "BD"),
    ("故选ABCD", O4, True, "ABCD"),
    ("DB", O4, True, "BD"),  # sorted
    ("阿司匹林和布洛芬都是非甾体抗炎药", O4, True, "AB"),  # option texts only
    ("答案：A、C", O4, False, "A"),  # single-answer question keeps the first
    # --- nothing to read
    ("", O4, False, ""),
    ("我不确定，请咨询医生。", O4, False, ""),
    ("A patient with this presentation needs further work-up.", E4, False, ""),
    ("I am not sure about this question.", E4, False, ""),
]


@pytest.mark.parametrize("text,options,multi,want", CASES, ids=[f"{i}:{c[0][:20]}" for i, c in enumerate(CASES)])
def test_extract_table(text, options, multi, want):
    assert extract_answer(text, options, multi) == want


def test_table_is_large_enough():
    zh = sum(any("\u4e00" <= ch <= "\u9fff" for ch in c[0]) for c in CASES)
    assert len(CASES) >= 50 and zh >= 20 and sum(c[2] for c in CASES) >= 8
