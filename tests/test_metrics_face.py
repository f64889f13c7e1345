"""Face metrics: MTCNN's and dlib's real models on real photos, ISM by hand, weights from disk only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_cat.callbacks import GeneratedImageEvaluator
from lightning_cat.images import ImageTransform, pil_to_tensor
from lightning_cat.metrics import (
    FDFR,
    ISM,
    FacenetEmbedder,
    InsightFaceEmbedder,
    MTCNNDetector,
    RandomFeatureExtractor,
    crop_faces,
    load_face_models,
    select_face,
)
from lightning_cat.metrics.face_dlib import dlib_model_file, import_dlib

sys.path.insert(0, str(Path(__file__).parent / "data"))
import make_images  # noqa: E402


def _photos(*names: str, resolution: int = 128) -> torch.Tensor:
    transform = ImageTransform(resolution=resolution)
    return torch.stack(
        [transform.crop_tensor(pil_to_tensor(transform.resize(make_images.photo(n).convert("RGB")))) for n in names]
    )


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector()


def test_mtcnn_fdfr_on_real_photographs(detector):
    faces = FDFR(detector)
    faces.update(_photos("astronaut", "camera"))
    assert faces.compute().item() == 0.0
    no_faces = FDFR(detector)
    no_faces.update(_photos("coffee", "rocket"))
    assert no_faces.compute().item() == 1.0
    both = FDFR(detector)
    both.update(_photos("astronaut", "coffee", "camera", "rocket"))
    assert both.compute().item() == 0.5
    found = detector(_photos("astronaut"))[0]
    x1, y1, x2, y2, confidence = found[0].tolist()
    assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128 and confidence > 0.9


class BoxDetector:
    """Returns preset boxes per image (empty tensors: no face)."""

    def __init__(self, boxes: list[torch.Tensor]) -> None:
        self.boxes = boxes
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        result = self.boxes[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return result


class CropEmbedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = RandomFeatureExtractor(num_features=8, input_size=32)

    def forward(self, images, boxes):
        return self.features(crop_faces(images, boxes, 32))


def test_ism_by_hand():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 3, 64, 64, generator=generator) * 2 - 1
    generated = torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1
    box = torch.tensor([[8.0, 8.0, 40.0, 48.0, 0.99]])
    none = torch.zeros(0, 5)
    clean_boxes = [box, none, box + torch.tensor([4.0, 4.0, 4.0, 4.0, 0.0])]
    generated_boxes = [box, none, box, box + torch.tensor([10.0, 0.0, 10.0, 0.0, 0.0])]
    embedder = CropEmbedder()
    metric = ISM(BoxDetector(clean_boxes + generated_boxes), embedder)
    assert metric.set_reference(clean) == 2
    metric.update(generated[:2])
    metric.update(generated[2:])

    def embed(images, boxes):
        return embedder(images, torch.stack([b[0, :4] for b in boxes])).numpy().astype(np.float64)

    reference = embed(clean[[0, 2]], [clean_boxes[0], clean_boxes[2]]).mean(axis=0)  # mean of raw embeddings
    vectors = embed(generated[[0, 2, 3]], [generated_boxes[i] for i in (0, 2, 3)])
    cosines = vectors @ reference / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference)
    assert metric.compute().item() == pytest.approx(cosines.mean(), abs=1e-6)

    empty = ISM(BoxDetector([none, none]), embedder)
    with pytest.raises(ValueError, match="no face was detected"):
        empty.set_reference(clean[:2])
    with pytest.raises(RuntimeError, match="set_reference"):
        empty.update(clean[:1])


class FixedEmbedder:
    """Returns preset embeddings in call order; records the boxes it was given."""

    def __init__(self, vectors: list[list[float]]) -> None:
        self.vectors = torch.tensor(vectors)
        self.boxes: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        start = sum(len(b) for b in self.boxes)
        self.boxes.append(boxes)
        return self.vectors[start : start + len(boxes)]


def test_ism_reference_is_the_mean_of_raw_embeddings():
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.9]])
    images = torch.zeros(3, 3, 8, 8)
    # Raw mean of (10, 0) and (0, 1) is (5, 0.5): the long embedding dominates (the papers' average).
    metric = ISM(BoxDetector([box] * 3), FixedEmbedder([[10.0, 0.0], [0.0, 1.0], [0.0, 3.0]]))
    metric.set_reference(images[:2])
    metric.update(images[2:])
    assert metric.compute().item() == pytest.approx(0.5 / np.hypot(5.0, 0.5), abs=1e-6)


def test_face_choice_largest_or_most_confident():
    small_sure = [0.0, 0.0, 10.0, 10.0, 0.99]
    large_unsure = [20.0, 20.0, 60.0, 50.0, 0.7]
    tie = [0.0, 0.0, 40.0, 30.0, 0.6]
    detections = torch.tensor([small_sure, large_unsure, tie])
    assert select_face(detections, "most_confident").tolist() == pytest.approx(small_sure)
    assert select_face(detections, "largest").tolist() == pytest.approx(large_unsure)  # ties: the more confident

    embedder = FixedEmbedder([[1.0, 0.0], [0.0, 1.0]])
    metric = ISM(BoxDetector([detections[:2], detections[:2]]), embedder, face="largest")
    metric.set_reference(torch.zeros(1, 3, 64, 64))
    metric.update(torch.zeros(1, 3, 64, 64))
    assert [b[0, :4].tolist() for b in embedder.boxes] == [large_unsure[:4]] * 2
    with pytest.raises(ValueError, match=r"ISM: face='biggest' is not one of \['largest', 'most_confident'\]"):
        ISM(BoxDetector([]), embedder, face="biggest")


def test_ism_with_mtcnn_on_real_faces(detector):
    metric = ISM(detector, CropEmbedder())
    assert metric.set_reference(_photos("astronaut")) == 1
    metric.update(_photos("astronaut", "coffee"))
    # The one detected face is the reference face itself.
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-5)
    assert metric.detected.item() == 1


def test_facenet_embedder_without_weights_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="face_embedder_weights"):
        FacenetEmbedder(None)
    with pytest.raises(FileNotFoundError, match="face_embedder_weights .* does not exist"):
        FacenetEmbedder(tmp_path / "missing.pt")


@pytest.mark.slow
def test_facenet_embedder_reads_local_weights(tmp_path):
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    reference = InceptionResnetV1(pretrained=None).eval()
    torch.save(reference.state_dict(), tmp_path / "facenet.pt")
    embedder = FacenetEmbedder(tmp_path / "facenet.pt")
    assert torch.equal(embedder.net.conv2d_1a.conv.weight, reference.conv2d_1a.conv.weight)
    images = torch.rand(2, 3, 96, 96) * 2 - 1
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [0.0, 0.0, 96.0, 96.0]])
    embeddings = embedder(images, boxes)
    assert embeddings.shape == (2, 512)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    torch.save({"conv2d_1a.conv.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(Exception, match="partial.pt|size mismatch"):
        FacenetEmbedder(tmp_path / "partial.pt")


# --- dlib: real detector and descriptor (the `faces` extra), offline -------------------------------


def _pixels(array: np.ndarray) -> torch.Tensor:
    """An ``[H, W, 3]`` (or gray ``[H, W]``) uint8 array as a ``[1, 3, H, W]`` batch in ``[-1, 1]``."""
    return pil_to_tensor(Image.fromarray(np.ascontiguousarray(array))).unsqueeze(0)


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def faces():
    """Real photographs: scikit-image's astronaut (Eileen Collins) and matplotlib's Grace Hopper."""
    from matplotlib import cbook
    from skimage import data

    grace = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    return {"astronaut": data.astronaut(), "grace": grace[44:556], "coffee": data.coffee(), "camera": data.camera()}


@pytest.fixture(scope="module")
def dlib_models():
    pytest.importorskip("dlib", reason="dlib not installed (pip install 'lightning-cat[faces]')")
    detector, embedder = load_face_models("dlib")
    return detector, embedder


def test_dlib_detector_on_real_photographs(dlib_models, faces):
    detector, _ = dlib_models
    found = detector(_pixels(faces["astronaut"]))[0]
    x1, y1, x2, y2, score = found[0, :5].tolist()
    assert 150 < x1 < x2 < 290 and 50 < y1 < y2 < 190 and score > 1.0  # her face, in the 512 px photo
    assert detector(_pixels(faces["coffee"]))[0].shape == (0, 5)
    fdfr = FDFR(detector)
    fdfr.update(_photos("astronaut", "coffee", "chelsea", "rocket", resolution=256))  # a face, a cup, a cat, a rocket
    assert fdfr.compute().item() == 0.75


def test_dlib_cnn_detector_finds_the_cameraman_that_hog_misses(dlib_models, faces):
    from lightning_cat.metrics import DlibDetector

    hog, _ = dlib_models
    camera = _pixels(faces["camera"])  # grayscale, turned RGB
    assert hog(camera)[0].shape[0] == 0
    found = DlibDetector(model="cnn", upsample=0)(camera)[0]
    assert found.shape[0] == 1 and 150 < found[0, 0] < found[0, 2] < 290


def test_dlib_embedder_matches_dlib_and_separates_identities(dlib_models, faces):
    detector, embedder = dlib_models
    astronaut = faces["astronaut"]
    views = {
        "astronaut": astronaut,
        "astronaut crop": _resized(astronaut[20:320, 60:360], 256),
        "astronaut small": _resized(astronaut[0:400, 50:450], 200),
        "grace": _resized(faces["grace"], 256),
    }
    vectors = {}
    for name, view in views.items():
        images = _pixels(view)
        vectors[name] = embedder(images, detector(images)[0][:1])[0].double()
    assert vectors["grace"].shape == (128,)
    dlib = import_dlib()  # dlib's own alignment + descriptor call gives the same vector
    predictor, descriptor = embedder.models()
    rect = dlib.get_frontal_face_detector().run(np.ascontiguousarray(astronaut), 1, 0.0)[0][0]
    direct = np.array(descriptor.compute_face_descriptor(astronaut, predictor(astronaut, rect)))
    assert np.allclose(vectors["astronaut"].numpy(), direct, atol=1e-6)

    def cosine(a, b):
        return float(torch.nn.functional.cosine_similarity(vectors[a], vectors[b], dim=0))

    same = [cosine("astronaut", "astronaut crop"), cosine("astronaut", "astronaut small")]
    cross = [cosine(name, "grace") for name in ("astronaut", "astronaut crop", "astronaut small")]
    assert min(same) > max(cross) + 0.05
    # dlib's rule: the same person below Euclidean distance 0.6.
    assert float((vectors["astronaut"] - vectors["astronaut small"]).norm()) < 0.6
    assert float((vectors["astronaut"] - vectors["grace"]).norm()) > 0.6


def test_ism_largest_face_with_dlib(dlib_models, faces):
    """A large astronaut face next to a smaller Grace Hopper face that dlib scores higher."""
    detector, embedder = dlib_models
    canvas = np.full((320, 640, 3), 127, np.uint8)
    canvas[10:310, 10:310] = _resized(faces["astronaut"][30:230, 120:320], 300)
    canvas[90:230, 420:560] = _resized(faces["grace"][60:360, 100:400], 140)
    image = _pixels(canvas)
    found = detector(image)[0]
    assert found.shape[0] == 2
    areas = (found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])
    assert areas[1] > 2 * areas[0] and found[1, 2] < 320  # the most confident face is the small one (right)
    scores = {}
    for face in ("largest", "most_confident"):
        metric = ISM(detector, embedder, face=face)
        metric.set_reference(_pixels(faces["astronaut"]))
        metric.update(image)
        scores[face] = metric.compute().item()
    assert scores["largest"] > 0.98  # the astronaut again
    assert scores["most_confident"] < 0.92  # Grace Hopper


def test_dlib_models_survive_copies(dlib_models, faces):
    import copy
    import pickle

    detector, embedder = dlib_models
    twin = copy.deepcopy(embedder)  # dlib's ResNet cannot be pickled: it is reloaded on first use
    pickle.loads(pickle.dumps(detector))
    images = _pixels(faces["astronaut"])
    boxes = detector(images)[0][:1]
    assert torch.equal(twin(images, boxes), embedder(images, boxes))


def test_dlib_missing_packages_fail_with_the_pip_command(monkeypatch):
    with pytest.raises(ModuleNotFoundError, match="face-recognition-models.*pip install"):
        dlib_model_file("dlib_face_recognition_resnet_model_v1.dat", package="lc_test_no_such_models_package")
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now fails
    with pytest.raises(ModuleNotFoundError, match=r"face_backend='dlib' needs the dlib package.*dlib-bin"):
        load_face_models("dlib")


# --- insightface (RetinaFace/SCRFD + ArcFace ONNX): error paths only, no model files here ---------


def test_insightface_needs_a_local_model_folder(tmp_path):
    with pytest.raises(ValueError, match="face_backend='insightface' needs face_models_dir.*buffalo_l"):
        load_face_models("insightface")
    with pytest.raises(FileNotFoundError, match="face_models_dir .* does not exist"):
        load_face_models("insightface", models_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no w600k_r50.onnx"):
        load_face_models("insightface", models_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="has no det_10g.onnx"):
        load_face_models("insightface", embedder=False, models_dir=tmp_path)


def test_insightface_missing_package_names_the_install(tmp_path, monkeypatch):
    for file in ("det_10g.onnx", "w600k_r50.onnx"):
        (tmp_path / file).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.model_zoo", None)
    with pytest.raises(ModuleNotFoundError, match="pip install insightface onnxruntime"):
        load_face_models("insightface", models_dir=tmp_path)


def test_insightface_embedder_needs_landmark_rows():
    embedder = InsightFaceEmbedder.__new__(InsightFaceEmbedder)  # no model files: only the row check runs
    torch.nn.Module.__init__(embedder)
    with pytest.raises(ValueError, match="needs the 5 landmarks"):
        embedder(torch.zeros(1, 3, 8, 8), torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.9]]))


# --- the evaluator's face options ------------------------------------------------------------------


def _face_evaluator(**options) -> GeneratedImageEvaluator:
    return GeneratedImageEvaluator(fid=False, clip_iqa=False, clip_iqac=False, **options)


def test_evaluator_face_options():
    with pytest.raises(
        ValueError, match=r"face_backend='retina' is not one of \['mtcnn_facenet', 'dlib', 'insightface'\]"
    ):
        _face_evaluator(fdfr=True, face_backend="retina")
    with pytest.raises(ValueError, match=r"ism_face='first' is not one of \['largest', 'most_confident'\]"):
        _face_evaluator(ism=True, ism_face="first")
    with pytest.raises(ValueError, match="face_min_confidence must lie in \\[0, 1\\]"):
        _face_evaluator(fdfr=True, face_min_confidence=1.5)
    with pytest.raises(ValueError, match="face_backend='insightface' needs face_models_dir"):
        _face_evaluator(fdfr=True, face_backend="insightface")
    with pytest.raises(ValueError, match="ism=True needs face_embedder_weights"):
        _face_evaluator(ism=True)
    default = _face_evaluator(fdfr=True)
    assert isinstance(default.metrics["fdfr"].detector, MTCNNDetector)
    assert default.metrics["fdfr"].detector.min_confidence == 0.0


def test_evaluator_dlib_backend_needs_no_weights():
    pytest.importorskip("dlib", reason="dlib not installed (pip install 'lightning-cat[faces]')")
    from lightning_cat.metrics import DlibDetector, DlibEmbedder

    evaluator = _face_evaluator(fdfr=True, ism=True, face_backend="dlib", ism_face="largest", face_min_confidence=-0.5)
    ism = evaluator.metrics["ism"]
    assert isinstance(ism.detector, DlibDetector) and isinstance(ism.embedder, DlibEmbedder)
    assert ism.face == "largest" and ism.detector.min_confidence == -0.5
    assert evaluator.metrics["fdfr"].detector is ism.detector
