"""Index factory strings: what each family is and whether FAISS can build it for a dimension.

``Flat`` (exact scans only), ``IVF<nlist>[,Flat]`` (IVF lists over the segments' own vectors),
anything else FAISS's ``index_factory`` accepts (code indexes: PQ, SQ, HNSW...). The *slug* of a
factory names its files under ``<collection>/index/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lamina.search.errors import InvalidIndexFactoryError

_FACTORY_RE = re.compile(r"^[A-Za-z0-9_,.=+/-]{1,64}$")
_IVF_FLAT_RE = re.compile(r"^IVF(\d+)(?:,Flat)?$")


@dataclass(frozen=True)
class IndexSpec:
    factory: str
    kind: str  # "flat" | "ivf" | "faiss"
    nlist: int = 0

    @property
    def slug(self) -> str:
        return index_slug(self.factory)

    @property
    def needs_training(self) -> bool:
        return self.kind == "ivf" or any(
            p in self.factory for p in ("IVF", "PQ", "SQ", "LSH", "PCA", "OPQ", "RQ", "LSQ")
        )


def check_factory(factory: str, dim: int = 64) -> str:
    """Refuse factory strings FAISS cannot build for ``dim``-dimensional vectors."""
    parse_factory(factory, dim)
    return factory


def parse_factory(factory: str, dim: int) -> IndexSpec:
    if not isinstance(factory, str) or not _FACTORY_RE.match(factory):
        raise InvalidIndexFactoryError(f"invalid FAISS factory string {factory!r}")
    if factory == "Flat":
        return IndexSpec(factory, "flat")
    m = _IVF_FLAT_RE.match(factory)
    if m:
        nlist = int(m.group(1))
        if not 1 <= nlist <= 1 << 20:
            raise InvalidIndexFactoryError(f"{factory}: nlist must be between 1 and 1048576")
        return IndexSpec(factory, "ivf", nlist)
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidIndexFactoryError(f"FAISS cannot build {factory!r}: {exc}") from None
    ivf = faiss.try_extract_index_ivf(index)
    return IndexSpec(factory, "faiss", int(ivf.nlist) if ivf is not None else 0)


def codes_only(factory: str) -> bool:
    """Whether an index keeps compressed codes only (PQ, SQ, RQ...), so that a search reads
    just its candidates' vectors (re-ranking) and the vectors need not stay resident."""
    storage = factory.split(",")[-1]
    return factory != "Flat" and bool(re.match(r"^(PQ|SQ|RQ|LSQ|PRQ|PLSQ|RaBitQ)", storage))


def index_slug(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")
