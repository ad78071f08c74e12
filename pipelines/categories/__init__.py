"""The built-in categories, one module each; importing this package registers them (schemas/category.py
imports it on the first read of the registry).

Registration order is the order of the shard schema's category-specific columns (schemas/pair.py): here
alignment's edit_dimensions, then text_rendering's required_text and ocr, then the video categories'
motion_prompt, motion, parent_pair_id and alignment_kind. A category added later appends
its columns after these, so existing columns keep their place.

A new category is one module like these: a `Category` subclass and a `register()` call (README, "Adding a
category"); it needs an import here only if it ships with pairforge.
"""

from pipelines.categories import aesthetics, alignment, composition, human_quality, text_rendering  # noqa: F401, I001
# The video categories (ViPO B.2), after the image ones: their columns come after the image categories'.
from pipelines.categories import motion_quality, video_text_alignment, visual_quality  # noqa: F401
