"""A transformers VLM behind the Captioner protocol, with a tiny random BLIP built from a config."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from recaption.captioners import Captioner, load_captioner  # noqa: E402
from recaption.captioners.hf_vlm import HFVLMCaptioner, strip_prompt, strip_text_prefix  # noqa: E402
from recaption.captioners.testing import tiny_blip  # noqa: E402


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return tiny_blip(str(tmp_path_factory.mktemp("blip")))


def _images():
    return [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (64, 64), (10, 10, 200)),
            Image.new("L", (20, 20), 128)]


def test_blip_captions_batched_per_mode(blip_dir):
    cap = load_captioner(f"hf:{blip_dir}")
    assert isinstance(cap, HFVLMCaptioner) and isinstance(cap, Captioner)
    assert not cap.chat  # BLIP has no chat template: the prompt is a text prefix
    cap.batch_size, cap.max_new_tokens = 2, 6
    for mode in ("short", "descriptive"):
        out = cap.caption(_images(), mode)
        assert len(out) == 3 and all(isinstance(c, str) for c in out)
        assert not any(c.startswith("a detailed picture of") for c in out)
    assert cap.provenance("descriptive").prompt == "a detailed picture of"


def test_directory_with_config_json_is_detected_as_vlm(blip_dir):
    assert isinstance(load_captioner(blip_dir, dtype="float32"), HFVLMCaptioner)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_captioner(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="neither"):
        load_captioner(str(tmp_path))


def test_prompt_stripping():
    import torch

    ids = torch.tensor([[1, 2, 3, 7, 8], [1, 2, 3, 9, 9]])
    assert strip_prompt(ids, torch.tensor([[1, 2, 3], [1, 2, 3]])).tolist() == [[7, 8], [9, 9]]
    assert strip_prompt(ids, torch.tensor([[5, 2, 3], [1, 2, 3]])).shape == ids.shape
    assert strip_text_prefix("a detailed picture of a cat", "a detailed picture of") == "a cat"
    assert strip_text_prefix("a cat", "") == "a cat"


def test_chat_template_vlm_gets_a_chat_prompt_and_only_new_tokens(tmp_path):
    from recaption.captioners.testing import tiny_llava

    cap = load_captioner(f"hf:{tiny_llava(str(tmp_path / 'llava'))}", batch_size=2, max_new_tokens=4)
    assert cap.chat
    prompt = cap._text("descriptive")
    assert prompt.startswith("USER: <image>Describe this image in detail") and prompt.endswith("ASSISTANT:")
    out = cap.caption(_images(), "descriptive")
    assert len(out) == 3
    assert not any("Describe this image" in c for c in out)  # the echoed prompt is cut
    longest = max(len(t) for t in cap.processor.tokenizer.get_vocab())
    assert all(len(c) <= 4 * longest for c in out)  # 4 new tokens; the prompt alone is ~190 characters
