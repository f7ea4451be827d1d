"""The server's FIM prompts are the ones codelm.infill (and so evaluation) builds: both come from codelm.prompts."""
from codelm.prompts import fim_prompt, fim_prompt_ids
from codelm.tokenizer import get_tokenizer

TOKENIZER = get_tokenizer("cl100k_base:4096")


def test_fim_prompt_matches_the_library_for_a_whole_file():
    prefix, suffix = "def add(a, b):\n", "\n\nprint(add(1, 2))\n"
    p = fim_prompt(TOKENIZER, prefix, suffix, budget=256, bos=TOKENIZER.l2r_id)
    assert not p.truncated
    assert p.ids == fim_prompt_ids(TOKENIZER, prefix, suffix, "psm", bos=TOKENIZER.l2r_id)
    assert p.ids[:3] == [TOKENIZER.l2r_id, TOKENIZER.eot_id, TOKENIZER.fim_prefix_id]


def test_a_trimmed_prefix_gets_no_end_of_text():
    prefix = "x = 1\n" * 200
    p = fim_prompt(TOKENIZER, prefix, "", budget=64, bos=TOKENIZER.l2r_id)
    assert p.truncated and len(p.ids) <= 64
    assert p.ids[:2] == [TOKENIZER.l2r_id, TOKENIZER.fim_prefix_id]
