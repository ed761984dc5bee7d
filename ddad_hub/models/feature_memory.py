"""A nearest-neighbour memory of nominal patch features (PatchCore-style), on DDAD's feature encoder.

It serves three roles: a fast detector of its own, reported beside the diffusion model, D3AD's cheap first
estimate of how anomalous an image is, and one half of fused mode's map. The bank is a buffer, so it saves and
loads as safetensors.

Every training image can go into the bank: statistics that need nominal images the bank has not seen (D3AD's
score bins, fused mode's normalisation, thresholds) come from cross-fitting, each image scored against the bank
without the patches of its own fold (:meth:`FeatureMemory.out_of_fold_maps`, :meth:`FeatureMemory.leaving_out`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from tqdm.auto import tqdm

from ..anomaly_map import gaussian_blur, image_scores
from .feature_encoder import FeatureEncoder

NORMALIZATIONS = ("none", "l2")
INPUT_NORMS = ("none", "image")
POOLING_PADS = ("zeros", "exclude")
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def standardize_images(images: torch.Tensor, spread: float = 0.5, eps: float = 1e-3) -> torch.Tensor:
    """Each image in [-1, 1] shifted to mean 0 and scaled to standard deviation ``spread`` (over its channels and
    pixels), then clipped to [-1, 1].

    The encoder then sees every image with the same brightness and contrast, whatever the product's lighting: a
    dark product (MVTec 3D-AD's tire averages 19/255) otherwise reaches the ImageNet network as a nearly flat input,
    and lighting that drifts between the training and the test images reads as an anomaly everywhere.
    """
    flat = images.float().flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).clamp(min=eps).view(-1, 1, 1, 1)
    return ((images.float() - mean) * (spread / std)).clamp(-1, 1).to(images.dtype)


def patch_features(
    encoder: FeatureEncoder,
    images: torch.Tensor,
    normalization: str = "none",
    pooling_pad: str = "zeros",
    feature_strides: tuple[int, ...] = (),
    input_norm: str = "none",
) -> torch.Tensor:
    """Locally averaged multi-scale features, (B, C, h, w) at the finest stride read.

    ``feature_strides`` picks the encoder stages to read (default: all of them), so a memory on strides 8 and 16
    can share one encoder pass with a map that also reads stride 4 (DiAD's).

    ``normalization="l2"`` scales each stage's averaged feature vector to unit length at every position, so the
    distance compares the direction of the features (what is there) and not their magnitude (how strongly).
    ``pooling_pad`` says what the 3x3 average sees beyond the border: ``"zeros"`` (PatchCore's, and the default of
    new fits) shrinks border features toward zero in train and test alike, ``"exclude"`` averages only the pixels
    inside (memories fitted before the option existed). On transistor, zeros lifted image AUROC from 0.986 to 1.000
    (the memory table in docs/results.md): the image maximum was no longer taken by border patches of nominal images.
    ``input_norm="image"`` standardises each image before the encoder (:func:`standardize_images`); ``"none"``
    passes it as it is.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if pooling_pad not in POOLING_PADS:
        raise ValueError(f"pooling_pad must be one of {POOLING_PADS}, got {pooling_pad!r}")
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
    feats = encoder(standardize_images(images) if input_norm == "image" else images)
    if feature_strides:
        available = list(encoder.config.feature_strides)
        missing = [s for s in feature_strides if s not in available]
        if missing:
            raise ValueError(f"the memory reads strides {list(feature_strides)}, but the encoder gives {available}")
        feats = [feats[available.index(s)] for s in feature_strides]
    size = feats[0].shape[-2:]
    pooled = []
    for f in feats:
        f = F.avg_pool2d(f.float(), 3, stride=1, padding=1, count_include_pad=pooling_pad == "zeros")
        if normalization == "l2":
            f = F.normalize(f, dim=1)
        if f.shape[-2:] != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        pooled.append(f)
    return torch.cat(pooled, dim=1)


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of a greedy k-center subset: each pick is the point farthest from those already picked.

    Distances are taken in a random projection to ``projection_dim`` dimensions, as PatchCore does, for speed.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        proj = torch.randn(features.shape[1], projection_dim, generator=g) / projection_dim**0.5
        reduced = features @ proj
    else:
        reduced = features
    # features along the rows of a (dim, n) matrix: the per-pick product c @ X then runs 2-3x faster on CPU than
    # X @ c on the (n, dim) layout (measured at n = 218k, dim 128, one thread: 28 vs 75 ms)
    columns = reduced.float().t().contiguous()
    sq_norms = (columns * columns).sum(dim=0)
    # squared distances through |x|^2 - 2 x.c + |c|^2: a matrix-vector product per pick, 10x faster than cdist
    first = int(torch.randint(n, (1,), generator=g))
    selected = [first]
    dist = torch.empty(1, n)
    min_dist = sq_norms - 2 * (columns[:, first] @ columns) + sq_norms[first]
    for _ in tqdm(range(n_select - 1), desc="coreset", leave=False, mininterval=2):
        idx = int(torch.argmax(min_dist))
        selected.append(idx)
        torch.mm(columns[:, idx : idx + 1].t(), columns, out=dist)
        dist.mul_(-2).add_(sq_norms).add_(sq_norms[idx])
        torch.minimum(min_dist, dist[0], out=min_dist)
    return torch.tensor(selected)


class FeatureMemory(ModelMixin, ConfigMixin):
    """Bank of nominal patch features; a test patch's anomaly is its distance to the nearest bank entry.

    Args:
        num_patches / feature_dim: shape of the bank (set by :meth:`fit`).
        image_size: side the images are resized to before feature extraction.
        blur_sigma: Gaussian blur of the map, in image pixels.
        score_bins: the 11 edges of D3AD's 10-bin histogram of held-out good images' scores, set by
            ``ddad_hub.recipe.fit_d3ad``; empty when D3AD mode is not fitted.
        cross_fitted: the bank holds the recipe's held-out nominal images too (``ddad_hub.recipe.fit_memory``), so
            statistics of those images need them left out of it.
        normalization: how patch features are normalised before distances (:func:`patch_features`); "none" in
            memories saved before the option existed.
        pooling_pad: the border of the 3x3 feature pooling (:func:`patch_features`); "exclude" in memories saved
            before the option existed, so they score as they did, "zeros" in new fits.
        group_names: the products of a multi-class bank, in the order of the ids in the ``bank_groups`` buffer
            (each entry's product); empty for a one-product bank and in memories saved before the option existed.
            With them, :meth:`infer_groups` names the product an image shows, from its nearest neighbours.
        feature_strides: the encoder stages the bank holds (:func:`patch_features`); empty: all of the encoder's
            (memories saved before the option existed).
        bank_dtype: how the bank is stored: "float32", or "float16" to halve its bytes (a model that must stay
            small keeps twice the patches); distances are always computed in float32.
        input_norm: "image" standardises each image's brightness and contrast before the encoder
            (:func:`standardize_images`); "none" (memories saved before the option existed) does not.
        group_limits: per product of a multi-class bank, the largest :meth:`image_distances` of its held-out
            nominal images (left out of the bank), set by ``ddad_hub.recipe.fit_unknown_products``; empty when not
            fitted (memories saved before the option existed).
        unknown_margin: an image whose distance exceeds ``unknown_margin`` times its recognised product's limit
            looks like none of the products (:meth:`product_ratios`); chosen by the same function.

    After :meth:`fit`, ``bank_sources`` holds the index of the training image each bank entry came from (not
    saved: only the recipe that fitted the memory needs it, for cross-fitting).
    """

    @register_to_config
    def __init__(
        self,
        num_patches: int = 1,
        feature_dim: int = 1,
        image_size: int = 256,
        blur_sigma: float = 4.0,
        score_bins: tuple[float, ...] = (),
        cross_fitted: bool = False,
        normalization: str = "none",
        pooling_pad: str = "exclude",
        group_names: tuple[str, ...] = (),
        feature_strides: tuple[int, ...] = (),
        bank_dtype: str = "float32",
        input_norm: str = "none",
        group_limits: dict[str, float] | None = None,
        unknown_margin: float | None = None,
    ):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if bank_dtype not in BANK_DTYPES:
            raise ValueError(f"bank_dtype must be one of {tuple(BANK_DTYPES)}, got {bank_dtype!r}")
        self.register_buffer("bank", torch.zeros(num_patches, feature_dim, dtype=BANK_DTYPES[bank_dtype]))
        if group_names:
            self.register_buffer("bank_groups", torch.zeros(num_patches, dtype=torch.long))
        self.bank_sources: torch.Tensor | None = None
        self._active: torch.Tensor | None = None  # boolean mask over the bank while images are left out

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.float()``... move the bank but keep its stored type (``bank_dtype``): it is scored in fp32
        whatever its type, and a float16 bank widened to float32 would be saved at twice its size."""
        super()._apply(fn, recurse)
        stored = BANK_DTYPES[self.config.bank_dtype]
        if self.bank.dtype != stored:
            self.bank = self.bank.to(stored)
        return self

    @contextlib.contextmanager
    def leaving_out(self, image_ids):
        """Within the block, score against the bank without the patches of the training images ``image_ids``
        (indices into the images :meth:`fit` was given): nominal images scored there are unseen by the bank."""
        if self.bank_sources is None:
            raise RuntimeError("leaving images out needs the bank's sources, known only right after fit()")
        ids = torch.as_tensor(list(image_ids), dtype=torch.long)
        active = ~torch.isin(self.bank_sources, ids)
        if not active.any():
            raise ValueError("leaving these images out would empty the bank")
        previous, self._active = self._active, active.to(self.bank.device)
        try:
            yield self
        finally:
            self._active = previous

    @contextlib.contextmanager
    def without_groups(self, names):
        """Within the block, score against the bank without the entries of the products ``names``: images of those
        products then stand for a product the bank has never seen (how ``fit_unknown_products`` calibrates)."""
        active = ~self.group_mask(names)
        if self._active is not None:
            active &= self._active
        if not active.any():
            raise ValueError("leaving these products out would empty the bank")
        previous, self._active = self._active, active
        try:
            yield self
        finally:
            self._active = previous

    def group_mask(self, names) -> torch.Tensor:
        """Which bank entries belong to the products ``names`` (boolean, one per entry)."""
        if not self.has_groups:
            raise ValueError("this memory's bank has no groups (it was fitted on one product)")
        unknown = sorted(set(names) - set(self.config.group_names))
        if unknown:
            raise ValueError(f"no product(s) {unknown} in this bank, which has {list(self.config.group_names)}")
        ids = torch.tensor([self.config.group_names.index(n) for n in names], dtype=torch.long)
        return torch.isin(self.bank_groups, ids.to(self.bank_groups.device))

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        encoder: FeatureEncoder,
        images: torch.Tensor,
        coreset_ratio: float = 0.1,
        image_size: int = 256,
        blur_sigma: float = 4.0,
        batch_size: int = 16,
        seed: int = 0,
        max_patches: int | None = None,
        max_candidates: int | None = None,
        normalization: str = "none",
        pooling_pad: str = "zeros",
        groups: list[int] | torch.Tensor | None = None,
        group_names: list[str] | None = None,
        feature_strides: tuple[int, ...] = (),
        bank_dtype: str = "float32",
        max_total_patches: int | None = None,
        input_norm: str = "none",
    ) -> FeatureMemory:
        """Build the bank from nominal ``images`` in [-1, 1], keeping a greedy coreset of ``coreset_ratio``.

        The coreset costs one pass over the candidate patches per pick, ``O(candidates x picks)``: ``max_patches``
        caps the picks (the bank) and ``max_candidates`` the candidates, a random subset of the patches when there
        are more, so large training sets stay within minutes (see "The feature memory alone" in docs/results.md).

        ``groups`` (one id per image, e.g. the product of a multi-class set) makes one coreset per group, each with
        the ratio and caps above, and banks their union: every product keeps its share of the bank and the cost
        grows with the sum, not the square, of the groups' sizes. Scoring still needs no group: a test patch is
        compared with the whole bank. With more than one group the bank also records each entry's group, named by
        ``group_names`` (one name per distinct id, in increasing id order; default the ids as text), so
        :meth:`infer_groups` can tell which product a test image shows. ``feature_strides`` picks the encoder
        stages the bank holds (default: all); ``bank_dtype`` how the bank is stored (the coreset is picked in
        float32 either way). ``max_total_patches`` caps the whole bank, shared among the groups by
        :func:`bank_shares` (in proportion to their patches, none beyond its own ratio and cap). ``input_norm``:
        see the class.
        """
        chunks = []
        for start in tqdm(range(0, images.shape[0], batch_size), desc="memory features", leave=False):
            x = _resize(images[start : start + batch_size], image_size)
            f = patch_features(encoder, x, normalization, pooling_pad, tuple(feature_strides), input_norm)
            chunks.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        features = torch.cat(chunks)
        patches_per_image = features.shape[0] // images.shape[0]
        image_groups = torch.zeros(images.shape[0], dtype=torch.long) if groups is None else torch.as_tensor(groups)
        if image_groups.shape != (images.shape[0],):
            raise ValueError(f"groups needs one id per image ({images.shape[0]}), got {tuple(image_groups.shape)}")
        patch_groups = image_groups.repeat_interleave(patches_per_image)
        distinct = torch.unique(image_groups)
        if group_names is not None and len(group_names) != len(distinct):
            raise ValueError(f"group_names needs one name per distinct group ({len(distinct)}), got {len(group_names)}")
        if group_names is not None and len(set(group_names)) != len(group_names):
            raise ValueError(f"group_names must be distinct, got {list(group_names)}")
        names = tuple(group_names or (str(int(g)) for g in distinct)) if len(distinct) > 1 else ()
        rows = [torch.nonzero(patch_groups == g).squeeze(1) for g in distinct]
        sizes = bank_shares([len(r) for r in rows], coreset_ratio, max_patches, max_total_patches)
        keep = torch.cat([_coreset_of(features, r, n, max_candidates, seed) for r, n in zip(rows, sizes)])
        memory = cls(num_patches=len(keep), feature_dim=features.shape[1], image_size=image_size,
                     blur_sigma=blur_sigma, normalization=normalization, pooling_pad=pooling_pad, group_names=names,
                     feature_strides=tuple(feature_strides), bank_dtype=bank_dtype, input_norm=input_norm)
        memory.bank.copy_(features[keep])
        memory.bank_sources = keep // patches_per_image
        if names:
            memory.bank_groups.copy_(torch.searchsorted(distinct, patch_groups[keep]))
        return memory.eval()

    @torch.no_grad()
    def out_of_fold_maps(
        self,
        encoder: FeatureEncoder,
        images: torch.Tensor,
        folds: int = 5,
        size: tuple[int, int] | None = None,
        batch_size: int = 16,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Cross-fitted maps of the images :meth:`fit` was given (same order): image ``i`` of fold ``i % folds``
        is scored against the bank without any patch of that fold's images.

        Returns the (N, H, W) maps and the folds' image indices. Their statistics stand in for those of unseen
        nominal images without keeping any image out of the shipped bank.
        """
        n = images.shape[0]
        fold_ids = [torch.arange(k, n, folds) for k in range(min(folds, n))]
        maps = None
        for ids in fold_ids:
            with self.leaving_out(ids.tolist()):
                for s in range(0, len(ids), batch_size):
                    idx = ids[s : s + batch_size]
                    m, _ = self.anomaly_maps(encoder, images[idx], size)
                    if maps is None:
                        maps = m.new_empty((n, *m.shape[1:]))
                    maps[idx] = m
        return maps, fold_ids

    @property
    def has_groups(self) -> bool:
        """Whether the bank knows the product of each entry (a multi-class fit), so :meth:`infer_groups` works."""
        return bool(self.config.group_names)

    @torch.no_grad()
    def nearest_patches(
        self, encoder: FeatureEncoder, images: torch.Tensor, chunk: int = 4096, groups=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) distance of every patch to its nearest bank entry, and that entry's index in the whole bank.

        ``groups`` (product names of a multi-class bank) searches those products' entries only. It is an argument,
        not a state of the memory, so that calls sharing one pipeline from several threads never see each
        other's products."""
        active = self._active
        if groups is not None:
            chosen = self.group_mask(groups)
            active = chosen if active is None else active & chosen
            if not active.any():
                raise ValueError(f"the bank holds no entries of {list(groups)}")
        images = images.to(self.bank.device)  # CPU inputs to a memory on a GPU, as the pipeline's other stages do
        f = patch_features(encoder, _resize(images, self.config.image_size), self.config.normalization,
                           self.config.pooling_pad, tuple(self.config.feature_strides), self.config.input_norm)
        b, c, h, w = f.shape
        flat = f.permute(0, 2, 3, 1).reshape(-1, c)
        bank = (self.bank if active is None else self.bank[active]).float()
        found = [torch.cdist(flat[i : i + chunk], bank).min(dim=1) for i in range(0, flat.shape[0], chunk)]
        distances = torch.cat([d.values for d in found])
        indices = torch.cat([d.indices for d in found])
        if active is not None:  # back to indices into the whole bank
            indices = torch.nonzero(active).squeeze(1)[indices]
        return distances.view(b, h, w), indices.view(b, h, w)

    def patch_distances(self, encoder: FeatureEncoder, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(B, h, w) distance of every patch to its nearest bank entry."""
        return self.nearest_patches(encoder, images, chunk)[0]

    def vote_groups(self, nearest: torch.Tensor) -> list[str]:
        """Each image's group: the one most of its patches find their nearest neighbour in, from (B, h, w) bank
        indices, named as in ``group_names``."""
        if not self.has_groups:
            raise ValueError("this memory's bank has no groups (it was fitted on one product)")
        votes = self.bank_groups[nearest.flatten(1)]
        counts = torch.stack([torch.bincount(v, minlength=len(self.config.group_names)) for v in votes])
        return [self.config.group_names[g] for g in counts.argmax(dim=1).tolist()]

    @torch.no_grad()
    def infer_groups(self, encoder: FeatureEncoder, images: torch.Tensor) -> list[str]:
        """The product each image shows, as named in ``group_names``: the group most of its patches' nearest bank
        entries belong to. Needs no label: a multi-class model names the product it recognised."""
        return self.recognise(encoder, images)[0]

    @torch.no_grad()
    def recognise(self, encoder: FeatureEncoder, images: torch.Tensor, groups=None) -> tuple[list[str], torch.Tensor]:
        """The product each image shows (:meth:`infer_groups`) and its :meth:`image_distances`, from one search
        (among the entries of ``groups`` only, when given)."""
        distances, nearest = self.nearest_patches(encoder, images, groups=groups)
        return self.vote_groups(nearest), self.image_distances(distances)

    @staticmethod
    def image_distances(patch_distances: torch.Tensor) -> torch.Tensor:
        """(B,) how far each image as a whole lies from the bank: the median of its (B, h, w) patch distances. A
        defect moves few of an image's patches, so it hardly moves the median; another product moves them all."""
        return patch_distances.flatten(1).float().median(dim=1).values.cpu()

    @property
    def knows_unknowns(self) -> bool:
        """Whether :meth:`product_ratios` can tell an image of none of the products (limits were fitted)."""
        return bool(self.has_groups and self.config.group_limits and self.config.unknown_margin)

    def product_ratios(self, groups: list[str], distances: torch.Tensor) -> torch.Tensor:
        """(B,) each image's distance over the limit of the product it was recognised as: about 1 or below for
        that product's nominal images; above ``unknown_margin``, the image looks like none of the products."""
        if not (self.has_groups and self.config.group_limits):
            raise ValueError("this memory has no product distance limits (ddad_hub.recipe.fit_unknown_products)")
        limits = torch.tensor([self.config.group_limits[g] for g in groups], dtype=torch.float32)
        return distances.float().cpu() / limits.clamp(min=1e-8)

    def unknown_products(
        self, groups: list[str], distances: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(:meth:`product_ratios`, ratios above ``unknown_margin``: images of none of the products), or
        ``(None, None)`` when the limits were not fitted."""
        if not self.knows_unknowns:
            return None, None
        ratios = self.product_ratios(groups, distances)
        return ratios, ratios > self.config.unknown_margin

    @torch.no_grad()
    def anomaly_maps(
        self, encoder: FeatureEncoder, images: torch.Tensor, size: tuple[int, int] | None = None,
        return_groups: bool = False, groups=None,
    ):
        """(maps, scores): blurred patch distances upsampled to ``size`` (default: the memory's image size).

        ``return_groups=True`` adds the product each image shows and its distance from the bank
        (:meth:`recognise`), from the same search. ``groups`` searches those products' entries only.
        """
        size = size or (self.config.image_size,) * 2
        d, nearest = self.nearest_patches(encoder, images, groups=groups)
        maps = F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        maps = gaussian_blur(maps, self.config.blur_sigma * size[0] / self.config.image_size)
        if return_groups:
            return maps, image_scores(maps), self.vote_groups(nearest), self.image_distances(d)
        return maps, image_scores(maps)


def bank_shares(
    group_patches: list[int], ratio: float, max_patches: int | None = None, max_total: int | None = None
) -> list[int]:
    """How many patches each group keeps: ``ratio`` of its patches, at most ``max_patches``; with ``max_total``,
    a total budget shared in proportion to the groups' patches, a group's share that exceeds its own limit going
    to the others (water-filling). A group with more nominal images, which show more variation, keeps more."""
    limits = [max(1, min(int(ratio * n), max_patches) if max_patches else int(ratio * n)) for n in group_patches]
    if not max_total or sum(limits) <= max_total:
        return limits
    if max_total < len(limits):
        raise ValueError(f"max_total_patches ({max_total}) must leave each of the {len(limits)} groups a patch")
    shares, open_groups, budget = list(limits), set(range(len(limits))), max_total
    while open_groups:
        weight = sum(group_patches[g] for g in open_groups)
        full = {g for g in open_groups if limits[g] <= budget * group_patches[g] / weight}
        if not full:
            for g in open_groups:
                shares[g] = max(1, int(budget * group_patches[g] / weight))
            break
        open_groups -= full
        budget -= sum(limits[g] for g in full)
    return shares


def _coreset_of(
    features: torch.Tensor, rows: torch.Tensor, n_keep: int, max_candidates: int | None, seed: int
) -> torch.Tensor:
    """Indices (into ``features``) of a greedy coreset of ``n_keep`` of the patches ``rows``."""
    if max_candidates and len(rows) > max(max_candidates, n_keep):
        g = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(len(rows), generator=g)[:max_candidates].sort().values]
    return rows[greedy_coreset(features[rows], n_keep, seed=seed)]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
