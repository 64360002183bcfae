"""Audio-visual loaders on tiny fixtures written in each layout; spectrograms; ResNet encoders."""

from __future__ import annotations

import av_fixtures as fx
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import wavfile
from torch.utils.data import DataLoader

from msam_core.data.av import ave, avmnist, cremad, kinetics_sounds
from msam_core.data.av.audio import AudioConfig, log_spectrogram, wav_to_spectrogram
from msam_core.data.av.common import MalformedDataError, MissingDataError
from msam_core.data.av.frames import FrameConfig, list_frames, load_frames, pick_frames
from msam_core.data.registry import load_dataset
from msam_core.models import build_model
from msam_core.models.resnet import ResNet18Encoder
from msam_core.rundir import load_checkpoint

OPTIONS = {**fx.AUDIO_OPTIONS, **fx.FRAME_OPTIONS}
SPEC_SHAPE = (1, 33, 32)  # 0.25 s at 8 kHz, n_fft 64 (33 bins), hop 64 (1 + 2000 // 64 frames)

LAYOUTS = {
    # name: (fixture writer, sizes (train, val, test), frames per clip, classes)
    "cremad": (fx.make_cremad, (6, 3, 3), 1, 6),
    "ave": (fx.make_ave, (4, 4, 4), 3, 28),
    "kinetics_sounds": (fx.make_kinetics_sounds, (3, 3, 3), 3, 3),
}


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path):
    writer, sizes, frames, classes = LAYOUTS[request.param]
    return request.param, writer(tmp_path / request.param), sizes, frames, classes


# --- the three clip layouts -----------------------------------------------------------------


def test_each_layout_loads_with_the_documented_shapes(layout):
    name, root, sizes, frames, classes = layout
    # Every loader takes the run's seed (the training loop always passes one).
    ds = load_dataset(name, data_root=root, seed=5, **OPTIONS)
    assert (len(ds.train), len(ds.val), len(ds.test)) == sizes
    assert ds.num_classes == classes
    assert [(s.name, s.kind, s.shape) for s in ds.modalities] == [
        ("audio", "spectrogram", SPEC_SHAPE),
        ("visual", "image", (3 * frames, 12, 12)),
    ]
    x, y = ds.test[0]
    assert x["audio"].shape == SPEC_SHAPE and x["visual"].shape == (3 * frames, 12, 12)
    assert 0 <= y < classes
    # File-backed and deterministic: reading twice gives the same tensors.
    again, _ = ds.test[0]
    assert torch.equal(x["audio"], again["audio"]) and torch.equal(x["visual"], again["visual"])


def test_labels_follow_the_annotation(tmp_path):
    root = fx.make_cremad(tmp_path)
    ds = cremad.load_cremad(root, **OPTIONS)
    by_id = {c.clip_id: c.label for part in (ds.train, ds.val, ds.test) for c in part.clips}
    assert by_id["1001_IEO_HAP_XX"] == cremad.CLASSES.index("HAP") == 1
    assert by_id["1000_IEO_SAD_XX"] == 2
    # val is carved from train.csv: disjoint from train, stratified (one of each class here).
    train_ids = {c.clip_id for c in ds.train.clips}
    assert train_ids.isdisjoint(c.clip_id for c in ds.val.clips)
    assert sorted(ds.val.targets.tolist()) == [0, 1, 2]


def test_val_split_is_fixed_by_the_seed(tmp_path):
    root = fx.make_kinetics_sounds(tmp_path, per_class=5)
    ids = [
        [c.clip_id for c in kinetics_sounds.load_kinetics_sounds(root, seed=s, **OPTIONS).val.clips]
        for s in (0, 0, 1, 2, 3)
    ]
    assert ids[0] == ids[1]
    assert any(other != ids[0] for other in ids[2:])


def test_a_batch_collates_through_a_dataloader(tmp_path):
    ds = ave.load_ave(fx.make_ave(tmp_path), **OPTIONS)
    x, y = next(iter(DataLoader(ds.train, batch_size=4)))
    assert x["audio"].shape == (4, *SPEC_SHAPE) and x["visual"].shape == (4, 9, 12, 12)
    assert y.tolist() == [0, 0, 2, 2]  # Church bell, Bark: AVE classes 0 and 2


# --- errors name the file and show the layout -----------------------------------------------


def test_missing_root_shows_the_layout(tmp_path):
    with pytest.raises(MissingDataError) as info:
        cremad.load_cremad(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message and "Expected layout" in message and "AudioWAV/" in message
    with pytest.raises(MissingDataError, match="no data_root given"):
        load_dataset("ave")


def test_missing_annotation_file_is_named(tmp_path):
    root = fx.make_ave(tmp_path)
    (root / "valSet.txt").unlink()
    with pytest.raises(MissingDataError, match=r"valSet\.txt is missing(.|\n)*trainSet\.txt"):
        ave.load_ave(root, **OPTIONS)


def test_malformed_annotation_names_the_line(tmp_path):
    root = fx.make_cremad(tmp_path)
    with open(root / "test.csv", "a", encoding="utf-8") as f:
        f.write("1099_IEO_ANG_XX\n")
    with pytest.raises(MalformedDataError, match=r"test\.csv, line 4: expected at least 2"):
        cremad.load_cremad(root, **OPTIONS)


def test_unknown_class_lists_the_known_ones(tmp_path):
    root = fx.make_cremad(tmp_path)
    with open(root / "train.csv", "a", encoding="utf-8") as f:
        f.write("1001_IEO_XXX_XX,BORED\n")
    with pytest.raises(MalformedDataError, match=r"unknown class 'BORED'.*'NEU', 'HAP'"):
        cremad.load_cremad(root, **OPTIONS)


def test_missing_clip_files_are_listed_or_skipped(tmp_path):
    root = fx.make_kinetics_sounds(tmp_path)
    clip = "clip1_000002_000012"
    (root / "train" / clip / f"{clip}.wav").unlink()
    with pytest.raises(MissingDataError) as info:
        kinetics_sounds.load_kinetics_sounds(root, **OPTIONS)
    assert f"{clip}: no audio file" in str(info.value) and "missing='skip'" in str(info.value)
    ds = kinetics_sounds.load_kinetics_sounds(root, missing="skip", **OPTIONS)
    assert len(ds.train) + len(ds.val) == 5


def test_corrupt_wav_is_named_when_read(tmp_path):
    root = fx.make_cremad(tmp_path)
    broken = root / "AudioWAV" / "1000_IEO_NEU_XX.wav"
    broken.write_bytes(b"not a wav file")
    ds = cremad.load_cremad(root, **OPTIONS)
    index = [c.clip_id for c in ds.test.clips].index("1000_IEO_NEU_XX")
    with pytest.raises(MalformedDataError, match=r"1000_IEO_NEU_XX\.wav(.|\n)*Expected layout"):
        ds.test[index]


def test_corrupt_frame_is_named_when_read(tmp_path):
    root = fx.make_ave(tmp_path)
    for frame in list_frames(root / "visual" / "test0x0"):
        frame.write_bytes(b"\xff\xd8 truncated")
    ds = ave.load_ave(root, **OPTIONS)
    with pytest.raises(MalformedDataError, match=r"test0x0.frame_00001\.jpg"):
        ds.test[0]


def test_unknown_option_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown options \['n_mels'\].*hop_length"):
        cremad.load_cremad(fx.make_cremad(tmp_path), n_mels=64)


# --- spectrograms and frames ----------------------------------------------------------------


def test_default_audio_settings_give_the_published_257_by_188_map():
    config = AudioConfig()
    spec = log_spectrogram(torch.zeros(config.n_samples), config)
    assert tuple(spec.shape) == config.shape == (1, 257, 188)


@pytest.mark.parametrize("n_fft", [64, 63])
def test_spectrogram_equals_torch_stft_and_ignores_the_thread_count(n_fft):
    config = AudioConfig(sample_rate=8000, duration=0.25, n_fft=n_fft, hop_length=20)
    wave = torch.rand(config.n_samples, generator=torch.Generator().manual_seed(0)) * 2 - 1
    window = torch.hann_window(n_fft, dtype=torch.float64)
    stft = torch.stft(wave.double(), n_fft, 20, window=window, center=True, return_complex=True)
    spec = log_spectrogram(wave, config)
    assert spec.shape == config.shape and spec.dtype == torch.float32
    torch.testing.assert_close(spec.double(), torch.log(stft.abs() + 1e-7)[None], atol=1e-5, rtol=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as in a DataLoader worker
        assert torch.equal(log_spectrogram(wave, config), spec)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("file_rate", [8000, 16000])
def test_a_tone_peaks_in_its_frequency_bin(tmp_path, file_rate):
    # 1 kHz at 8 kHz with a 64-point FFT: bins are 125 Hz apart, so the peak is bin 8,
    # also after resampling a 16 kHz file.
    t = np.arange(int(0.1 * file_rate)) / file_rate
    wavfile.write(
        tmp_path / "tone.wav", file_rate, (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    )
    config = AudioConfig(sample_rate=8000, duration=0.25, n_fft=64, hop_length=32)
    spec = wav_to_spectrogram(tmp_path / "tone.wav", config)  # 0.1 s repeated to 0.25 s
    assert spec.shape == config.shape
    assert torch.all(spec[0, :, 2:-2].argmax(dim=0) == 8)


def test_spec_size_resizes_the_spectrogram(tmp_path):
    fx.write_wav(tmp_path / "a.wav", label=0)
    config = AudioConfig(
        sample_rate=8000, duration=0.25, n_fft=64, hop_length=16, spec_size=(20, 24)
    )
    assert wav_to_spectrogram(tmp_path / "a.wav", config).shape == (1, 20, 24)


def test_frames_are_picked_evenly_and_in_natural_order(tmp_path):
    assert pick_frames(10, 3) == [1, 5, 8]
    assert pick_frames(2, 3) == [0, 1, 1]
    for k in (1, 2, 10):
        Image.new("RGB", (4, 4), (10 * k, 0, 0)).save(tmp_path / f"frame_{k}.png")
    assert [p.name for p in list_frames(tmp_path)] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    frames = load_frames(tmp_path, FrameConfig(n_frames=3, image_size=4, normalize_frames=False))
    # Red channel of frames 1, 2, 10 (PNG is lossless): 10/255, 20/255, 100/255.
    assert torch.allclose(frames[[0, 3, 6], 0, 0], torch.tensor([10.0, 20.0, 100.0]) / 255)


# --- AV-MNIST -------------------------------------------------------------------------------


def test_avmnist_reads_multibench_arrays(tmp_path):
    root = fx.make_avmnist(tmp_path)
    ds = load_dataset("avmnist", data_root=root, val_size=3, seed=5)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 6)
    assert [(s.name, s.kind, s.shape) for s in ds.modalities] == [
        ("image", "image", (1, 28, 28)),
        ("audio", "spectrogram", (1, 112, 112)),
    ]
    raw_image = np.load(root / "image" / "train_data.npy")
    x, y = ds.val[0]  # val = the last val_size training rows, as in MultiBench
    assert torch.allclose(x["image"].flatten(), torch.as_tensor(raw_image[9]) / 255)
    assert y == int(np.load(root / "train_labels.npy")[9])
    batch, targets = ds.train.take(torch.tensor([4, 1]))
    assert torch.equal(batch["audio"][0], ds.train[4][0]["audio"]) and targets.tolist() == [4, 1]


def test_avmnist_names_the_inconsistent_files(tmp_path):
    root = fx.make_avmnist(tmp_path)
    np.save(root / "test_labels.npy", np.zeros(5))
    with pytest.raises(MalformedDataError, match=r"test files disagree(.|\n)*test_labels\.npy"):
        avmnist.load_avmnist(root, val_size=2)
    (root / "audio" / "train_data.npy").unlink()
    with pytest.raises(MissingDataError, match=r"audio.train_data\.npy is missing"):
        avmnist.load_avmnist(root, val_size=2)


# --- ResNet-18 encoders ---------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet18", "resnet18_gn"])
def test_resnet18_forward_backward_on_a_fixture_batch(tmp_path, encoder):
    torch.manual_seed(0)
    ds = ave.load_ave(fx.make_ave(tmp_path), **OPTIONS)
    x, y = next(iter(DataLoader(ds.train, batch_size=4)))
    model = build_model(ds.modalities, ds.num_classes, encoder=encoder, feature_dim=16)
    assert model.encoders["visual"].frames == 3
    logits = model(x)
    assert logits.shape == (4, 28)
    torch.nn.functional.cross_entropy(logits, y).backward()
    for m in ("audio", "visual"):
        grads = [p.grad for p in model.encoders[m].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_frames_share_the_trunk_and_are_averaged():
    torch.manual_seed(0)
    video = ResNet18Encoder(frame_channels=3, frames=3, width=4, feature_dim=8, small_input=True)
    image = ResNet18Encoder(frame_channels=3, frames=1, width=4, feature_dim=8, small_input=True)
    image.load_state_dict(video.state_dict())  # same parameters: one trunk for every frame
    video.eval(), image.eval()
    frames = torch.randn(2, 3, 3, 10, 10)  # [B, K, 3, H, W]
    out = video(frames.flatten(1, 2))
    mean_of_frames = torch.stack([image(frames[:, k]) for k in range(3)]).mean(0)
    assert torch.allclose(out, mean_of_frames, atol=1e-5)
    # Time order does not change a mean.
    assert torch.allclose(video(frames[:, [2, 0, 1]].flatten(1, 2)), out, atol=1e-5)


def test_width_follows_feature_dim_and_the_stem_follows_input_size():
    from msam_core.data.base import ModalitySpec
    from msam_core.models.resnet import resnet18_for

    big = resnet18_for(ModalitySpec("audio", "spectrogram", (1, 257, 188)), feature_dim=512)
    assert isinstance(big.project, torch.nn.Identity) and big.stem[0].kernel_size == (7, 7)
    assert sum(p.numel() for p in big.parameters()) == pytest.approx(11.17e6, rel=0.01)
    small = resnet18_for(ModalitySpec("left", "image", (1, 8, 4)), feature_dim=20)
    assert small.stem[0].kernel_size == (3, 3) and small(torch.randn(3, 1, 8, 4)).shape == (3, 20)


def test_group_norm_variant_makes_feature_masking_equal_input_masking_in_train_mode(tmp_path):
    torch.manual_seed(0)
    ds = cremad.load_cremad(fx.make_cremad(tmp_path), **OPTIONS)
    x, _ = next(iter(DataLoader(ds.train, batch_size=6)))
    model = build_model(ds.modalities, ds.num_classes, encoder="resnet18_gn", feature_dim=16)
    model.train()
    mask = torch.tensor([True, False])
    features = model.encode(x)
    features["visual"] = model.baseline_features()["visual"].expand_as(features["visual"])
    assert torch.allclose(model.fuse(features, mask), model(x, mask), atol=1e-5)


# --- one training epoch through the loop ----------------------------------------------------


@pytest.mark.parametrize("name", [*sorted(LAYOUTS), "avmnist"])
def test_one_msam_epoch_on_each_layout(tmp_path, name):
    import json

    from msam_core.train import train

    if name == "avmnist":
        options = {"data_root": str(fx.make_avmnist(tmp_path / "data")), "val_size": 3}
    else:
        options = {"data_root": str(LAYOUTS[name][0](tmp_path / "data")), **OPTIONS}
    run = train(
        dataset=name,
        dataset_options=options,
        encoder="resnet18",
        model_options={"feature_dim": 16},
        method="msam",
        epochs=1,
        batch_size=4,
        out=tmp_path / "run",
        quiet=True,
    )
    steps = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    n_train = {"avmnist": 9, **{k: v[1][0] for k, v in LAYOUTS.items()}}[name]
    assert len(steps) == -(-n_train // 4)  # one step per batch of 4
    modalities = ["image", "audio"] if name == "avmnist" else ["audio", "visual"]
    assert all(f"phi/{m}" in steps[-1] for m in modalities)
    assert all(np.isfinite(s["loss"]) for s in steps)
    assert {(e["epoch"], e["split"]) for e in epochs} >= {(1, "train"), (1, "val"), (1, "test")}
    assert (run / "checkpoints" / "last.pt").is_file()


# --- reading items in DataLoader worker processes -------------------------------------------


def test_worker_processes_give_the_same_batches_in_the_same_order(tmp_path):
    from msam_core.batches import iterate_batches

    ds = cremad.load_cremad(fx.make_cremad(tmp_path), **OPTIONS)
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    alone = list(iterate_batches(ds.train, order, 4, cpu))
    workers = list(iterate_batches(ds.train, order, 4, cpu, num_workers=2))
    assert len(alone) == len(workers) == 2  # 6 training clips, batches of 4 and 2
    for (x0, y0), (x1, y1) in zip(alone, workers, strict=True):
        assert torch.equal(y0, y1)
        for m in x0:
            assert torch.equal(x0[m], x1[m])


def test_a_corrupt_file_read_in_a_worker_is_raised_as_itself(tmp_path):
    from msam_core.batches import iterate_batches

    root = fx.make_cremad(tmp_path)
    (root / "AudioWAV" / "1000_IEO_NEU_XX.wav").write_bytes(b"not a wav file")
    ds = cremad.load_cremad(root, **OPTIONS)
    order = torch.arange(len(ds.test))
    with pytest.raises(MalformedDataError, match=r"1000_IEO_NEU_XX\.wav(.|\n)*Expected layout"):
        list(iterate_batches(ds.test, order, 2, torch.device("cpu"), num_workers=2))


def test_training_with_workers_is_the_same_run(tmp_path):
    import json

    from msam_core.train import train

    data_root = str(fx.make_cremad(tmp_path / "data"))
    runs = {}
    for workers in (0, 2):
        runs[workers] = train(
            dataset="cremad",
            dataset_options={"data_root": data_root, **OPTIONS},
            encoder="resnet18",
            model_options={"feature_dim": 8, "dropout": 0.3},  # draws from the global RNG
            method="msam",
            epochs=2,
            batch_size=4,
            num_workers=workers,
            out=tmp_path / f"run{workers}",
            quiet=True,
        )

    def records(run, name):
        lines = (run / name).read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in lines
        ]

    for name in ("iterations.jsonl", "epochs.jsonl"):
        assert records(runs[0], name) == records(runs[2], name)
    weights = [load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in runs.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
