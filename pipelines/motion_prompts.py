"""Motion prompts for the video categories (ViPO B.2): a scene description plus one motion, and for temporal
video-text alignment the same motion with its verb or direction changed.

ViPO asks a VLM (Seed-VL-1.5) for a motion that suits the image(s); the embedded default draws from this
fixed set, seeded per pair, so a re-run writes the same prompts. Each entry pairs a motion with one that
differs in exactly one verb or direction, which a video can show and a judge can check.
"""

from __future__ import annotations

from pipelines.records import seeded_rng

MOTIONS: tuple[tuple[str, str], ...] = (
    ("the camera slowly pans left", "the camera slowly pans right"),
    ("the camera slowly zooms in", "the camera slowly zooms out"),
    ("the camera tilts up", "the camera tilts down"),
    ("the camera orbits clockwise around the subject", "the camera orbits counterclockwise around the subject"),
    ("the subject moves toward the camera", "the subject moves away from the camera"),
    ("the subject turns to the left", "the subject turns to the right"),
    ("the subject rises slowly", "the subject sinks slowly"),
    ("the subject walks forward", "the subject runs forward"),
    ("the wind blows from left to right", "the wind blows from right to left"),
    ("light grows brighter over time", "light grows dimmer over time"),
)


def draw_motion(run_seed: int, key: str) -> tuple[str, str]:
    """A (motion, changed motion) pair, the same for the same run seed and key (a prompt or pair id)."""
    return MOTIONS[int(seeded_rng(run_seed, key, "motion").integers(len(MOTIONS)))]


def with_motion(prompt: str, motion: str) -> str:
    """The video prompt: the scene description, then the motion."""
    return f"{prompt.rstrip().rstrip('.,;')}, {motion}"
