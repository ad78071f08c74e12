"""Grounded prompt perturbation for alignment pairs (ViPO B.1): change 1, 2 or 3 of 25 dimensions.

The lexicon perturber is the deterministic embedded default. Each dimension has a vocabulary, and
the vocabularies are disjoint, so which dimensions an edit touched can be read back from the text.
A dimension is changed either by swapping a term the prompt already uses for another term of the
same dimension, or, for scene-level dimensions (style, lighting, weather, ...), by appending a
phrase. Subject-level dimensions (quantity, pose, emotion, clothing, age, ...) are only ever
swapped, never invented: like ViPO's image-grounded edits, a person's attributes change only if
the prompt has a person with that attribute.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

# dimension -> (terms, template for adding one when absent; None = only swapped when present)
DIMENSIONS: dict[str, tuple[list[str], str | None]] = {
    "style": (["watercolor", "oil painting", "pencil sketch", "anime", "pixel art", "art deco", "impressionist",
               "ukiyo-e", "pop art", "cubist"], "in the style of {}"),
    "rendering": (["3D render", "claymation", "low-poly", "cel-shaded", "ray-traced", "vector illustration"],
                  "as a {}"),
    "lighting": (["soft light", "harsh light", "candlelight", "neon light", "moonlight", "rim light",
                  "studio lighting", "backlighting"], "lit by {}"),
    "atmosphere": (["misty", "hazy", "smoky", "dusty", "steamy"], "with a {} atmosphere"),
    "time": (["dawn", "sunrise", "morning", "noon", "afternoon", "dusk", "sunset", "midnight", "night"], "at {}"),
    "color-scheme": (["red", "blue", "green", "yellow", "purple", "orange", "pink", "teal", "monochrome",
                      "pastel", "sepia"], "in a {} palette"),
    "saturation": (["vivid", "muted", "desaturated", "vibrant", "washed-out"], "with {} colors"),
    "perspective": (["aerial view", "bird's-eye view", "low angle", "eye level", "worm's-eye view",
                     "isometric view"], "seen from a {}"),
    "depth-of-field": (["shallow depth of field", "deep focus", "bokeh", "tilt-shift"], "with {}"),
    "composition": (["centered", "symmetrical", "rule of thirds", "off-center", "diagonal layout"],
                    "with a {} framing"),
    "weather": (["sunny", "rainy", "snowy", "stormy", "foggy", "cloudy", "windy"], "on a {} day"),
    "season": (["spring", "summer", "autumn", "winter"], "in {}"),
    "location": (["forest", "beach", "desert", "city", "meadow", "kitchen", "library", "mountain", "harbor",
                  "village"], "in a {}"),
    "background": (["brick wall", "starry sky", "plain backdrop", "velvet curtain", "skyline"],
                   "against a {}"),
    "detail-level": (["highly detailed", "intricate", "minimalist", "rough"], "{} in detail"),
    "texture": (["glossy", "matte", "furry", "metallic", "rusty", "woven", "cracked"], "with a {} texture"),
    "mood": (["cheerful", "gloomy", "serene", "eerie", "dramatic", "whimsical", "melancholic"], "with a {} mood"),
    "quantity": (["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "a dozen"], None),
    "size": (["tiny", "small", "large", "huge", "giant", "miniature"], None),
    "pose": (["sitting", "standing", "kneeling", "lying", "crouching", "leaning"], None),
    "action": (["running", "walking", "jumping", "dancing", "reading", "cooking", "swimming", "singing",
                "climbing", "writing"], None),
    "interaction": (["holding hands", "hugging", "shaking hands", "high-fiving", "talking to"], None),
    "emotion": (["smiling", "laughing", "crying", "frowning", "surprised", "angry"], None),
    "clothing": (["jacket", "dress", "suit", "sweater", "raincoat", "kimono", "scarf", "apron", "uniform"], None),
    "age": (["young", "elderly", "middle-aged", "teenage", "old"], None),
}
assert len(DIMENSIONS) == 25

_PATTERNS = {dim: [(t, re.compile(r"(?<![\w'-])" + re.escape(t) + r"(?![\w'-])", re.IGNORECASE)) for t in terms]
             for dim, (terms, _) in DIMENSIONS.items()}


def dimension_terms(text: str) -> dict[str, Counter]:
    """Which terms of each dimension the text uses, with counts."""
    return {dim: Counter({t: len(p.findall(text)) for t, p in pats if p.search(text)}) for dim, pats in _PATTERNS.items()}


def changed_dimensions(original: str, edited: str) -> set[str]:
    before, after = dimension_terms(original), dimension_terms(edited)
    return {dim for dim in DIMENSIONS if before[dim] != after[dim]}


def draw_num_dimensions(rng: np.random.Generator, probs: list[float]) -> int:
    return int(rng.choice([1, 2, 3], p=probs))


def perturb_lexicon(prompt: str, k: int, rng: np.random.Generator) -> tuple[str, list[str]]:
    """Change exactly `k` dimensions of `prompt`; returns (perturbed prompt, changed dimensions). Edits
    of what the prompt already says come first (grounded swaps); appended phrases fill the rest."""
    present = sorted(dim for dim, terms in dimension_terms(prompt).items() if terms)
    addable = sorted(dim for dim, (_, template) in DIMENSIONS.items() if template and dim not in present)
    dims = [str(d) for d in rng.permutation(present)[:k]]
    if len(dims) < k:
        dims += [str(d) for d in rng.choice(addable, size=k - len(dims), replace=False)]
    text = prompt.rstrip(" .")
    for dim in dims:
        terms, template = DIMENSIONS[dim]
        found = [(t, p) for t, p in _PATTERNS[dim] if p.search(text)]
        if found:
            term, pattern = found[int(rng.integers(len(found)))]
            new = str(rng.choice([t for t in terms if t.lower() != term.lower()]))
            match = pattern.search(text)
            old = match.group(0)
            new = new[0].upper() + new[1:] if old[0].isupper() else new
            text = text[:match.start()] + new + text[match.end():]
        else:
            text = f"{text}, {template.format(str(rng.choice(terms)))}"
    return text, sorted(dims)
