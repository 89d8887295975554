"""spkid: speaker identification from HW4 log-mel features or raw audio.

    import spkid
    model = spkid.load("runs/a/best.ckpt")
    model.predict(["a.wav", "uttr-0001.pt"])      # -> ["SPEAKER0001", ...]
    model.embed(["a.wav"])                         # -> (1, E) L2-normalised
    model.verify("a.wav", "b.wav")                 # -> cosine score
    spkid.diarize("meeting.wav", registry="speakers.db")   # -> [Segment(file, start, end, speaker, score), ...]
"""
import spkid.runtime  # noqa: F401  (first: sets the OpenMP wait policy before torch starts its threads)
from spkid.scoring.model import Model, load

__all__ = ["Model", "diarize", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "diarize":             # imported on first use: diarization pulls in scipy's clustering
        from spkid.diarization.batch import diarize
        return diarize
    raise AttributeError(f"module 'spkid' has no attribute {name!r}")
