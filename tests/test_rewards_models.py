"""Model-based rewards: CLIP (tiny random open_clip model), face identity (dlib's shipped weights),
OCR (EasyOCR's shipped English weights) and the OCR similarity metric. Nothing is downloaded."""

from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from visalign.metrics.ocr import levenshtein, normalise_ocr_text, ocr_similarity
from visalign.renderers.base import RenderResult
from visalign.rewards.base import Sample


def _missing(*modules: str) -> str | None:
    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(gone)}" if gone else None


# ---------------------------------------------------------------------------------------------- OCR metric


def _levenshtein_reference(a: str, b: str) -> int:
    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_levenshtein_matches_the_recursive_definition() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 9)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 9)))
        assert levenshtein(a, b) == _levenshtein_reference(a, b) == levenshtein(b, a)
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2


def test_ocr_similarity_is_flow_grpos_definition() -> None:
    # normalisation: spaces removed (ASCII space only), lower-cased
    assert normalise_ocr_text(" Hello  World ") == "helloworld"
    assert ocr_similarity("HELLOWORLD", "hello world") == 1.0
    # the target inside longer text counts as read perfectly
    assert ocr_similarity("Welcome! Hello World, friends", "hello world") == 1.0
    # 1 - d / len(target), d on the normalised strings
    assert ocr_similarity("helo world", "hello world") == pytest.approx(1 - 1 / 10)
    assert ocr_similarity("hxllo wxrld", "hello world") == pytest.approx(1 - 2 / 10)
    # d capped at len(target): unrelated long text and nothing read both give 0, never below
    assert ocr_similarity("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "hello") == 0.0
    assert ocr_similarity("", "hello") == 0.0
    # not symmetric: the target's length normalises
    assert ocr_similarity("ab", "abcd") == 0.5 and ocr_similarity("abcd", "ab") == 1.0
    assert ocr_similarity("\tab", "ab") == 1.0  # substring rule; tabs are kept but do not matter here
    with pytest.raises(ValueError, match="empty"):
        ocr_similarity("abc", "   ")
    with pytest.raises(TypeError):
        ocr_similarity(None, "abc")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- CLIP

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_NAME = "visalign-tiny-test-clip"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    """A tiny open_clip model with random weights (fixed seed), its transform and tokenizer, and its
    weights saved as a local checkpoint."""
    reason = _missing("open_clip")
    if reason:
        pytest.skip(reason)
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_NAME, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_NAME)
    checkpoint = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return model, preprocess, tokenizer, checkpoint


def _random_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(80, 100), (64, 64), (120, 90)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


@torch.no_grad()
def _direct_cosines(model, preprocess, tokenizer, images, prompts) -> list[float]:
    img = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    return (img * txt).sum(-1).tolist()


@pytest.mark.slow
def test_clip_score_is_torchmetrics_clipscore(tiny_clip) -> None:
    from visalign.rewards.clip import ClipReward

    model, preprocess, tokenizer, _ = tiny_clip
    images = _random_images(10)
    prompts = [f"a photo of object number {i}" for i in range(5)] * 2  # repeated prompts, as in a group
    cos = _direct_cosines(model, preprocess, tokenizer, images, prompts)
    assert min(cos) < 0 < max(cos), "the fixture should exercise the clamp at 0"
    samples = [Sample(prompt=p, image=im) for p, im in zip(prompts, images, strict=True)]

    out = ClipReward(model=(model, preprocess, tokenizer), batch_size=3)(samples)
    assert out.scores == pytest.approx([max(100 * c, 0.0) for c in cos], abs=1e-4)
    assert [d["cosine"] for d in out.details] == pytest.approx(cos, abs=1e-6)

    out01 = ClipReward(model=(model, preprocess, tokenizer), scale="0-1")(samples)
    assert out01.scores == pytest.approx([max(c, 0.0) for c in cos], abs=1e-6)


@pytest.mark.slow
def test_clip_loads_a_local_checkpoint(tiny_clip, tmp_path: Path) -> None:
    from visalign.rewards.clip import ClipReward

    model, preprocess, tokenizer, checkpoint = tiny_clip
    images = _random_images(4, seed=1)
    samples = [Sample(prompt=f"a red square {i}", image=im) for i, im in enumerate(images)]
    expected = ClipReward(model=(model, preprocess, tokenizer))(samples).scores

    with ClipReward(TINY_NAME, pretrained=checkpoint, device="cpu") as reward:
        assert reward(samples).scores == pytest.approx(expected, abs=1e-5)
        assert reward.device == torch.device("cpu")
    assert reward._model is None  # close() released it

    # an open_clip "local-dir:" folder (config + weights), the layout of a downloaded hub repo
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    local = ClipReward(f"local-dir:{tmp_path}", pretrained=None, device="cpu")
    assert local(samples).scores == pytest.approx(expected, abs=1e-5)

    with pytest.raises(FileNotFoundError, match="neither a file nor an open_clip tag"):
        ClipReward(TINY_NAME, pretrained=str(tmp_path / "missing.pt"))(samples)
    with pytest.raises(ValueError, match="random weights"):
        ClipReward(TINY_NAME, pretrained=None)


def test_clip_image_image_and_not_applicable(tiny_clip) -> None:
    from visalign.rewards.clip import ClipReward

    model, preprocess, tokenizer, _ = tiny_clip
    a, b, c = _random_images(3, seed=2)
    reward = ClipReward(model=(model, preprocess, None), mode="image_image")
    assert reward.needs_reference_render
    out = reward([
        Sample(image=a, reference_image=a),
        Sample(image=b, reference_image=a),
        Sample(image=c),  # no reference
        Sample(code="x", kind="svg", rendered=RenderResult.failure("runtime", "boom"), reference_image=a),
    ])
    with torch.no_grad():
        emb = F.normalize(model.encode_image(torch.stack([preprocess(a), preprocess(b)])), dim=-1)
    assert out.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert out.scores[1] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)
    assert out.scores[2] is None and out.details[2] == {"reason": "no reference image"}
    assert out.scores[3] == 0.0 and "render failed" in out.details[3]["error"]

    text = ClipReward(model=(model, preprocess, tokenizer))([Sample(image=a), Sample(prompt="  ", image=a)])
    assert text.scores == [None, None] and text.details[0] == {"reason": "no prompt"}
    with pytest.raises(ValueError, match="tokenizer"):
        ClipReward(model=(model, preprocess, None), mode="text_image")


# ---------------------------------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def identity_reward():
    reason = _missing("dlib", "face_recognition_models")
    if reason:
        pytest.skip(reason)
    from visalign.rewards.identity import IdentityReward

    reward = IdentityReward()
    yield reward
    reward.close()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage.data import astronaut as load

    return Image.fromarray(load())  # Eileen Collins, NASA portrait, 512x512


@pytest.fixture(scope="module")
def grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:  # shipped with matplotlib
        return im.convert("RGB")


@pytest.mark.slow
def test_identity_of_the_same_face_under_edits(identity_reward, astronaut: Image.Image) -> None:
    ref = identity_reward.reference_face(astronaut)
    assert ref is not None and ref.box == (175, 76, 265, 166)  # the face, not the mission patch
    left, top, right, bottom = ref.box
    w = right - left
    edits = {
        "same": astronaut,
        "flip": astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop": astronaut.crop((left - w, top - w, right + w, bottom + w)),
        "blur": astronaut.filter(ImageFilter.GaussianBlur(2)),
        "half size": astronaut.resize((256, 256), Image.Resampling.BICUBIC),
    }
    out = identity_reward([Sample(image=im, reference_image=astronaut) for im in edits.values()])
    details = dict(zip(edits, out.details, strict=True))
    scores = dict(zip(edits, out.scores, strict=True))
    assert scores["same"] == pytest.approx(1.0) and details["same"]["distance"] == pytest.approx(0.0, abs=1e-9)
    assert details["same"]["cosine"] == pytest.approx(1.0)
    for name in ("flip", "crop", "blur", "half size"):
        assert details[name]["face"] == "found"
        assert details[name]["distance"] < 0.6, name  # dlib: same person
        assert scores[name] > 0.5, name  # the distance score is 0.5 at the threshold
        assert scores[name] == pytest.approx(1 - details[name]["distance"] / 1.2)


@pytest.mark.slow
def test_identity_of_a_different_person_is_lower(identity_reward, astronaut, grace_hopper) -> None:
    same = identity_reward([Sample(image=astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                   reference_image=astronaut)])
    other = identity_reward([Sample(image=grace_hopper, reference_image=astronaut),
                             Sample(image=astronaut, reference_image=grace_hopper)])
    for d, s in zip(other.details, other.scores, strict=True):
        assert d["face"] == "found" and d["distance"] > 0.6  # dlib: different people
        assert s is not None and s < 0.5 < same.scores[0]
    # cosine mode: same ordering, but a compressed range (dlib descriptors are not centred)
    from visalign.rewards.identity import IdentityReward

    cosine = IdentityReward(similarity="cosine")
    cosine._models = identity_reward._load()  # share the loaded dlib models
    c = cosine([Sample(image=astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), reference_image=astronaut),
                Sample(image=grace_hopper, reference_image=astronaut)]).scores
    assert 0.7 < c[1] < c[0] <= 1.0


def test_identity_no_face_and_not_applicable(identity_reward, astronaut) -> None:
    from skimage.data import camera, coffee

    out = identity_reward([
        Sample(image=Image.fromarray(coffee()), reference_image=astronaut),  # no face in the image
        Sample(image=astronaut, reference_image=Image.fromarray(camera())),  # no face in the reference
        Sample(image=astronaut),  # no reference at all
        Sample(code="x", kind="svg", rendered=RenderResult.failure("timeout", "slow"), reference_image=astronaut),
    ])
    assert out.scores[0] == 0.0 and out.details[0] == {"face": "none", "n_faces": 0}
    assert out.scores[1] is None and out.details[1] == {"reason": "no face in the reference image"}
    assert out.scores[2] is None and out.details[2] == {"reason": "no reference image"}
    assert out.scores[3] == 0.0 and out.details[3]["face"] == "none" and "render failed" in out.details[3]["error"]
    assert out.metrics == {"no_face": 1.0, "no_reference_face": 1.0}


SMALL = 160  # astronaut at 160 px: a 32 px face, found by the HOG detector only after 2 upsamplings


@pytest.mark.slow
def test_identity_options_and_reference_cache(identity_reward, astronaut, monkeypatch) -> None:
    from visalign.rewards.identity import IdentityReward

    # two detections in the astronaut photo: the face and the mission patch (a weak detection)
    faces = identity_reward.faces(astronaut)
    assert len(faces) == 2 and faces[0].score > 1.0 > 0.5 > faces[1].score
    strict = IdentityReward(min_detection_score=0.5, match="largest", no_face_score=-1.0)
    strict._models = identity_reward._load()
    assert len(strict.faces(astronaut)) == 1
    out = strict([Sample(image=astronaut, reference_image=astronaut),
                  Sample(image=Image.new("RGB", (64, 64), "gray"), reference_image=astronaut)])
    assert out.scores[0] == pytest.approx(1.0) and out.details[0]["n_faces"] == 1
    assert out.scores[1] == -1.0

    # small faces need upsampling
    tiny = astronaut.resize((SMALL, SMALL), Image.Resampling.BICUBIC)
    up0 = IdentityReward(upsample=0)
    up0._models = identity_reward._load()
    up2 = IdentityReward(upsample=2)
    up2._models = identity_reward._load()
    assert up0.faces(tiny) == [] and len(up2.faces(tiny)) == 1
    found = up2([Sample(image=tiny, reference_image=astronaut)])
    assert found.details[0]["face"] == "found" and found.details[0]["distance"] < 0.6

    # the reference descriptor is computed once per distinct reference content
    calls = []
    fresh = IdentityReward()
    fresh._models = identity_reward._load()
    real_faces = fresh.faces
    monkeypatch.setattr(fresh, "faces", lambda im: calls.append(im.size) or real_faces(im))
    group = [Sample(image=astronaut, reference_image=astronaut.copy()) for _ in range(3)]
    fresh(group)
    assert len(calls) == 1 + 3  # the three copies of the reference: embedded once; three generated images
    with pytest.raises(ValueError, match="similarity"):
        IdentityReward(similarity="l2")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- OCR reward


def _font(size: int) -> ImageFont.FreeTypeFont:
    path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not path.is_file():
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def _text_image(text: str, size: tuple[int, int] = (400, 120)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((20, 35), text, fill="black", font=_font(40))
    return img


@pytest.fixture(scope="module")
def ocr_reward():
    reason = _missing("easyocr", "easyocr_en_models")
    if reason:
        pytest.skip(reason)
    from visalign.rewards.ocr import OcrReward

    reward = OcrReward(gpu=False)
    yield reward
    reward.close()


@pytest.mark.slow
def test_ocr_reads_rendered_text(ocr_reward) -> None:
    hello, other, blank = _text_image("HELLO WORLD"), _text_image("GOODBYE MOON"), Image.new("RGB", (400, 120), "white")
    prompt = 'a white card that says "Hello World" in black letters'
    out = ocr_reward([
        Sample(prompt=prompt, image=hello),
        Sample(prompt=prompt, image=other),
        Sample(prompt=prompt, image=blank),
        Sample(prompt="a card", image=other, metadata={"target_text": "goodbye moon"}),
    ])
    assert out.scores[0] > 0.8, out.details[0]
    assert normalise_ocr_text(out.details[0]["text"]) == "helloworld"
    assert out.details[0]["target"] == "Hello World"
    assert out.scores[1] < 0.5 < out.scores[0]
    assert out.scores[2] == 0.0 and out.details[2]["text"] == ""
    assert out.scores[3] > 0.8, out.details[3]


def test_ocr_not_applicable_and_failures(ocr_reward, monkeypatch) -> None:
    from visalign.rewards.ocr import OcrReward, target_text

    assert target_text(Sample(prompt='sign "OPEN" and "CLOSED"')) == "OPEN"
    assert target_text(Sample(prompt='unclosed "quote here')) == "quote here"  # as Flow-GRPO's split
    img = Image.new("RGB", (64, 64), "white")
    out = ocr_reward([
        Sample(prompt="no quotes", image=img),
        Sample(prompt='empty ""', image=img),
        Sample(prompt='"text" but no image'),
        Sample(prompt='"text"', code="x", kind="svg", rendered=RenderResult.failure("runtime", "boom")),
    ])
    assert out.scores == [None, None, None, 0.0]
    assert [d.get("reason") for d in out.details[:3]] == ["no target text", "empty target text", "no generated image"]
    assert "render failed" in out.details[3]["error"]

    def boom(image):
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(ocr_reward, "read", boom)
    crashed = ocr_reward([Sample(prompt='"text"', image=img)])
    assert crashed.scores == [0.0] and "engine crashed" in crashed.details[0]["error"]
    assert crashed.metrics["errors"] == 1.0

    with pytest.raises(FileNotFoundError, match=r"craft_mlt_25k\.pth"):
        OcrReward(model_dir="/nonexistent")([Sample(prompt='"x"', image=img)])
