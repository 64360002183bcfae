"""Standard audio-visual data sets, read from files the user supplies (``data_root``).

CREMA-D, AVE and Kinetics-Sounds in the layouts of the published imbalance code (annotation
lists, one WAV per clip, a folder of extracted frames per clip), and AV-MNIST as MultiBench
arrays.  Audio becomes a log-spectrogram with scipy and ``torch.stft`` (no torchaudio),
frames are read with Pillow.  Importing this package registers all four names.
"""

from msam_core.data.av import ave, avmnist, cremad, kinetics_sounds  # noqa: F401
from msam_core.data.av.audio import AudioConfig
from msam_core.data.av.common import MalformedDataError, MissingDataError
from msam_core.data.av.frames import FrameConfig

__all__ = ["AudioConfig", "FrameConfig", "MalformedDataError", "MissingDataError"]
