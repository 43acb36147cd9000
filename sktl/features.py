"""FeatureExtractor: a frozen pretrained backbone as a scikit-learn transformer."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ._atomic import atomic_fit
from ._base import BackboneEstimatorMixin
from ._cache import CACHE_CONSTRAINT, RowSpec, extraction_key, resolve_cache
from ._constraints import Count
from ._engine import (
    EXTREME_INPUTS,
    PRECISIONS,
    LayerOutput,
    autocast,
    check_finite,
    check_precision,
    forward_batches,
    probe_width,
    resolve_device,
    seeded_torch,
    worker_threads,
)
from ._streaming import default_chunk_size, is_dask_collection, is_stream, map_chunks, stream_head
from .backbones import shared_backbone

__all__ = ["FeatureExtractor"]


class FeatureExtractor(BackboneEstimatorMixin, TransformerMixin, BaseEstimator):
    """Embed images or texts with a frozen pretrained backbone.

    ``transform`` runs the backbone in batches under
    ``torch.inference_mode`` and returns one row of features per sample,
    so any scikit-learn estimator can be trained on top, for instance as the
    first step of a :class:`~sklearn.pipeline.Pipeline`.

    Inputs larger than memory are streamed: a generator or iterator of
    texts, image paths or images, a ``numpy.memmap`` or the path of a
    folder of images is read chunk by chunk (see :func:`~sktl.iter_chunks`),
    so memory does not grow with the number of samples;
    :func:`~sktl.transform_to_memmap` also writes the features to disk. A
    dask array, dataframe or bag gives a lazy dask array computed partition
    by partition on the dask workers (see :func:`sktl.dask.apply`).

    Parameters
    ----------
    backbone : str, os.PathLike, torch.nn.Module, type or fitted estimator, default="resnet18"
        A torchvision model name, a sentence-transformers folder or hub name,
        a ``torch.nn.Module`` (copied), or a fitted sktl estimator (its
        fine-tuned backbone is used). Stored as given; loaded in :meth:`fit`.
    weights : str, os.PathLike or None, default="DEFAULT"
        torchvision weights name, a local checkpoint, or ``None`` (random).
    layer : int, str or None, default=None
        Read the features at the output of this block (index or name, see
        ``block_names_``) instead of the final embedding. The forward pass
        stops there, so lower layers are also cheaper.
    pooling : {"auto", "mean", "max", "cls", "flatten"}, default="auto"
        How an intermediate layer's output is reduced to a vector: over
        space for feature maps, over tokens (padding excluded) for texts.
        ``"auto"`` and ``"avg"`` are ``"mean"``; the final embedding uses the
        backbone's own pooling.
    batch_size : int, default=32
        Samples per forward pass.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available.
    random_state : int, RandomState or None, default=None
        Seeds the initialisation of backbones that are not pretrained
        (``weights=None``, module classes, lazy modules).
    cache : bool, str, os.PathLike, joblib.Memory or FeatureCache, default=True
        Reuse feature rows across calls, clones, CV folds and grid-search
        candidates: rows are keyed by the backbone's weights fingerprint,
        ``layer``, ``pooling`` and preprocessing, and by each sample's
        content. ``True`` uses the process-wide in-memory cache
        (``sktl.default_cache()``, bounded, least recently used rows go first);
        ``False`` or ``None`` always runs the backbone. A folder path also
        keeps the rows on disk there (1 GiB at most), so they survive a
        restart and are shared with the worker processes of ``n_jobs>1``; a
        ``joblib.Memory`` (as for ``Pipeline(memory=...)``) does the same in
        its ``sktl-features`` subfolder, ``Memory(None)`` meaning no cache. A
        :class:`~sktl.FeatureCache` sets the bounds and exposes the counters.
    verbose : int, default=0
        ``1`` shows a progress bar during :meth:`transform`.
    precision : {"32", "bf16", "fp16"}, default="32"
        Run the backbone under ``torch.autocast`` in bfloat16 or float16
        (features are returned as float32). ``"fp16"`` needs a CUDA device;
        ``"bf16"`` also runs on CPUs. Cached rows are kept per precision.

    Attributes
    ----------
    backbone_ : sktl.backbones.Backbone
        The loaded backbone.
    block_names_ : list of str
        Names of the backbone's blocks, usable as ``layer``.
    n_features_out_ : int
        Width of the features.
    n_features_in_ : int
        Number of input features, for array inputs only.
    device_ : str
        Device the backbone runs on.

    See Also
    --------
    TransferClassifier : Fine-tunes the backbone instead of freezing it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktl import FeatureExtractor
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    >>> fe = FeatureExtractor("resnet18", weights=None).fit(images)
    >>> fe.transform(images).shape
    (8, 512)
    >>> FeatureExtractor("resnet18", weights=None, layer="layer2").fit_transform(images).shape
    (8, 128)
    >>> pipe = make_pipeline(FeatureExtractor("resnet18", weights=None),
    ...                      LogisticRegression()).fit(images, [0, 1] * 4)
    """

    _parameter_constraints = {
        "backbone": "no_validation",
        "weights": "no_validation",
        "layer": [Integral, str, None],
        "pooling": [StrOptions({"auto", "mean", "avg", "max", "cls", "flatten"})],
        "batch_size": [Count(1)],
        "device": [str, None],
        "random_state": ["random_state"],
        "cache": CACHE_CONSTRAINT,
        "verbose": ["verbose"],
        "precision": [StrOptions(set(PRECISIONS))],
    }

    def __init__(self, backbone="resnet18", *, weights="DEFAULT", layer=None,
                 pooling="auto", batch_size=32, device="auto", random_state=None,
                 cache=True, verbose=0, precision="32"):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.cache = cache
        self.verbose = verbose
        self.precision = precision

    @atomic_fit
    def fit(self, X, y=None):
        """Load the backbone and check ``X``; no training happens.

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths, or a stream
            Inputs of the kind the backbone reads. Of a stream (generator,
            memmap, folder of images) only the first sample is read: a
            generator loses it, so pass a generator to :meth:`fit_transform`
            or fit on a sample.
        y : None
            Ignored.

        Returns
        -------
        self : FeatureExtractor
        """
        self._validate_params()
        if is_dask_collection(X):
            raise TypeError("fit reads in-memory samples; fit on a sample, e.g. "
                            "X[:1].compute() or bag.take(1), then transform the dask "
                            "collection.")
        if is_stream(X):
            X, _ = stream_head(X, 1)
        device = resolve_device(self.device)
        check_precision(self.precision, device)
        with seeded_torch(self._torch_seed(), device):
            backbone = shared_backbone(self.backbone, self.weights, device)
            X, _ = self._validate_X(X, backbone.input_kind, reset=True)
            backbone.module.eval().to(device)
            module = self._extraction_module(backbone)
            width = backbone.n_features
            if self.layer is not None or width is None:
                width = probe_width(module, backbone.preprocess, X, device)
        backbone.module.requires_grad_(False)
        # The precision the rows are computed in is fixed at fit, like the key
        # they are cached under (set_params after fit must not mix the two).
        self._fit_precision = self.precision
        self._extraction_key = self._cache_key(backbone)
        self.backbone_ = backbone
        self.extractor_ = module
        self.block_names_ = backbone.block_names
        self.n_features_out_ = int(width)
        self.device_ = device
        return self

    # -- the safe format (sktl.save / sktl.load): see TrainingEstimatorMixin.
    _saved_attributes = ("n_features_in_", "feature_names_in_", "n_features_out_",
                         "block_names_", "_sample_shape")

    def _safe_module(self):
        return self.backbone_.module

    def _safe_n_outputs(self):
        return None

    def _safe_skeleton(self, backbone, n_outputs):
        return backbone.module

    def _safe_restore(self, backbone, module, device):
        backbone.module.requires_grad_(False).eval().to(device)
        self.backbone_ = backbone
        self.extractor_ = self._extraction_module(backbone)
        self._extraction_key = self._cache_key(backbone)
        self.device_ = device

    def _cache_key(self, backbone):
        """The key of this extractor's rows in the feature cache."""
        # float32 rows have no precision setting in their key; others get their own.
        precision = getattr(self, "_fit_precision", self.precision)
        precision = {} if precision == "32" else {"precision": precision}
        return extraction_key(backbone, layer=self.layer, pooling=self.pooling, **precision)

    def _extraction_module(self, backbone):
        if self.layer is None:
            return backbone.module
        pooling = "mean" if self.pooling == "auto" else self.pooling
        return LayerOutput(backbone.module, backbone.block_modules(self.layer), pooling)

    def fit_transform(self, X, y=None):
        """Fit on ``X`` (no training happens), then return its features.

        A generator is read once: its first sample fits, and every sample,
        the first included, is transformed.

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths, or a stream
            Inputs of the kind the backbone reads.
        y : None
            Ignored.

        Returns
        -------
        ndarray of shape (n_samples, ``n_features_out_``), dtype float32
        """
        if is_stream(X):
            head, X = stream_head(X, 1)
            return self.fit(head).transform(X)
        return self.fit(X).transform(X)

    def transform(self, X):
        """Features of ``X``.

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths, stream or dask collection
            In-memory inputs; or a stream read chunk by chunk (a generator
            or iterator of samples, a ``numpy.memmap``, the path of a folder
            of images, see :func:`~sktl.iter_chunks`); or a dask array,
            dataframe or bag (see :func:`sktl.dask.apply`).

        Returns
        -------
        ndarray of shape (n_samples, ``n_features_out_``), dtype float32
            A lazy ``dask.array.Array`` for a dask collection.
        """
        check_is_fitted(self)
        if is_dask_collection(X):
            from .dask import apply

            return apply(self, X, method="transform")
        if is_stream(X):
            return map_chunks(lambda chunk: self._transform_in_memory(chunk, progress=False),
                              X, chunk_size=default_chunk_size(X, self.batch_size),
                              progress=self.verbose >= 1, desc="features")
        return self._transform_in_memory(X, progress=self.verbose >= 1)

    def _transform_in_memory(self, X, *, progress):
        X, _ = self._validate_X(X, self.backbone_.input_kind, reset=False)
        self.extractor_.to(self.device_)
        # Models pickled before these attributes existed: float32.
        fitted = getattr(self, "_fit_precision", getattr(self, "precision", "32"))
        precision = self._runnable_precision(fitted)
        # Rows computed in float32 are not stored under the fp16 key.
        cache = resolve_cache(self.cache) if precision == fitted else None
        with worker_threads(), autocast(precision, self.device_):
            features = forward_batches(self.extractor_, self.backbone_.preprocess, X,
                                       batch_size=self.batch_size, device=self.device_,
                                       progress=progress, desc="features",
                                       cache=cache, key=self._extraction_key,
                                       like=RowSpec(np.float32, (self.n_features_out_,)))
        return check_finite(features, "The backbone's features", EXTREME_INPUTS)

    def get_feature_names_out(self, input_features=None):
        """Names ``featureextractor0``, ``featureextractor1``, ...

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self.n_features_out_)],
                          dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = self.random_state is None
        return tags
