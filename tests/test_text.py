import pytest

from paav_cli.text.budget import ApproxCounter, counter_for, trim_to_budget
from paav_cli.text.clean import clean, drop_copied_sentences, problem, script_share, split_sentences
from paav_cli.text.formats import FEWSHOT_EXAMPLES, as_sentence, build_request


def test_as_sentence_keeps_the_users_words():
    assert as_sentence("a cat  playing piano") == "A cat playing piano."
    assert as_sentence("Is it raining?") == "Is it raining?"
    assert as_sentence("一只猫在弹钢琴。") == "一只猫在弹钢琴。"


def test_fewshot_request_forces_the_users_prompt_first():
    req = build_request("fewshot", "a cat playing piano")
    assert req.prefix == "A cat playing piano."
    assert req.text.endswith("Prompt: a cat playing piano\nDescription: A cat playing piano.")
    for src, tgt in FEWSHOT_EXAMPLES:  # each example starts with its own prompt, as outputs must
        assert tgt.startswith(as_sentence(src))
        assert 3 <= len(split_sentences(tgt)) <= 6


def test_chat_request_uses_the_released_instruction():
    req = build_request("chat", "a cat")
    content = req.messages[0]["content"]
    assert content.startswith("You need to refine user's input prompt.")
    assert content.endswith("Original prompt:\na cat\nNew prompt:\n")


def test_training_builds_the_chat_turn_enhance_sends():
    from paav_cli.train.chat import prompt_messages

    padded = "  a cat playing piano \n"
    assert prompt_messages(padded) == build_request("chat", padded).messages
    assert prompt_messages(padded) == prompt_messages("a cat playing piano")  # stray whitespace is not trained on


def test_clean_drops_a_cut_off_sentence_and_a_new_example():
    assert clean("A cat.", " It sits. It looks aro") == "A cat. It sits."
    assert clean("A cat.", " It sits.\nPrompt: a dog") == "A cat. It sits."
    assert clean("", "  One.  Two. ") == "One. Two."


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("A cat.", "1 sentences"),
    ("A cat. " + " ".join(f"Line {i}." for i in range(9)), "10 sentences"),
    ("A cat. It sits. It sits.", "repeats"),
    ("A cat. 猫在弹钢琴，它很开心地弹着钢琴。", "script"),
    ("A cat. Its head swaying gently, it walks. Rolling hills and scattered wildflowers fill the background.",
     "copies a sentence"),
    ("A cat. It sits. Description: a dog.", "label"),
])
def test_problem_names_each_failure(text, reason):
    assert reason in (problem("a cat", text) or "")


def test_problem_accepts_a_good_rewrite():
    assert problem("a cat", "A cat. It sits on a sunny windowsill. Close-up, soft light.") is None
    assert problem("一只猫", "一只猫。它坐在窗台上。阳光柔和。") is None


def test_script_share():
    assert script_share("a cat", "A cat sits.") == 1.0
    assert script_share("一只猫", "A cat sits.") == 0.0


def test_approx_counter_errs_long_and_grows_with_text():
    c = ApproxCounter(special_tokens=1)
    assert c.count("a cat") == 1 + 3  # ceil(1.3 * 2) + 0 punctuation + EOS
    assert c.count("a cat, sitting.") > c.count("a cat sitting")
    assert not c.exact


def test_trim_keeps_whole_sentences_within_the_budget():
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    counter = ApproxCounter()
    out, trimmed = trim_to_budget(text, counter, 60)
    assert trimmed and counter.count(out) <= 60
    assert out.endswith("here.") and text.startswith(out)
    same, trimmed = trim_to_budget("Short one. Two.", counter, 60)
    assert same == "Short one. Two." and not trimmed


def test_trim_cuts_a_single_overlong_sentence_at_a_word():
    text = "word " * 200
    out, trimmed = trim_to_budget(text.strip(), ApproxCounter(), 30)
    assert trimmed and ApproxCounter().count(out) <= 30 and out.split() == ["word"] * len(out.split())


def test_counter_uses_a_real_sentencepiece_tokenizer_when_present(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"a cat playing piano number {i} in a sunny room" for i in range(300)))
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=40,
                                   model_type="unigram", minloglevel=2)
    counter = counter_for(folder, "t5")
    assert counter.exact
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    assert counter.count("a cat playing piano") == len(sp.encode("a cat playing piano")) + 1
    assert not counter_for(tmp_path / "missing", "t5").exact


def test_copied_example_details_are_dropped_but_style_may_stay():
    text = ("A fox runs. Green forests and a calm lake below reflect the mountain's silhouette. "
            "It leaps over a log. Smooth camera movement, soft natural light, documentary style.")
    assert drop_copied_sentences(text) == (
        "A fox runs. It leaps over a log. Smooth camera movement, soft natural light, documentary style.")
