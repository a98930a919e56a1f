"""Input checks, run on the host before anything is traced or compiled.

Every check raises ``ValueError`` naming the offending argument.  Values that
are JAX tracers (the caller is inside ``jit``/``vmap``) can only be checked for
shape and dtype; their values are the caller's responsibility.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def on_device(x, dtype=None):
    """``jnp.asarray(x, dtype)``, but a host scalar or NumPy array is copied to the device
    without compiling anything: on first use per dtype, ``jnp.asarray`` of a host value
    compiles a one-op program (``stage`` / ``convert_element_type``, ~0.03 s each on
    XLA:CPU), several of which a cold fit paid before its loop.  The same values and
    dtypes (a Python scalar without ``dtype`` stays weakly typed, as with ``jnp.asarray``).
    """
    if dtype is None and isinstance(x, bool | int | float):
        return _put_scalar(x, ("weak", type(x), repr(x)))
    if isinstance(x, bool | int | float | np.ndarray | np.generic):
        dtype = None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)
        return _put_scalar(np.asarray(x, dtype))
    return jnp.asarray(x, dtype)


# Device copies of host scalars, by bit pattern (see _put_scalar); cleared when full.
_SCALARS: dict = {}
_SCALARS_MAX = 4096


def _put_scalar(x, key=None):
    """``jax.device_put(x)`` for a host value, reusing one device array per distinct scalar.

    A fit puts some 30 scalars (its penalties, their rescaled values, the stopping settings,
    a rule's settings) on the device, ~30 us each; most are the same from fit to fit.  The
    key is the value's bits and dtype (``key`` for a weakly typed Python scalar: its type
    and ``repr``, which tell ``-0.0`` from ``0.0`` and keep NaN); see :func:`device_cached`.
    Arrays (not 0-d) are put as before.
    """
    if key is None:
        if not isinstance(x, np.ndarray) or x.ndim:
            return jax.device_put(x)
        key = (x.dtype.str, x.tobytes())
    return device_cached(_SCALARS, key, lambda: jax.device_put(x), _SCALARS_MAX)


def device_cached(cache: dict, key, make: Callable, limit: int):
    """``make()``, kept in ``cache`` under ``key`` and reused while it lasts.

    For immutable device values that every fit would otherwise build again (scalars, seed
    keys, named rules).  The key also holds what decides the arrays ``make`` builds: JAX's
    x64 mode and default device.  A value holding a tracer (built while tracing) is never
    kept, one holding a deleted (donated) array is built again, and the cache is cleared
    when it holds ``limit`` values.

    Args:
        cache: the dict the values live in (one per kind of value).
        key: what tells the values apart (hashable).
        make: builds the value (a pytree of device arrays, or one array).
        limit: the most values ``cache`` holds.

    Returns:
        The cached or new value.
    """
    key = (key, jax.config.jax_enable_x64, jax.config.jax_default_device)
    hit = cache.get(key)
    if hit is not None and not any(a.is_deleted() for a in jax.tree.leaves(hit) if isinstance(a, jax.Array)):
        return hit
    out = make()
    if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(out)):
        if len(cache) >= limit:
            cache.clear()
        cache[key] = out
    return out


def _on_host(x):
    """``x`` as a NumPy array when it is concrete and on one device (or a host value), else None."""
    if isinstance(x, np.ndarray | np.generic):
        return np.asarray(x)
    if isinstance(x, jax.Array) and not is_traced(x) and len(x.sharding.device_set) == 1:
        return np.asarray(x)
    return None


def times(x, c):
    """``x * c`` (``x`` an array, ``c`` a scalar array of x's dtype), computed on the host
    when both are concrete and of one dtype, then copied to the device: the same values
    (a product is exactly rounded on both), without compiling a one-op program (~0.05-0.15 s
    on a cold XLA:CPU, which a fit's rescaling of the penalties paid).  Traced or sharded
    values, or mixed dtypes, are multiplied by JAX as before.  (Not for division: XLA:CPU's
    float32 quotient may differ from the exactly rounded one in the last bit.)

    Args:
        x: an array (JAX or NumPy).
        c: a scalar array.

    Returns:
        ``x * c`` as a JAX array.
    """
    hx, hc = _on_host(x), _on_host(c)
    if hx is None or hc is None or hx.dtype != hc.dtype or hc.ndim:
        return x * c
    return _put_scalar(np.asarray(hx * hc, hx.dtype))


def argument_names(func: Callable) -> tuple[str, ...]:
    """The names ``func`` takes as arguments (its ``**kwargs`` parameter left out)."""
    params = inspect.signature(func).parameters.values()
    return tuple(p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD)


def known_keywords(caller: str, given: Iterable[str], accepted: Iterable[str], note: str = "") -> None:
    """Reject keyword arguments ``caller`` does not take, suggesting close matches.

    Args:
        caller: the function the user called (named in the message, e.g. ``"fit"``).
        given: the keywords it received through ``**kwargs``.
        accepted: every name it takes (its own arguments and the names its ``**kwargs``
            accept).
        note: appended in parentheses when no unknown name is close to an accepted one
            (e.g. the list of penalty keywords).

    Raises:
        ValueError: ``fit() got an unknown argument 'lamda_1L'; did you mean 'lambda_1L'?``
            (every unknown name, each with its close matches).
    """
    accepted = sorted(set(accepted))
    unknown = sorted(set(given) - set(accepted))
    if not unknown:
        return
    folded = {a.lower(): a for a in accepted}  # case-insensitive: 'lambda_1l' finds 'lambda_1L'
    close = {
        name: [folded[c] for c in difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.7)]
        for name in unknown
    }
    hints = {name: " or ".join(repr(c) for c in near) for name, near in close.items()}
    if len(unknown) == 1:
        (name,) = unknown
        message = f"{caller}() got an unknown argument {name!r}"
        message += f"; did you mean {hints[name]}?" if hints[name] else ""
    else:
        listed = [f"{n!r} (did you mean {hints[n]}?)" if hints[n] else repr(n) for n in unknown]
        message = f"{caller}() got unknown arguments {', '.join(listed)}"
    if note and not any(close.values()):
        message += f" ({note})"
    raise ValueError(message)


def concrete_arguments(caller: str, arguments: Mapping[str, object]) -> None:
    """Refuse traced values (the caller is being transformed by ``jax.grad``, ``jit`` or
    ``vmap``): the host-side surfaces validate, rescale and pick restarts in NumPy.

    Args:
        caller: the surface's public name (``"fit"``, ``"sweep"`` ...).
        arguments: its arguments by name (a value is searched leaf by leaf: a grid, a
            pair of starts).

    Raises:
        ValueError: naming the traced argument and :func:`jnmf.differentiable_fit`, the
            fit that ``jax.grad`` / ``jit`` / ``vmap`` can go through.
    """
    for name, value in arguments.items():
        if any(is_traced(leaf) for leaf in jax.tree.leaves(value)):
            raise ValueError(
                f"{caller}() cannot run under a JAX transformation (jax.grad, jit, vmap): {name} is "
                f"a traced value. {caller} validates and rescales its input and picks the best "
                "restart on the host. To differentiate a fit with respect to Y, weights or "
                "penalties, use jnmf.differentiable_fit(Y, L0, R0, ...) (implicit differentiation, "
                "jittable and vmappable), started e.g. from res = jnmf.fit(Y, rank): L0, R0 = "
                "res.L, res.R; to fit many penalty values at once, use jnmf.sweep"
            )


def _host(x):
    return x if is_traced(x) else np.asarray(x)


def _check_dtype(name: str, arr) -> None:
    kind = np.dtype(arr.dtype).kind
    if kind != "f":
        raise ValueError(
            f"{name} must be a floating-point array, got dtype {arr.dtype}; "
            f"convert it first, e.g. {name}.astype('float32')"
        )


# Entries per block of the host-side value checks: their boolean temporaries stay small
# (an m x n boolean array per check was a large share of a big fit's peak memory).
_CHECK_BLOCK = 1 << 22


def _check_values(name: str, arr, *, nonneg: bool = True):
    """Raise unless ``arr`` is finite (and non-negative); return its largest entry (None for
    a traced or empty array)."""
    if is_traced(arr):
        return None
    flat = np.ravel(arr, order="K")  # a view of a C- or F-contiguous array
    top = None
    for start in range(0, max(flat.size, 1), _CHECK_BLOCK):
        block = flat[start : start + _CHECK_BLOCK]
        if not block.size:
            continue
        # two reductions and no temporary: a NaN makes min and max NaN, an infinity shows in
        # one of them (a boolean isfinite pass and its reduction cost as much as both)
        low, high = block.min(), block.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"{name} must be finite; it contains NaN or infinite entries")
        if nonneg and low < 0:
            raise ValueError(f"{name} must be non-negative; it has entries < 0 (min {arr.min()})")
        top = high if top is None else max(top, high)
    return top


# The largest entry of the last array :func:`data` returned, with a weak reference to that
# array: the data scale (``fitting.data_scale``, max(Y)) takes it instead of another pass.
_LAST_MAXIMUM: list = [None, None]


def checked_maximum(arr) -> float | None:
    """The largest entry of ``arr`` if ``arr`` is the array :func:`data` last returned (its
    check computed it), else None; forgotten once asked for, so an array changed in place
    afterwards is not trusted."""
    held, top = _LAST_MAXIMUM
    _LAST_MAXIMUM[:] = [None, None]
    return float(top) if held is not None and held() is arr and top is not None else None


_warned_downcast = False
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside jnmf."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _warn_float64_downcast() -> None:
    global _warned_downcast
    if not _warned_downcast:
        _warned_downcast = True
        warnings.warn(
            "float64 input is computed in float32 because JAX's 64-bit mode is off; to fit in "
            "float64, run jax.config.update('jax_enable_x64', True) (or set JAX_ENABLE_X64=1) "
            "before any JAX computation",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def float_dtype(*arrays):
    """The floating dtype of a fit (the dtype policy):

    * float64 inputs give float64 when JAX's x64 mode is on, else float32 with a
      one-time warning saying how to enable float64;
    * float16/bfloat16 give float32 (half precision is too coarse for the sums of
      NMF's products);
    * integer and boolean inputs give float32 (float64 with x64), as scikit-learn
      converts them.
    """
    dts = [np.dtype(a.dtype) for a in arrays if a is not None and hasattr(a, "dtype")]
    dts = [dt if dt.kind == "f" and dt.itemsize >= 4 else np.dtype(np.float32) for dt in dts]
    dt = np.result_type(*dts) if dts else np.dtype(np.float32)
    if any(np.dtype(a.dtype).kind in "iub" for a in arrays if a is not None and hasattr(a, "dtype")):
        dt = np.result_type(dt, np.float64 if jax.config.jax_enable_x64 else np.float32)
    if dt == np.float64 and not jax.config.jax_enable_x64:
        _warn_float64_downcast()
    return jax.dtypes.canonicalize_dtype(dt)


def _dense(x):
    """A scipy.sparse matrix as a dense array (anything else unchanged)."""
    if hasattr(x, "toarray") and not isinstance(x, np.ndarray):
        return x.toarray()
    return x


def data(name: str, x) -> np.ndarray:
    """Data for ``fit``-like surfaces: a non-empty, finite, non-negative 2-d array of any
    real dtype, converted to its fit dtype (:func:`float_dtype`) on the host."""
    if x is None:
        raise ValueError(f"{name} is required")
    if is_traced(x):
        raise ValueError(f"{name} must be a concrete array (fit validates and rescales it on the host)")
    arr = np.asarray(_dense(x))
    if arr.dtype == object or not (
        np.dtype(arr.dtype).kind in "iub" or jnp.issubdtype(arr.dtype, jnp.floating)
    ):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d matrix, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    arr = arr.astype(float_dtype(arr), copy=False)
    _LAST_MAXIMUM[:] = [weakref.ref(arr), _check_values(name, arr)]
    return arr


MISSING = ("error", "nan")


def data_with_missing(name: str, x, missing: str = "error"):
    """:func:`data`, where with ``missing="nan"`` NaN entries mark missing values.

    Returns ``(Y, present)``: Y with its missing entries set to 0, and a boolean mask of
    the entries present (None when nothing is missing or ``missing="error"``).
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    if missing == "error" or x is None or is_traced(x):
        return data(name, x), None
    arr = np.asarray(_dense(x))
    if arr.dtype.kind != "f":
        return data(name, arr), None
    nan = np.isnan(arr)
    if not nan.any():
        return data(name, arr), None
    if nan.all():
        raise ValueError(f"{name} has no observed entries: every entry is NaN")
    return data(name, np.where(nan, 0, arr)), ~nan


def elementwise_weight(name: str, w, shape: tuple[int, int], dtype=None):
    """A non-negative, finite elementwise weight of the data's shape (0 = missing)."""
    if w is None:
        return None
    w = _dense(w)
    arr = _host(w)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have the data's shape {tuple(shape)}, got {tuple(arr.shape)}")
    if np.dtype(arr.dtype).kind not in "fiub":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if is_traced(arr):
        return w
    _check_values(name, arr.astype(np.float64))
    if not np.any(arr):
        raise ValueError(f"{name} is zero everywhere: no entry of the data would be fitted")
    return arr if dtype is None else arr.astype(dtype)


def matrix(name: str, x, *, nonneg: bool = True):
    """A non-empty, finite (non-negative) floating-point 2-d array."""
    if x is None:
        raise ValueError(f"{name} is required")
    arr = _host(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d matrix, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(arr.shape)}")
    _check_dtype(name, arr)
    _check_values(name, arr, nonneg=nonneg)
    return arr


def factors(Y, L, R):
    """Check Y (m x n), L (m x k), R (k x n) and return them as one float dtype."""
    Y = matrix("Y", Y)
    L = matrix("L", L)
    R = matrix("R", R)
    m, n = Y.shape
    if L.shape[0] != m:
        raise ValueError(f"L must have {m} rows (as Y), got shape {tuple(L.shape)}")
    if R.shape[1] != n:
        raise ValueError(f"R must have {n} columns (as Y), got shape {tuple(R.shape)}")
    if L.shape[1] != R.shape[0]:
        raise ValueError(f"L's columns ({L.shape[1]}) and R's rows ({R.shape[0]}) must agree (the rank)")
    dt = float_dtype(Y, L, R)
    return jnp.asarray(Y, dt), jnp.asarray(L, dt), jnp.asarray(R, dt)


def nonneg_scalar(name: str, x):
    """A non-negative finite scalar (or a traced one)."""
    arr = _host(x)
    if np.ndim(arr) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(arr)}")
    if is_traced(arr):
        return x
    if np.dtype(arr.dtype).kind not in "fiub":
        raise ValueError(f"{name} must be a real number, got {x!r}")
    if not np.isfinite(arr) or arr < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return x


def in_interval(name: str, x, lo, hi, *, lo_open: bool, hi_open: bool):
    arr = _host(x)
    if np.ndim(arr) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(arr)}")
    if is_traced(arr):
        return x
    v = float(arr)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (np.isfinite(v) and ok_lo and ok_hi):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must lie in {lb}{lo}, {hi}{rb}, got {x!r}")
    return x


def positive_int(name: str, x, *, allow_zero: bool = False):
    if is_traced(x):
        return x
    if isinstance(x, bool) or not isinstance(x, int | np.integer):
        if isinstance(x, float) and float(x).is_integer():
            x = int(x)
        else:
            raise ValueError(f"{name} must be an integer, got {x!r}")
    if x < 0 or (x == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {x!r}")
    return int(x)


def square_weight(name: str, w, n: int, *, allow_scalar: bool = True, psd: bool = False):
    """None, a scalar, a length-n vector (diagonal) or an n x n symmetric matrix, all
    with non-negative entries (the assumptions below eq. 6); ``psd`` also demands
    positive semidefiniteness (the loss weights; the W_2 need not be, since the
    non-orthogonality weight 11' - I of eq. 4 is indefinite)."""
    if w is None:
        return None
    arr = _host(w)
    if arr.ndim == 0 and allow_scalar:
        return nonneg_scalar(name, w)
    if arr.ndim == 1:
        if arr.shape[0] != n:
            raise ValueError(f"{name} as a vector (diagonal) must have length {n}, got {arr.shape[0]}")
    elif arr.ndim == 2:
        if arr.shape != (n, n):
            raise ValueError(f"{name} must be a square {n} x {n} matrix, got shape {tuple(arr.shape)}")
    else:
        what = "a scalar, " if allow_scalar else ""
        raise ValueError(f"{name} must be {what}a length-{n} vector or an {n} x {n} matrix")
    _check_dtype(name, arr)
    if arr.size and not is_traced(arr):
        _check_values(name, arr)
        if arr.ndim == 2:
            a = arr.astype(np.float64)
            scale = max(1.0, float(np.abs(a).max()))
            if not np.allclose(a, a.T, rtol=1e-6, atol=1e-9 * scale):
                raise ValueError(f"{name} must be symmetric")
            if psd and n <= 2000 and np.linalg.eigvalsh(a).min() < -1e-8 * scale * n:
                raise ValueError(f"{name} must be positive semidefinite")
    return w


def l1_weight(name: str, w, shape: tuple[int, int]):
    """A non-negative scalar (times all-ones) or a matrix of the factor's shape."""
    arr = _host(w)
    if arr.ndim == 0:
        return nonneg_scalar(name, w)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must be a scalar or of shape {shape}, got {tuple(arr.shape)}")
    _check_dtype(name, arr)
    if not is_traced(arr):
        _check_values(name, arr)
    return w
