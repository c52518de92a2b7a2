"""Synthetic brand / micro-influencer datasets in format v1 (a stand-in for the paper's data).

The paper's brand-micro-influencer dataset (section IV-A: 360 brands in 12 categories, 3,748
micro-influencers, 50 posts per account) and its 40,000-post post-concept dataset (section IV-C) are
available from the authors only on request. This module writes a dataset with the same structure,
so the whole system (concept generator, COSMIC, CAMERA, baselines, metrics, explanations) can be
run, tested and timed end to end. Usage::

    python experiments/synthetic.py --out=DIR --preset=tiny|small|paper --seed=0 [--image_size=64]

Presets (:data:`PRESETS`)
-------------------------
========  ==========  ======  ===========  =========  =======  ========  ==============
preset    categories  brands  influencers  posts/acc  labeled  concepts  positives/brand
========  ==========  ======  ===========  =========  =======  ========  ==============
tiny      4           32      120          10         800      40        ~5
small     12          120     600          20         4,000    120       ~8
paper     12          360     3,748        50         40,000   420       ~11
========  ==========  ======  ===========  =========  =======  ========  ==============

The vocabulary is 420 hand-written concept names (objects, actions, styles and scenes), 30 per brand
category plus 60 generic ones (portrait, sky, nature_landscape, ...). A smaller preset keeps the
first ``concepts_per_category`` names of each of its categories and the first ``generic_concepts``
generic names, so its vocabulary is a subset of the paper vocabulary with the same structure. The
names listed first in a group are also the most frequent ones (see "Accounts" below).

Generative story
----------------
*Concepts and images.* Every concept has a fixed visual signature derived only from its name (a
CRC-32 seeded RNG, so it is the same in every preset and every seed): an 8x8 binary glyph with
exactly 32 set cells, a bright foreground colour on the set cells and a dark, differently hued
colour on the others. Shape (64 random bits) and two colours keep the 420 signatures separable. An
image of side ``S`` is a background tinted by the account's category (a muted category colour plus
a random linear gradient); each of the post's concepts is pasted as an opaque tile of side about
``S / 4`` (nearest-neighbour upscaling of the glyph, random scale 0.8-1.2) into its own randomly
chosen cell of a 3x3 grid, with random jitter inside the cell (so tiles never overlap); finally
Gaussian pixel noise (sigma 7) is added. Posts are JPEG (quality 95, no chroma subsampling:
the glyphs' colour cells survive), labeled posts are PNG.

*Accounts.* Each account has a category (brands: an equal number per category; influencers:
balanced over the categories in random order) and a concept-interest distribution ``theta`` over
the vocabulary: a mixture of its own category's concepts, the generic concepts and one or two other
categories, with mixture weights ~ Dirichlet(30, 15, 5) for influencers (mean 0.6 / 0.3 / 0.1) and
Dirichlet(35, 12.5, 2.5) for brands. Inside each group the weights are Dirichlet with a small total
concentration (sparse: each account strongly prefers a few concepts: its sub-interests) around a
group prior that decreases with list position (``1 / (rank + 2) ** 0.6``). Two influencers of the
same category therefore share a theme but differ in their sub-interests, so content matching inside
a category carries signal.

*Posts.* Each post shows 3-6 distinct concepts (uniform count) drawn without replacement from the
account's ``theta`` (Gumbel top-k). The ``concepts`` field is this ground truth (sorted in
vocabulary order).

*Captions.* Every concept has a small lexicon (:func:`concept_lexicon`): its name tokens
(``ready_to_eat`` -> ready, to, eat), its hashtag (``#readytoeat``) and two words of its group
(``yummy``, ``#foodie``). A caption mentions 1-4 of the post's concepts (not always all: the count
is uniform in 1..min(4, k)), each as its name phrase (60%) or a lexicon word, mixed with 2-6 filler
words ("love", "today", "so", ...), 0-3 hashtags (the concepts' own or generic ones such as
``#instagood``), sometimes a mention of another account (20%) and an emoji (30%). 15% of the posts
have an empty caption. Bios are one short sentence about the account's category and its top
concepts.

*Engagement.* Influencer followers are log-normal around 30k (sigma 0.8, clipped to [2k, 500k]:
mostly 10k-100k); brand followers log-normal around 300k (sigma 1.2, clipped to [20k, 5M]). Each
account has a mean engagement rate, log-normal around 3.5% for influencers and 1.5% for brands
(sigma 0.5, clipped to [0.2%, 30%]), slightly decreasing with the follower count (elasticity
-0.15), and a comment share (log-normal around 4% of the interactions). A post's interactions are
``followers * rate * LogNormal(0, 0.45)``, split into likes and Poisson comments (ints >= 0).

*Cooperations.* Brand ``b`` gets ``n_b = 2 + Poisson(mean - 2)`` positive influencers (mean per
preset, always >= 2). Each of them is, independently, from the brand's own category with
probability 0.85 and from the other categories otherwise (mostly within the category, not
exclusively); inside each pool they are sampled without replacement with probability proportional
to ``exp(affinity(b, m) / 0.1) * (E(m) / median E) ** 1.0 * (followers(m) / median) ** 0.2``, where
``affinity`` is the cosine between the brand's and the influencer's ``theta`` and ``E`` the
influencer's mean engagement rate: mostly content affinity (sub-interests decide inside a
category), partly engagement. With ground-truth concepts, ranking influencers by the cosine of the
accounts' concept histograms reaches MRR ~0.6 and R@10 ~0.25 on the paper preset (3,748
candidates), ranking by followers MRR ~0.02 (a learned model sees predicted concepts, so it is
below that oracle). Each cooperation names one post of the influencer (never one already
sponsored) as the sponsored post: its concepts are drawn from ``0.35 theta_m + 0.65 theta_b`` (the
post leans toward the brand) and its interactions are multiplied by an endorsement lift
``exp(0.3 + 1.0 (affinity - mean affinity) + 0.2 N(0, 1))`` (a good fit engages the audience more).
Sponsored captions carry no brand mention and no ``#ad`` (they would leak the label).

*Labeled posts.* The post-concept dataset (paper section IV-C) comes from independent, unwritten
accounts (balanced over the preset's categories, 25 posts per virtual account, flatter interests:
the within-group concentration is 10x larger) and is rendered exactly like the posts.

Determinism and safety
----------------------
Metadata comes from ``numpy.random.default_rng([seed, stream])``; each image chunk (the posts of
one account, or 200 labeled posts) is rendered with ``default_rng([seed, stream, chunk])``, so the
bytes do not depend on the number of worker processes. JSON lines use a fixed key order. The
dataset is written into ``DIR.tmp-XXXXXXXX`` next to ``DIR`` and renamed to ``DIR`` only when
complete, with a ``synthetic.json`` manifest (version, preset, seed, image size, counts) written
last; a killed run leaves only the ``.tmp-`` folder, which nothing trusts. Images are written as
they are rendered (nothing holds all images in memory).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "CATEGORIES",
    "GENERIC_GROUP",
    "CONCEPT_GROUPS",
    "FORMAT_VERSION",
    "MANIFEST",
    "Preset",
    "PRESETS",
    "get_preset",
    "vocabulary",
    "concept_group",
    "concept_lexicon",
    "concept_glyph",
    "render_image",
    "generate",
]

FORMAT_VERSION = 1
MANIFEST = "synthetic.json"
MIN_IMAGE_SIZE = 24   # the smallest image side the shapes are drawn at
_GENERATOR_VERSION = 2
"""2: post JPEGs keep full-resolution colour (4:4:4, quality 95); version 1 saved them with
Pillow's default 4:2:0 chroma subsampling, which smeared the 2-pixel colour cells of the
concept glyphs at 64 px: a concept generator trained on the (PNG) labeled posts then reached
micro-F1 0.19 on the posts against 0.85 on labeled images (small preset, seed 0)."""

CATEGORIES: tuple[str, ...] = (
    "Airline", "Auto", "Clothes", "Drink", "Electronics", "Entertainment",
    "Food", "Jewelry", "Makeup", "Nonprofit", "Shoes", "Services",
)
GENERIC_GROUP = "Generic"

# 30 concepts per category + 60 generic = 420 (paper section III-B). The first names of a group
# are the most frequent ones and the ones kept by the smaller presets.
CONCEPT_GROUPS: dict[str, tuple[str, ...]] = {
    "Airline": (
        "airplane", "airport", "runway", "cabin_interior", "window_seat", "flight_attendant",
        "boarding_pass", "cockpit", "jet_engine", "aerial_view", "clouds", "takeoff", "landing",
        "luggage", "passport", "lounge", "first_class", "in_flight_meal", "wing", "terminal",
        "departure_board", "pilot", "travel_destination", "tropical_beach", "city_skyline",
        "jet_lag", "sunset_flight", "vacation", "suitcase", "globe",
    ),
    "Auto": (
        "car", "motorcycle", "road", "sports_car", "suv", "steering_wheel", "dashboard", "wheel",
        "tire", "headlight", "engine", "garage", "highway", "road_trip", "race_track", "racing",
        "convertible", "vintage_car", "electric_car", "charging_station", "off_road", "truck",
        "car_interior", "parking_lot", "speedometer", "motorcycle_helmet", "drifting", "car_wash",
        "showroom", "driving",
    ),
    "Clothes": (
        "fashion", "clothes", "outfit", "dress", "jeans", "jacket", "street_style", "denim",
        "t_shirt", "coat", "scarf", "hat", "handbag", "sunglasses", "model", "runway_show",
        "fabric", "knitwear", "suit", "skirt", "hoodie", "shopping", "boutique", "mirror_selfie",
        "vintage_style", "minimalism", "pattern", "belt", "fitting_room", "wardrobe",
    ),
    "Drink": (
        "bar", "coffee", "cocktail", "wine", "beer", "glass", "bottle", "latte_art", "tea",
        "juice", "smoothie", "cafe", "barista", "whiskey", "champagne", "ice_cubes", "soda",
        "drinking", "toast", "happy_hour", "mug", "espresso", "wine_glass", "bartender",
        "brewery", "lemonade", "pouring", "straw", "vineyard", "energy_drink",
    ),
    "Electronics": (
        "smartphone", "laptop", "camera", "headphones", "computer", "screen", "keyboard",
        "tablet", "gadget", "technology", "video_game", "gaming_setup", "drone", "smartwatch",
        "speaker", "circuit_board", "workspace", "selfie_stick", "vr_headset", "charger",
        "television", "photography", "lens", "led_lights", "desk_setup", "console", "robot",
        "earbuds", "cable", "monitor",
    ),
    "Entertainment": (
        "concert", "music", "stage", "movie", "cinema", "festival", "dancing", "guitar",
        "microphone", "performance", "crowd", "theater", "dj", "singer", "band", "party",
        "spotlight", "audience", "piano", "drum", "popcorn", "red_carpet", "comedy", "ticket",
        "nightlife", "amusement_park", "fireworks", "costume", "karaoke", "game_show",
    ),
    "Food": (
        "food", "ready_to_eat", "snack", "vegetable", "dessert", "pizza", "burger", "salad",
        "fruit", "restaurant", "cooking", "kitchen", "breakfast", "sushi", "pasta", "cake",
        "chocolate", "bread", "meat", "seafood", "street_food", "plate", "dinner", "baking",
        "ice_cream", "healthy_eating", "chef", "brunch", "noodles", "spices",
    ),
    "Jewelry": (
        "luxury", "ring", "necklace", "wristwatch", "earrings", "bracelet", "diamond", "gold",
        "silver", "pearl", "gemstone", "engagement_ring", "jewelry_box", "pendant", "close_up",
        "elegance", "crystal", "hand", "gift_box", "chain", "brooch", "anklet", "watch_dial",
        "sparkle", "proposal", "bride", "velvet", "craftsmanship", "vintage_jewelry", "rose_gold",
    ),
    "Makeup": (
        "beauty", "makeup", "eyeshadow", "lipstick", "hairstyle", "skincare", "nail_art",
        "eyeliner", "foundation", "mascara", "makeup_brush", "cosmetics", "eyelashes", "lips",
        "blush", "perfume", "selfie", "glowing_skin", "face_mask", "highlighter", "eyebrows",
        "palette", "salon", "manicure", "hair_color", "curls", "spa", "bathroom_mirror",
        "tutorial", "natural_look",
    ),
    "Nonprofit": (
        "volunteer", "charity", "community", "donation", "children", "education", "environment",
        "recycling", "tree_planting", "animal_rescue", "protest", "fundraising", "school",
        "teamwork", "helping_hands", "wildlife", "ocean_cleanup", "homeless_shelter", "hospital",
        "awareness_ribbon", "classroom", "elderly_care", "refugee", "clean_water", "solar_panel",
        "garden", "banner", "march", "smiling_kids", "sports_for_kids",
    ),
    "Shoes": (
        "sneakers", "shoes", "running_shoes", "high_heels", "boots", "sandals", "footwear",
        "sneaker_collection", "shoelaces", "running", "basketball", "skateboarding", "shoe_box",
        "sole", "leather", "loafers", "hiking_boots", "feet", "socks", "jogging", "marathon",
        "track", "flip_flops", "ballet_flats", "street", "stairs", "shoe_store", "athletic_wear",
        "trail", "limited_edition",
    ),
    "Services": (
        "office", "business", "meeting", "laptop_work", "handshake", "bank", "insurance",
        "real_estate", "house", "delivery", "phone_call", "customer_service", "team",
        "coworking", "presentation", "contract", "finance", "logistics", "hotel", "cleaning",
        "repair", "tools", "construction", "consulting", "mobile_app", "credit_card", "startup",
        "conference", "moving_boxes", "signage",
    ),
    GENERIC_GROUP: (
        "portrait", "human_face", "nature_landscape", "sky", "travel", "home_interior",
        "high_angle_view", "architecture", "night", "sunlight", "celebration", "look_at_camera",
        "building_exterior", "sport", "wood", "city", "beach", "mountain", "flower", "dog", "cat",
        "friends", "family", "smiling", "sunset", "summer", "winter", "water",
        "street_photography", "black_and_white", "colorful", "couple", "fitness", "wedding",
        "camping", "fishing", "hiking", "park", "forest", "lake", "snow", "rain", "indoor",
        "outdoor", "morning", "window", "table", "sitting", "walking", "holding", "reading",
        "relaxing", "lifestyle", "vintage", "bright", "pastel_colors", "pet", "bicycle",
        "candid", "symmetry",
    ),
}

# Words of each group, used in concept lexicons and bios (words Word2Vec can embed).
_GROUP_WORDS: dict[str, tuple[str, ...]] = {
    "Airline": ("fly", "flight", "wanderlust", "#travelgram", "trip", "#aviation"),
    "Auto": ("drive", "ride", "#carsofinstagram", "speed", "horsepower", "#cargram"),
    "Clothes": ("style", "#ootd", "wear", "trendy", "#fashionista", "look"),
    "Drink": ("sip", "cheers", "#drinks", "refreshing", "thirsty", "#drinkup"),
    "Electronics": ("tech", "#techie", "device", "smart", "#gadgets", "upgrade"),
    "Entertainment": ("fun", "live", "show", "#musiclover", "vibes", "#weekendvibes"),
    "Food": ("yummy", "delicious", "tasty", "#foodie", "hungry", "#foodporn"),
    "Jewelry": ("shine", "#jewelry", "elegant", "precious", "handmade", "#bling"),
    "Makeup": ("glam", "#makeup", "#beauty", "glow", "#mua", "flawless"),
    "Nonprofit": ("help", "support", "give", "#charity", "change", "together"),
    "Shoes": ("step", "#kicks", "comfy", "#sneakerhead", "walk", "pair"),
    "Services": ("work", "#business", "professional", "client", "service", "#smallbusiness"),
    GENERIC_GROUP: ("moment", "life", "day", "beautiful", "view", "#photooftheday"),
}

_BRAND_TAGLINES: dict[str, str] = {
    "Airline": "Flying you to the places you love.",
    "Auto": "Cars built for the joy of driving.",
    "Clothes": "Fashion and clothes for every day.",
    "Drink": "Drinks worth raising a glass to.",
    "Electronics": "Smart technology for your life.",
    "Entertainment": "Music, shows and fun for everyone.",
    "Food": "Delicious food made fresh every day.",
    "Jewelry": "Timeless jewelry and luxury pieces.",
    "Makeup": "Beauty and makeup for every face.",
    "Nonprofit": "Together we help our community.",
    "Shoes": "Shoes made for every step.",
    "Services": "Professional services for your business.",
}

_FILLER = (
    "love", "today", "so", "the", "a", "my", "this", "is", "with", "and", "just", "new", "best",
    "time", "happy", "feeling", "enjoying", "what", "great", "always", "here", "got", "loving",
    "weekend", "again", "finally", "amazing", "little", "our", "all", "good", "more", "perfect",
)
_GENERIC_HASHTAGS = (
    "#instagood", "#photooftheday", "#love", "#instadaily", "#picoftheday", "#happy", "#nofilter",
)
_EMOJIS = ("\U0001F60D", "\U0001F525", "\u2728", "\u2764\ufe0f", "\U0001F60A", "\U0001F64C")

# Model constants (documented in the module docstring).
EMPTY_CAPTION_PROB = 0.15
AFFINITY_TEMPERATURE = 0.1
WITHIN_CATEGORY_SHARE = 0.85
ENGAGEMENT_ALPHA = 1.0
FOLLOWERS_BETA = 0.2
SPONSORED_BRAND_SHARE = 0.65
_GLYPH_CELLS = 8
_GRID = 3
_NOISE_SIGMA = 7.0
_LABELED_CHUNK = 200
_LABELED_PER_VIRTUAL_ACCOUNT = 25
_POSTS_STREAM, _LABELED_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class Preset:
    """Counts of a synthetic dataset.

    Attributes:
      name: preset name (recorded in the manifest).
      categories: brand categories used (a subset of :data:`CATEGORIES`, in that order).
      brands_per_category: brands per category (the paper: 30, equally divided).
      influencers: number of micro-influencers (balanced over the categories).
      posts_per_account: posts of every brand and influencer.
      labeled_posts: size of the post-concept (labeled) dataset.
      concepts_per_category: concepts kept per category (the first ones of each group).
      generic_concepts: generic concepts kept (the first ones of the generic group).
      positives_per_brand: mean number of cooperating influencers per brand (each brand >= 2).
      min_concepts_per_post, max_concepts_per_post: concepts shown in one image (uniform count).
    """

    name: str
    categories: tuple[str, ...]
    brands_per_category: int
    influencers: int
    posts_per_account: int
    labeled_posts: int
    concepts_per_category: int
    generic_concepts: int
    positives_per_brand: float
    min_concepts_per_post: int = 3
    max_concepts_per_post: int = 6

    @property
    def num_brands(self) -> int:
        """Number of brands."""
        return self.brands_per_category * len(self.categories)

    @property
    def num_accounts(self) -> int:
        """Brands plus influencers."""
        return self.num_brands + self.influencers

    @property
    def num_posts(self) -> int:
        """Posts of all accounts (excluding labeled posts)."""
        return self.num_accounts * self.posts_per_account

    @property
    def num_concepts(self) -> int:
        """Vocabulary size."""
        return self.concepts_per_category * len(self.categories) + self.generic_concepts

    @property
    def num_images(self) -> int:
        """Images written: posts plus labeled posts."""
        return self.num_posts + self.labeled_posts

    def check(self) -> None:
        """Raises ValueError when the counts are inconsistent."""
        if not self.categories or any(c not in CATEGORIES for c in self.categories):
            raise ValueError(f"preset {self.name!r}: categories must be a non-empty subset of {CATEGORIES}")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"preset {self.name!r}: duplicate categories")
        if not 1 <= self.concepts_per_category <= 30 or not 0 <= self.generic_concepts <= 60:
            raise ValueError(f"preset {self.name!r}: at most 30 concepts per category and 60 generic")
        if self.brands_per_category < 1 or self.influencers < 2 or self.posts_per_account < 1:
            raise ValueError(f"preset {self.name!r}: needs brands, >= 2 influencers and posts")
        if self.labeled_posts < 1:
            raise ValueError(f"preset {self.name!r}: needs labeled posts")
        if not 1 <= self.min_concepts_per_post <= self.max_concepts_per_post <= _GRID * _GRID:
            raise ValueError(f"preset {self.name!r}: concepts per post must be in 1..{_GRID * _GRID}")
        if self.max_concepts_per_post > self.concepts_per_category + self.generic_concepts:
            raise ValueError(f"preset {self.name!r}: too few concepts for {self.max_concepts_per_post} per post")
        if self.positives_per_brand < 2:
            raise ValueError(f"preset {self.name!r}: positives_per_brand must be >= 2")


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", categories=("Auto", "Clothes", "Food", "Makeup"), brands_per_category=8,
        influencers=120, posts_per_account=10, labeled_posts=800, concepts_per_category=7,
        generic_concepts=12, positives_per_brand=5.0,
    ),
    "small": Preset(
        name="small", categories=CATEGORIES, brands_per_category=10, influencers=600,
        posts_per_account=20, labeled_posts=4000, concepts_per_category=8, generic_concepts=24,
        positives_per_brand=8.0,
    ),
    "paper": Preset(
        name="paper", categories=CATEGORIES, brands_per_category=30, influencers=3748,
        posts_per_account=50, labeled_posts=40000, concepts_per_category=30, generic_concepts=60,
        positives_per_brand=11.0,
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """Returns ``PRESETS[preset]`` (or ``preset`` itself), checked; ValueError when unknown."""
    if isinstance(preset, Preset):
        p = preset
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        p = PRESETS[preset]
    p.check()
    return p


def _groups_of(preset: Preset) -> dict[str, tuple[str, ...]]:
    groups = {c: CONCEPT_GROUPS[c][: preset.concepts_per_category] for c in preset.categories}
    groups[GENERIC_GROUP] = CONCEPT_GROUPS[GENERIC_GROUP][: preset.generic_concepts]
    return groups


def vocabulary(preset: str | Preset = "paper") -> tuple[str, ...]:
    """The preset's concept names: its categories' concepts in category order, then the generic ones."""
    return tuple(name for names in _groups_of(get_preset(preset)).values() for name in names)


_GROUP_OF: dict[str, str] = {n: g for g, names in CONCEPT_GROUPS.items() for n in names}
assert len(_GROUP_OF) == 420 == sum(len(v) for v in CONCEPT_GROUPS.values()), "duplicate concept"
assert all(len(CONCEPT_GROUPS[c]) == 30 for c in CATEGORIES)


def concept_group(name: str) -> str:
    """The group of a concept: one of :data:`CATEGORIES` or :data:`GENERIC_GROUP`; KeyError if unknown."""
    return _GROUP_OF[name]


def _name_seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def concept_lexicon(vocabulary: Sequence[str]) -> dict[str, list[str]]:
    """Caption words of every concept: name tokens, its hashtag and two words of its group.

    ``"ready_to_eat" -> ["ready", "to", "eat", "#readytoeat", <2 Food words, e.g. "yummy", "#foodie">]``.
    Names outside the built-in vocabulary get the generic group's words. Deterministic.
    """
    out: dict[str, list[str]] = {}
    for name in vocabulary:
        tokens = [t for t in name.split("_") if t]
        words = _GROUP_WORDS[_GROUP_OF.get(name, GENERIC_GROUP)]
        h = _name_seed(name)
        i, j = h % len(words), (h // len(words)) % (len(words) - 1)
        j = j if j < i else j + 1
        out[name] = tokens + ["#" + "".join(tokens)] + [words[i], words[j]]
    return out


# ---------------------------------------------------------------------------------------------
# Rendering.


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, np.float32) * 255.0


def _glyph_cells(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(8x8 bool pattern with 32 set cells, foreground RGB, background RGB) of a concept."""
    rng = np.random.default_rng([_name_seed(name), 7])
    order = rng.permutation(_GLYPH_CELLS * _GLYPH_CELLS)
    pattern = np.zeros(_GLYPH_CELLS * _GLYPH_CELLS, bool)
    pattern[order[: _GLYPH_CELLS * _GLYPH_CELLS // 2]] = True
    hue = float(rng.random())
    fg = _hsv_to_rgb(hue, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.8, 1.0)))
    bg = _hsv_to_rgb((hue + float(rng.uniform(0.3, 0.7))) % 1.0, float(rng.uniform(0.4, 0.9)),
                     float(rng.uniform(0.1, 0.35)))
    return pattern.reshape(_GLYPH_CELLS, _GLYPH_CELLS), fg, bg


def concept_glyph(name: str, size: int) -> np.ndarray:
    """The concept's tile at ``size x size`` pixels: float32 [size, size, 3] in [0, 255]."""
    pattern, fg, bg = _glyph_cells(name)
    idx = np.arange(size) * _GLYPH_CELLS // size
    cells = pattern[idx][:, idx]
    return np.where(cells[..., None], fg, bg).astype(np.float32)


def _category_tint(category: str) -> np.ndarray:
    k = CATEGORIES.index(category) if category in CATEGORIES else 0
    return _hsv_to_rgb(k / len(CATEGORIES), 0.3, 0.6)


class _Renderer:
    """Precomputed tiles for one vocabulary and image size; renders images with numpy."""

    def __init__(self, vocab: Sequence[str], image_size: int):
        self.size = image_size
        self.base = max(4, image_size // 4)
        self.cell = image_size // _GRID
        self.sizes = list(range(max(2, round(0.8 * self.base)), round(1.2 * self.base) + 1))
        # tiles[c][s - sizes[0]]: a few KB per concept and size (~2 MB for 420 concepts at 64 px).
        self.tiles = [[concept_glyph(n, s) for s in self.sizes] for n in vocab]
        self.tints = {c: _category_tint(c) for c in CATEGORIES}
        ramp = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
        self.ramp_y, self.ramp_x = ramp[:, None, None], ramp[None, :, None]

    def render(self, concepts: Sequence[int], category: str, rng: np.random.Generator) -> np.ndarray:
        s = self.size
        gx, gy = rng.uniform(-20.0, 20.0, size=2).astype(np.float32)
        img = self.tints[category] + gx * self.ramp_x + gy * self.ramp_y
        img = np.broadcast_to(img, (s, s, 3)).copy()
        cells = rng.permutation(_GRID * _GRID)[: len(concepts)]
        scales = rng.uniform(0.8, 1.2, size=len(concepts))
        jitter = rng.random(size=(len(concepts), 2))
        for c, cell, scale, (jy, jx) in zip(concepts, cells, scales, jitter):
            t = min(max(round(scale * self.base), self.sizes[0]), self.sizes[-1])
            tile = self.tiles[c][t - self.sizes[0]]
            t = min(t, s)
            y0 = (cell // _GRID) * self.cell + int(jy * max(self.cell - t, 0) + 0.5)
            x0 = (cell % _GRID) * self.cell + int(jx * max(self.cell - t, 0) + 0.5)
            y0, x0 = min(y0, s - t), min(x0, s - t)
            img[y0:y0 + t, x0:x0 + t] = tile[:t, :t]
        img += rng.standard_normal((s, s, 3), dtype=np.float32) * _NOISE_SIGMA
        return np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)


def render_image(concepts: Sequence[str], category: str, *, image_size: int = 64,
                 seed: int = 0) -> np.ndarray:
    """Renders one image showing ``concepts`` (names) on a ``category`` background: uint8 [S, S, 3].

    Convenience for tests and figures; :func:`generate` uses the same renderer.
    """
    names = list(dict.fromkeys(concepts))
    if len(names) > _GRID * _GRID:
        raise ValueError(f"at most {_GRID * _GRID} concepts per image")
    r = _Renderer(names, image_size)
    return r.render(list(range(len(names))), category, np.random.default_rng(seed))


# Worker state (one renderer per process).
_WORKER: dict[str, Any] = {}


def _init_worker(vocab: tuple[str, ...], image_size: int, root: str, seed: int) -> None:
    _WORKER["renderer"] = _Renderer(vocab, image_size)
    _WORKER["root"] = root
    _WORKER["seed"] = seed


def _render_job(job: tuple[int, int, list[str], list[tuple[int, ...]], list[str], str]) -> int:
    """Renders and writes one chunk of images; returns the number written."""
    stream, chunk, paths, concepts, categories, fmt = job
    renderer: _Renderer = _WORKER["renderer"]
    root = _WORKER["root"]
    rng = np.random.default_rng([_WORKER["seed"], stream, chunk])
    made: set[str] = set()
    for rel, cs, cat in zip(paths, concepts, categories):
        path = os.path.join(root, rel)
        d = os.path.dirname(path)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        img = Image.fromarray(renderer.render(cs, cat, rng))
        if fmt == "JPEG":
            img.save(path, format="JPEG", quality=95, subsampling=0)
        else:
            img.save(path, format="PNG", compress_level=6)
    return len(paths)


# ---------------------------------------------------------------------------------------------
# Metadata.


@dataclasses.dataclass
class _Accounts:
    ids: list[str]
    kinds: list[str]
    categories: list[str]
    theta: np.ndarray          # [A, V] float64, rows sum to 1
    followers: np.ndarray      # [A] int64
    rate: np.ndarray           # [A] mean engagement rate
    comment_share: np.ndarray  # [A]


def _group_slices(groups: Mapping[str, Sequence[str]]) -> dict[str, slice]:
    out, start = {}, 0
    for g, names in groups.items():
        out[g] = slice(start, start + len(names))
        start += len(names)
    return out


def _interest(rng: np.random.Generator, category: str, slices: Mapping[str, slice], vsize: int,
              mix_alpha: Sequence[float], concentration: float) -> np.ndarray:
    """One account's concept distribution theta (see the module docstring)."""
    others = [c for c in slices if c not in (category, GENERIC_GROUP)]
    picked = []
    if others:
        n_other = 1 + int(rng.random() < 0.5) if len(others) > 1 else 1
        picked = [others[i] for i in rng.choice(len(others), size=n_other, replace=False)]
    has_generic = slices[GENERIC_GROUP].stop > slices[GENERIC_GROUP].start
    alpha = np.asarray([mix_alpha[0], mix_alpha[1] if has_generic else 0.0,
                        mix_alpha[2] if picked else 0.0])
    mix = np.zeros(3)
    live = alpha > 0
    mix[live] = rng.dirichlet(alpha[live])
    theta = np.zeros(vsize)
    parts = [([category], mix[0]), ([GENERIC_GROUP], mix[1])]
    parts += [([c], mix[2] / len(picked)) for c in picked]
    for (g,), w in parts:
        sl = slices[g]
        n = sl.stop - sl.start
        if n == 0 or w == 0.0:
            continue
        prior = 1.0 / (np.arange(n) + 2.0) ** 0.6
        prior /= prior.sum()
        a = np.maximum(concentration * n * prior, 1e-3)
        theta[sl] += w * rng.dirichlet(a)
    return theta / theta.sum()


def _make_accounts(rng: np.random.Generator, preset: Preset, slices: Mapping[str, slice],
                   vsize: int) -> _Accounts:
    ids, kinds, cats = [], [], []
    for c in preset.categories:
        for k in range(preset.brands_per_category):
            ids.append(f"brand_{c.lower()}_{k:02d}")
            kinds.append("brand")
            cats.append(c)
    n_cat = len(preset.categories)
    inf_cats = rng.permutation(np.arange(preset.influencers) % n_cat)
    width = max(4, len(str(preset.influencers - 1)))
    for j in range(preset.influencers):
        ids.append(f"influencer_{j:0{width}d}")
        kinds.append("influencer")
        cats.append(preset.categories[int(inf_cats[j])])
    theta = np.stack([
        _interest(rng, cat, slices, vsize,
                  (35.0, 12.5, 2.5) if kind == "brand" else (30.0, 15.0, 5.0), 0.3)
        for kind, cat in zip(kinds, cats)
    ])
    is_brand = np.asarray([k == "brand" for k in kinds])
    a = len(ids)
    followers = np.where(
        is_brand,
        np.clip(np.exp(rng.normal(math.log(300_000), 1.2, a)), 20_000, 5_000_000),
        np.clip(np.exp(rng.normal(math.log(30_000), 0.8, a)), 2_000, 500_000),
    ).round().astype(np.int64)
    ref = np.where(is_brand, 300_000.0, 30_000.0)
    rate = np.where(is_brand, 0.015, 0.035) * np.exp(rng.normal(0.0, 0.5, a))
    rate = np.clip(rate * (followers / ref) ** -0.15, 0.002, 0.3)
    comment_share = np.clip(0.04 * np.exp(rng.normal(0.0, 0.4, a)), 0.005, 0.3)
    return _Accounts(ids, kinds, cats, theta, followers, rate, comment_share)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gumbel_topk(rng: np.random.Generator, theta: np.ndarray, ks: np.ndarray) -> list[tuple[int, ...]]:
    """Rows of ``ks[i]`` distinct concepts drawn without replacement from ``theta`` (sorted)."""
    logits = np.log(theta + 1e-30)[None, :] + rng.gumbel(size=(len(ks), theta.shape[-1]))
    order = np.argsort(-logits, axis=1, kind="stable")
    return [tuple(sorted(int(c) for c in order[i, : ks[i]])) for i in range(len(ks))]


@dataclasses.dataclass
class _Cooperations:
    brand: list[int]       # account rows
    influencer: list[int]  # account rows
    post: list[int]        # post index within the influencer
    affinity: list[float]


def _make_cooperations(rng: np.random.Generator, preset: Preset, acc: _Accounts) -> _Cooperations:
    nb = preset.num_brands
    th_b, th_m = _unit(acc.theta[:nb]), _unit(acc.theta[nb:])
    affinity = th_b @ th_m.T  # [B, M]
    eng = acc.rate[nb:]
    fol = acc.followers[nb:].astype(np.float64)
    prior = (ENGAGEMENT_ALPHA * np.log(eng / np.median(eng))
             + FOLLOWERS_BETA * np.log(fol / np.median(fol)))
    cats = np.asarray(acc.categories)
    same = cats[None, :nb].T == cats[None, nb:]  # [B, M]
    free = [list(range(preset.posts_per_account)) for _ in range(preset.influencers)]
    out = _Cooperations([], [], [], [])
    for b in range(nb):
        n = 2 + int(rng.poisson(preset.positives_per_brand - 2.0))
        n_cross = int(rng.binomial(n, 1.0 - WITHIN_CATEGORY_SHARE))
        logw = affinity[b] / AFFINITY_TEMPERATURE + prior
        avail = np.asarray([len(f) > 0 for f in free])
        keys = logw + rng.gumbel(size=logw.shape)
        chosen: list[int] = []
        for pool, k in ((avail & same[b], n - n_cross), (avail & ~same[b], n_cross)):
            if k <= 0 or not pool.any():
                continue
            order = np.argsort(-np.where(pool, keys, -np.inf), kind="stable")
            chosen += [int(m) for m in order[: min(k, int(pool.sum()))]]
        for m in sorted(chosen):
            post = free[m].pop(int(rng.integers(len(free[m]))))
            out.brand.append(b)
            out.influencer.append(nb + m)
            out.post.append(post)
            out.affinity.append(float(affinity[b, m]))
    return out


@dataclasses.dataclass
class _Posts:
    concepts: list[list[tuple[int, ...]]]  # per account, per post
    likes: np.ndarray     # [A, P]
    comments: np.ndarray  # [A, P]


def _make_posts(rng: np.random.Generator, preset: Preset, acc: _Accounts,
                coop: _Cooperations) -> _Posts:
    a, p = len(acc.ids), preset.posts_per_account
    lo, hi = preset.min_concepts_per_post, preset.max_concepts_per_post
    sponsored: dict[tuple[int, int], int] = {
        (m, post): b for b, m, post in zip(coop.brand, coop.influencer, coop.post)}
    concepts = []
    for i in range(a):
        ks = rng.integers(lo, hi + 1, size=p)
        rows = _gumbel_topk(rng, acc.theta[i], ks)
        for j in range(p):
            b = sponsored.get((i, j))
            if b is not None:
                mix = (1.0 - SPONSORED_BRAND_SHARE) * acc.theta[i] + SPONSORED_BRAND_SHARE * acc.theta[b]
                rows[j] = _gumbel_topk(rng, mix, ks[j:j + 1])[0]
        concepts.append(rows)
    interactions = (acc.followers[:, None] * acc.rate[:, None]
                    * np.exp(rng.normal(0.0, 0.45, size=(a, p))))
    if coop.brand:
        aff = np.asarray(coop.affinity)
        lift = np.exp(0.3 + 1.0 * (aff - aff.mean()) + 0.2 * rng.standard_normal(len(aff)))
        interactions[np.asarray(coop.influencer), np.asarray(coop.post)] *= lift
    share = acc.comment_share[:, None]
    likes = np.round(interactions / (1.0 + share)).astype(np.int64)
    comments = rng.poisson(likes * share).astype(np.int64)
    return _Posts(concepts, np.maximum(likes, 0), np.maximum(comments, 0))


def _make_labeled(rng: np.random.Generator, preset: Preset, slices: Mapping[str, slice],
                  vsize: int) -> tuple[list[tuple[int, ...]], list[str]]:
    n = preset.labeled_posts
    n_acc = -(-n // _LABELED_PER_VIRTUAL_ACCOUNT)
    cats = [preset.categories[i % len(preset.categories)] for i in range(n_acc)]
    concepts: list[tuple[int, ...]] = []
    categories: list[str] = []
    for i, cat in enumerate(cats):
        m = min(_LABELED_PER_VIRTUAL_ACCOUNT, n - i * _LABELED_PER_VIRTUAL_ACCOUNT)
        theta = _interest(rng, cat, slices, vsize, (30.0, 15.0, 5.0), 3.0)
        ks = rng.integers(preset.min_concepts_per_post, preset.max_concepts_per_post + 1, size=m)
        concepts += _gumbel_topk(rng, theta, ks)
        categories += [cat] * m
    return concepts, categories


# ---------------------------------------------------------------------------------------------
# Text.


class _CaptionWriter:
    def __init__(self, vocab: Sequence[str], mention_pool: Sequence[str]):
        lex = concept_lexicon(vocab)
        self.phrases = [" ".join(t for t in n.split("_") if t) for n in vocab]
        self.words = [[w for w in lex[n] if not w.startswith("#")] for n in vocab]
        self.tags = [[w for w in lex[n] if w.startswith("#")] for n in vocab]
        self.mentions = list(mention_pool)

    def caption(self, rng: np.random.Generator, concepts: Sequence[int]) -> str:
        if rng.random() < EMPTY_CAPTION_PROB:
            return ""
        k = len(concepts)
        m = int(rng.integers(1, min(4, k) + 1))
        chosen = [concepts[int(i)] for i in rng.permutation(k)[:m]]
        parts = [_FILLER[int(i)] for i in rng.integers(0, len(_FILLER), size=int(rng.integers(1, 4)))]
        for c in chosen:
            if rng.random() < 0.6:
                parts.append(self.phrases[c])
            else:
                ws = self.words[c]
                parts.append(ws[int(rng.integers(len(ws)))])
            if rng.random() < 0.5:
                parts.append(_FILLER[int(rng.integers(len(_FILLER)))])
        if rng.random() < 0.3:
            parts.append(_EMOJIS[int(rng.integers(len(_EMOJIS)))])
        for _ in range(int(rng.integers(0, 4))):
            if rng.random() < 0.6:
                c = chosen[int(rng.integers(len(chosen)))]
                tags = self.tags[c]
                parts.append(tags[int(rng.integers(len(tags)))])
            else:
                parts.append(_GENERIC_HASHTAGS[int(rng.integers(len(_GENERIC_HASHTAGS)))])
        if self.mentions and rng.random() < 0.2:
            parts.append("@" + self.mentions[int(rng.integers(len(self.mentions)))])
        text = " ".join(parts)
        return text[:1].upper() + text[1:]


def _bio(kind: str, category: str, theta: np.ndarray, vocab: Sequence[str]) -> str:
    top = [vocab[int(i)].replace("_", " ") for i in np.argsort(-theta, kind="stable")[:3]]
    if kind == "brand":
        return f"Official {category.lower()} brand. {_BRAND_TAGLINES[category]} Think {top[0]} and {top[1]}."
    return (f"{category} creator sharing {top[0]}, {top[1]} and {top[2]}. "
            f"{_GROUP_WORDS[category][0].lstrip('#').capitalize()} with me! DM for collabs.")


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"


# ---------------------------------------------------------------------------------------------
# Generation.


def _manifest(preset: Preset, seed: int, image_size: int) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "generator": "camera_jax.data.synthetic",
        "generator_version": _GENERATOR_VERSION,
        "preset": preset.name,
        "seed": int(seed),
        "image_size": int(image_size),
        "counts": dataclasses.asdict(preset),
    }


def _read_manifest(out: pathlib.Path) -> dict[str, Any] | None:
    try:
        with open(out / MANIFEST, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _matching_dataset(out: pathlib.Path, expected: dict[str, Any]) -> bool:
    found = _read_manifest(out)
    if found is None:
        return False
    # Tuples became lists in the JSON; compare through a JSON round trip.
    return found == json.loads(json.dumps(expected))


def _auto_workers(preset: Preset) -> int:
    if preset.num_images < 20_000:
        return 1
    return max(1, min(2, os.cpu_count() or 1))


def _jobs(preset: Preset, acc: _Accounts, posts: _Posts, labeled: list[tuple[int, ...]],
          labeled_cats: list[str]) -> Iterator[tuple[int, int, list[str], list[tuple[int, ...]], list[str], str]]:
    for i, account in enumerate(acc.ids):
        paths = [_post_image(account, j) for j in range(preset.posts_per_account)]
        yield (_POSTS_STREAM, i, paths, posts.concepts[i], [acc.categories[i]] * len(paths), "JPEG")
    for chunk, start in enumerate(range(0, len(labeled), _LABELED_CHUNK)):
        stop = min(start + _LABELED_CHUNK, len(labeled))
        paths = [_labeled_image(k) for k in range(start, stop)]
        yield (_LABELED_STREAM, chunk, paths, labeled[start:stop], labeled_cats[start:stop], "PNG")


def _post_image(account: str, j: int) -> str:
    return f"images/posts/{account}/{j:02d}.jpg"


def _labeled_image(k: int) -> str:
    return f"images/labeled/{k // 1000:03d}/{k:05d}.png"


def _write_dataset(tmp: pathlib.Path, preset: Preset, seed: int, image_size: int, workers: int) -> None:
    groups = _groups_of(preset)
    vocab = tuple(n for names in groups.values() for n in names)
    slices = _group_slices(groups)
    v = len(vocab)

    rng = np.random.default_rng([seed, 0])
    acc = _make_accounts(rng, preset, slices, v)
    coop = _make_cooperations(rng, preset, acc)
    posts = _make_posts(rng, preset, acc, coop)
    labeled, labeled_cats = _make_labeled(np.random.default_rng([seed, 3]), preset, slices, v)

    # Images first (the bulk of the work), streamed to disk chunk by chunk.
    jobs = _jobs(preset, acc, posts, labeled, labeled_cats)
    init = (vocab, image_size, str(tmp), int(seed))
    if workers <= 1:
        saved = dict(_WORKER)
        try:
            _init_worker(*init)
            for job in jobs:
                _render_job(job)
        finally:
            _WORKER.clear()
            _WORKER.update(saved)
    else:
        # Refer to the importable module, not ``__main__``, so spawned workers unpickle cheaply.
        mod = importlib.import_module(__spec__.name if __spec__ else __name__)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=mod._init_worker, initargs=init) as pool:
            for _ in pool.imap_unordered(mod._render_job, jobs, chunksize=4):
                pass

    # Text files.
    with open(tmp / "concepts.txt", "w", encoding="utf-8") as f:
        f.write("".join(n + "\n" for n in vocab))
    with open(tmp / "accounts.jsonl", "w", encoding="utf-8") as f:
        for i, account in enumerate(acc.ids):
            f.write(_dumps({
                "id": account, "kind": acc.kinds[i], "category": acc.categories[i],
                "followers": int(acc.followers[i]),
                "bio": _bio(acc.kinds[i], acc.categories[i], acc.theta[i], vocab),
            }))
    nb = preset.num_brands
    writer = _CaptionWriter(vocab, acc.ids[nb:])
    text_rng = np.random.default_rng([seed, 4])
    with open(tmp / "posts.jsonl", "w", encoding="utf-8") as f:
        for i, account in enumerate(acc.ids):
            for j in range(preset.posts_per_account):
                cs = posts.concepts[i][j]
                f.write(_dumps({
                    "id": f"{account}_p{j:02d}", "account": account,
                    "image": _post_image(account, j), "caption": writer.caption(text_rng, cs),
                    "likes": int(posts.likes[i, j]), "comments": int(posts.comments[i, j]),
                    "concepts": [vocab[c] for c in cs],
                }))
    with open(tmp / "cooperations.jsonl", "w", encoding="utf-8") as f:
        for b, m, post in zip(coop.brand, coop.influencer, coop.post):
            f.write(_dumps({"brand": acc.ids[b], "influencer": acc.ids[m],
                            "post": f"{acc.ids[m]}_p{post:02d}"}))
    label_writer = _CaptionWriter(vocab, ())
    label_rng = np.random.default_rng([seed, 5])
    with open(tmp / "labeled_posts.jsonl", "w", encoding="utf-8") as f:
        for k, cs in enumerate(labeled):
            f.write(_dumps({
                "id": f"labeled_{k:05d}", "image": _labeled_image(k),
                "caption": label_writer.caption(label_rng, cs), "concepts": [vocab[c] for c in cs],
            }))


def generate(out_dir: str | os.PathLike[str], preset: str | Preset = "tiny", seed: int = 0,
             image_size: int = 64, *, workers: int | None = None) -> pathlib.Path:
    """Writes a synthetic format-v1 dataset to ``out_dir`` and returns its path.

    Args:
      out_dir: target directory. It must not exist, be empty, or hold a dataset previously
        completed by this function with the same preset, seed and image size (returned as is).
      preset: a name in :data:`PRESETS` or a :class:`Preset`.
      seed: seed of every random choice; the same arguments give the same bytes.
      image_size: image side in pixels (>= MIN_IMAGE_SIZE, 24).
      workers: rendering processes; ``None`` picks 1 for small jobs and up to 2 otherwise. The
        output does not depend on it.

    Raises:
      FileExistsError: ``out_dir`` exists and is neither empty nor the same dataset.
      ValueError: bad preset, seed or image size.
    """
    p = get_preset(preset)
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = pathlib.Path(out_dir)
    expected = _manifest(p, seed, image_size)

    def refuse() -> FileExistsError:
        found = _read_manifest(out)
        if found is not None and found.get("generator_version") != _GENERATOR_VERSION:
            return FileExistsError(
                f"{out} holds a dataset of synthetic generator version "
                f"{found.get('generator_version')}, this is version {_GENERATOR_VERSION}; "
                "remove it (or the work directory) to regenerate it")
        return FileExistsError(
            f"{out} exists and is not empty (and is not a completed synthetic dataset with "
            f"preset={p.name}, seed={seed}, image_size={image_size}); remove it or choose another "
            "output directory")

    if out.exists():
        if _matching_dataset(out, expected):
            return out
        if not out.is_dir() or any(out.iterdir()):
            raise refuse()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        _write_dataset(tmp, p, int(seed), int(image_size),
                       _auto_workers(p) if workers is None else int(workers))
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(expected, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, out)  # atomic; replaces an empty directory
        except OSError:
            if _matching_dataset(out, expected):  # a concurrent run finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise refuse() from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


if __name__ == "__main__":   # the command moved: never a silent exit 0 for the old one
    import sys

    print("camera_jax.data.synthetic is no longer a command: run "
          "python experiments/synthetic.py --out=DIR", file=sys.stderr)
    sys.exit(2)
