"""``classic/stain-texture``: a weights-free colour + texture descriptor in pure numpy.

Every block is a histogram (or a few summary statistics) of one image, so the vector of
an image never depends on the rest of its batch. Histograms are integer counts, turned into
Hellinger form (square root of the L1-normalised histogram); every block is L2-normalised,
weighted and concatenated (the base class L2-normalises the result). Cosine similarity is
then a weighted mean of per-block Bhattacharyya coefficients (plain cosine for ``moments``).

Colour (from every other pixel, 112 x 112 samples, quantised to 5 bits per channel and mapped
through lookup tables computed once at import):
  * ``stain``       H and E optical-density histograms (16 + 16 bins) after colour
                    deconvolution with skimage's fixed H&E-DAB matrix (OD = -ln((I + 1) / 256)).
  * ``he_joint``    joint H x E histogram (8 x 8).
  * ``moments``     mean, std, 10/50/90 % quantiles of H, E, DAB/residual and total OD (20).
  * ``lab_centre``  CIE-Lab histogram (4 x 6 x 6) of the central quarter (lesion in a photo).
  * ``lab_surround`` coarser Lab histogram (4 x 3 x 3) of the rest (skin around it).
Texture (green channel, the one with most H&E contrast; scales 224, 112, 56 px by 2 x 2 sums):
  * ``lbp*``        rotation-invariant uniform LBP(8) codes joint with "centre darker than the
                    image mean" (CLBP_S/C, 20 bins) at radius 1 and 2 (224 px) and radius 1
                    (112 and 56 px); magnitude LBP (CLBP_M, 10 bins) at 112 and 56 px.
  * ``grad*``       log-binned gradient-energy histograms (10 bins) at 112 and 56 px.
"""

from __future__ import annotations

import numpy as np

from lamina.encoders.base import Encoder
from lamina.encoders.config import EncoderConfig
from lamina.encoders.errors import EncoderError
from lamina.encoders.registry import register_encoder

# skimage.color.rgb_from_hed (Ruifrok & Johnston H, E and DAB optical-density vectors).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
FINE = 32  # fine bins per stain value; coarser histograms are sums of these
RANGES = ((-0.25, 3.0), (-0.25, 2.0), (-0.75, 1.75), (0.0, 6.0))  # H, E, DAB, total OD
LAB_BINS = ((0.0, 100.0, 4), (-20.0, 60.0, 6), (-30.0, 50.0, 6))  # L, a, b: lo, hi, bins
CHUNK = 32  # images processed together (bounds memory; results do not depend on it)
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))

# (block name, dims, weight); colour weights are lower so stain intensity, which varies between
# labs and cases more than between tissue types, does not swamp the texture.
BLOCKS: tuple[tuple[str, int, float], ...] = (
    ("stain", 32, 0.25),
    ("he_joint", 64, 0.15),
    ("moments", 20, 0.25),
    ("lab_centre", 144, 0.25),
    ("lab_surround", 36, 0.15),
    ("lbp224", 20, 1 / 3),
    ("lbp224r2", 20, 1 / 3),
    ("lbp112", 20, 1 / 3),
    ("lbp56", 20, 1 / 3),
    ("lbpm112", 10, 1 / 3),
    ("lbpm56", 10, 1 / 3),
    ("grad112", 10, 1 / 3),
    ("grad56", 10, 1 / 3),
)
EMBED_DIM = sum(d for _, d, _ in BLOCKS)


def _bin(v: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    return np.clip(np.floor((v - lo) / (hi - lo) * n), 0, n - 1).astype(np.intp)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIE Lab (D65), the same formulas as skimage.color.rgb2lab."""
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (
        lin
        @ np.array(
            [
                [0.412453, 0.357580, 0.180423],
                [0.212671, 0.715160, 0.072169],
                [0.019334, 0.119193, 0.950227],
            ]
        ).T
        / np.array([0.95047, 1.0, 1.08883])
    )
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack(
        [
            116.0 * f[..., 1] - 16.0,
            500.0 * (f[..., 0] - f[..., 1]),
            200.0 * (f[..., 1] - f[..., 2]),
        ],
        axis=-1,
    )


def _colour_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables from a 15-bit colour (5 bits per channel) to fine histogram bins."""
    level = np.arange(32) * 8 + 3.5  # centre of each 5-bit level
    rgb = np.stack(np.meshgrid(level, level, level, indexing="ij"), -1).reshape(-1, 3)
    od = -np.log((rgb + 1.0) / 256.0)
    values = np.column_stack([od @ HED_FROM_RGB, od.sum(1)])
    fine = [_bin(values[:, i], *RANGES[i], FINE) for i in range(4)]
    lab = _srgb_to_lab(rgb / 255.0)
    lab_bin = [_bin(lab[:, i], *LAB_BINS[i]) for i in range(3)]
    return (
        (fine[0] * FINE + fine[1]).astype(np.uint16),  # H x E
        (fine[2] * FINE + fine[3]).astype(np.uint16),  # DAB x total OD
        ((lab_bin[0] * 6 + lab_bin[1]) * 6 + lab_bin[2]).astype(np.uint8),
    )


def _riu2_table() -> np.ndarray:
    """LBP(8) code -> rotation-invariant uniform class: number of 1 bits, or 9 if non-uniform."""
    out = np.empty(256, np.uint8)
    for code in range(256):
        bits = [(code >> k) & 1 for k in range(8)]
        jumps = sum(bits[k] != bits[(k + 1) % 8] for k in range(8))
        out[code] = sum(bits) if jumps <= 2 else 9
    return out


HE_TABLE, DO_TABLE, LAB_TABLE = _colour_tables()
RIU2 = _riu2_table()
# (code + 256 * centre_is_dark) -> riu2 class + 10 * centre_is_dark, as an integer one-hot matrix
RIU2_CENTRE = np.zeros((512, 20), np.int64)
RIU2_CENTRE[np.arange(512), np.concatenate([RIU2, RIU2 + 10])] = 1


def _counts(idx: np.ndarray, nbins: int) -> np.ndarray:
    """(n, ...) non-negative ints -> (n, nbins) int64 histograms, one bincount per image."""
    flat = idx.reshape(len(idx), -1)
    return np.stack([np.bincount(row, minlength=nbins) for row in flat])


def _pool2(a: np.ndarray) -> np.ndarray:
    """2 x 2 sums of (n, h, w) ints (exact, uint16 up to 16 x 255)."""
    return (
        a[:, 0::2, 0::2].astype(np.uint16) + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]
    )


def _neighbours(g: np.ndarray, r: int) -> tuple[np.ndarray, list[np.ndarray]]:
    h, w = g.shape[1:]
    centre = g[:, r : h - r, r : w - r]
    return centre, [
        g[:, r + dy * r : h - r + dy * r, r + dx * r : w - r + dx * r] for dy, dx in OFFSETS
    ]


def _lbp_code(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Eight (a, b) array pairs -> uint8 codes with bit k set where a_k >= b_k."""
    code = np.zeros(np.broadcast_shapes(*(a.shape for a, _ in pairs)), np.uint8)
    bit = np.empty(code.shape, bool)
    plane = bit.view(np.uint8)
    for k, (a, b) in enumerate(pairs):
        np.greater_equal(a, b, out=bit)
        np.left_shift(plane, k, out=plane)
        np.bitwise_or(code, plane, out=code)
    return code


def _lbp_sign_centre(g: np.ndarray, r: int) -> np.ndarray:
    """CLBP_S (riu2) x CLBP_C (centre darker than the image mean): (n, 20) counts."""
    centre, nbrs = _neighbours(g, r)
    code = _lbp_code([(nb, centre) for nb in nbrs])
    # c < mean  <=>  c < ceil(mean) for integer c: exact integer threshold per image.
    total = g.reshape(len(g), -1).sum(1, dtype=np.int64)
    thr = (-(-total // g[0].size)).astype(g.dtype)[:, None, None]
    joint = np.left_shift(centre < thr, 8, dtype=np.uint16)
    joint |= code
    return _counts(joint, 512) @ RIU2_CENTRE


def _lbp_magnitude(g: np.ndarray, r: int) -> np.ndarray:
    """CLBP_M (riu2): which |neighbour - centre| reach the image's mean difference: (n, 10)."""
    centre, nbrs = _neighbours(g.astype(np.int16), r)
    diffs = [np.abs(nb - centre) for nb in nbrs]
    total = sum(d.reshape(len(g), -1).sum(1, dtype=np.int64) for d in diffs)
    thr = (-(-np.asarray(total) // (8 * centre[0].size))).astype(np.int16)[:, None, None]
    return _counts(RIU2[_lbp_code([(d, thr) for d in diffs])], 10)


def _gradient(a: np.ndarray, scale: int) -> np.ndarray:
    """Histogram of |dx| + |dy| (in grey levels per pixel) in 10 log2-spaced bins: (n, 10)."""
    a = a.astype(np.int32)
    energy = np.abs(a[:, 1:, :-1] - a[:, :-1, :-1]) + np.abs(a[:, :-1, 1:] - a[:, :-1, :-1])
    table = np.minimum(np.floor(np.log2(np.arange(510 * scale + 1) / scale + 1) * 1.25), 9)
    return _counts(table.astype(np.uint8)[energy], 10)


def _stain_stats(hist: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(n, FINE) counts -> (n, 5) mean, std, q10, q50, q90 (bin-centre / linear-in-bin)."""
    p = hist / hist.sum(1, keepdims=True)
    width = (hi - lo) / FINE
    centres = lo + (np.arange(FINE) + 0.5) * width
    mean = (p * centres).sum(1)
    std = np.sqrt(np.maximum((p * centres**2).sum(1) - mean**2, 0.0))
    cdf = np.cumsum(p, 1)
    rows = np.arange(len(p))
    quantiles = []
    for q in (0.1, 0.5, 0.9):
        k = np.minimum((cdf < q).sum(1), FINE - 1)
        before = np.where(k > 0, cdf[rows, np.maximum(k - 1, 0)], 0.0)
        frac = np.clip((q - before) / np.maximum(p[rows, k], 1e-12), 0.0, 1.0)
        quantiles.append(lo + (k + frac) * width)
    return np.stack([mean, std, *quantiles], 1)


def stain_texture_blocks(x: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 224, 224, 3) uint8 -> raw block features (counts or statistics), float64."""
    n = len(x)
    q = x[:, ::2, ::2] >> 3
    colour = (q[..., 0].astype(np.uint16) << 10) | (q[..., 1].astype(np.uint16) << 5) | q[..., 2]
    he = _counts(HE_TABLE[colour], FINE * FINE).reshape(n, FINE, FINE)
    do = _counts(DO_TABLE[colour], FINE * FINE).reshape(n, FINE, FINE)
    marginals = (he.sum(2), he.sum(1), do.sum(2), do.sum(1))
    lab = LAB_TABLE[colour]
    lab_all, lab_centre = _counts(lab, 144), _counts(lab[:, 28:84, 28:84], 144)
    lab_surround = (lab_all - lab_centre).reshape(n, 4, 3, 2, 3, 2).sum((3, 5)).reshape(n, 36)
    blocks = {
        "stain": np.concatenate([m.reshape(n, 16, 2).sum(2) for m in marginals[:2]], 1),
        "he_joint": he.reshape(n, 8, 4, 8, 4).sum((2, 4)).reshape(n, 64),
        "moments": np.concatenate(
            [_stain_stats(m, *r) for m, r in zip(marginals, RANGES, strict=True)], 1
        ),
        "lab_centre": lab_centre,
        "lab_surround": lab_surround,
    }
    g224 = np.ascontiguousarray(x[..., 1])
    g112 = _pool2(g224)
    g56 = _pool2(g112)
    blocks |= {
        "lbp224": _lbp_sign_centre(g224, 1),
        "lbp224r2": _lbp_sign_centre(g224, 2),
        "lbp112": _lbp_sign_centre(g112, 1),
        "lbp56": _lbp_sign_centre(g56, 1),
        "lbpm112": _lbp_magnitude(g112, 1),
        "lbpm56": _lbp_magnitude(g56, 1),
        "grad112": _gradient(g112, 4),
        "grad56": _gradient(g56, 16),
    }
    return {k: np.asarray(v, np.float64) for k, v in blocks.items()}


def combine_blocks(blocks: dict[str, np.ndarray]) -> np.ndarray:
    """Hellinger-map histograms, L2-normalise and weight each block, concatenate."""
    parts = []
    for name, dim, weight in BLOCKS:
        v = blocks[name]
        assert v.shape[1] == dim, (name, v.shape)
        if name != "moments":
            v = np.sqrt(v / np.maximum(v.sum(1, keepdims=True), 1.0))
        norm = np.sqrt((v * v).sum(1, keepdims=True))
        parts.append(v / np.where(norm > 0, norm, 1.0) * weight)
    return np.concatenate(parts, 1)


class StainTextureEncoder(Encoder):
    """Numpy-only, CPU-only encoder; see the module docstring for the feature layout."""

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        out = [
            combine_blocks(stain_texture_blocks(batch[i : i + CHUNK]))
            for i in range(0, len(batch), CHUNK)
        ]
        return np.concatenate(out, 0).astype(np.float32)


CONFIG = EncoderConfig(
    key="classic/stain-texture",
    modality="any",
    architecture="classic",
    embed_dim=EMBED_DIM,
    input_px=224,
    mpp=0.5,
    licence="Apache-2.0",
    weights=None,
    description="Weights-free numpy baseline: H&E stain/Lab colour histograms + multi-scale LBP.",
    code_version="1",
)


@register_encoder(CONFIG, runtime="numpy")
def build_stain_texture(
    config: EncoderConfig, weights: str | None = None, device: str = "cpu", batch_size: int = 256
) -> Encoder:
    """Build the encoder; ``device`` is ignored (always numpy on the CPU)."""
    if weights is not None:
        raise EncoderError("classic/stain-texture takes no weights")
    del device
    return StainTextureEncoder(config, weights_id="none", device="cpu", batch_size=batch_size)
